"""Reload a finished run in a fresh process and re-measure it on its test split (the same as `hf-mrl evaluate`).

    python recipes/evaluate_run.py runs/digits-ld-mus

Loads DIR/reuser with `AttentionReuser.from_pretrained` (rebuilding the teacher pool from the recorded
ids) and DIR/student with timm alone, predicts on the run's test split, and prints the accuracies next to
those in DIR/metrics.json. A run of a --method other than mrl has no reuser: only its student is re-measured.
"""

import sys

from hf_mrl.cli.main import evaluate_main as main

if __name__ == "__main__":
    sys.exit(main())
