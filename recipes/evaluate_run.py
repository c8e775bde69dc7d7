"""Reload a finished run in a fresh process and re-measure it on its test split.

    python recipes/evaluate_run.py runs/digits-ld-mus

Loads DIR/reuser with `AttentionReuser.from_pretrained` (rebuilding the teacher pool from the recorded
ids) and DIR/student with timm alone, predicts on the run's test split, and prints the accuracies next to
those in DIR/metrics.json. A run of a --method other than mrl has no reuser: only its student is re-measured.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from hf_mrl import AttentionReuser
from hf_mrl.student import load_student, student_preprocess
from hf_mrl.target import load_target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    run = Path(p.parse_args(argv).run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    args = metrics["args"]
    data, desc = load_target(
        args["dataset"],
        args["labeled_per_class"],
        args["seed"],
        image_column=args["image_column"],
        label_column=args["label_column"],
        image_size=args["image_size"],
    )
    rows = {}
    if metrics.get("reuse_accuracy") is not None:  # an MRL run: its reuser rebuilds the pool
        reuser = AttentionReuser.from_pretrained(str(run / "reuser"))
        reuse_pred = reuser.predict(data.test_images)["predictions"]
        rows["reuse_accuracy"] = (reuse_pred == data.test_labels).float().mean().item()
    student = load_student(str(run / "student"))
    with torch.no_grad():
        student_pred = student(student_preprocess(student)(data.test_images)).argmax(-1)
    rows["student_accuracy"] = (student_pred == data.test_labels).float().mean().item()
    method = metrics.get("method", "mrl")
    print(f"{desc}: {len(data.test_labels)} test samples; method {method}, delivered {metrics.get('delivered')}")
    if "reuse_accuracy" not in rows:
        print(f"no reuser: --method {method} trains none")
    ok = True
    for key, value in rows.items():
        same = abs(value - metrics[key]) < 1e-6
        ok &= same
        print(f"{key:17s} reloaded {value:.4f}   recorded {metrics[key]:.4f}   {'same' if same else 'DIFFERENT'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
