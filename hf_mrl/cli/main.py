"""The `hf-mrl` command: `train`, `evaluate`, `push` and `select` (also `accelerate launch -m hf_mrl.cli train ...`).

    hf-mrl train --pool hub-ids.txt --output_dir runs/mus          # or: accelerate launch -m hf_mrl.cli train ...
    hf-mrl train --output_dir runs/mus                              # the embedded Digits-LD default
    hf-mrl evaluate runs/mus                                        # reload the outputs, re-measure them
    hf-mrl push runs/mus ORG/NAME                                   # push (or retry a push of) a finished run
    hf-mrl select --filter digits --k 3 --output_dir pool/          # choose the pool from the Hub (docs/selection.md)

`recipes/train_mrl.py` is the same `train` as a script. Bad input ends in one line, `error: ...`, exit 1, before any
model is loaded or image decoded where it can be seen that early.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from hf_mrl import __version__
from hf_mrl.cli.args import (  # noqa: F401
    _CHOICES,
    _CONFIG_FLAGS,
    _OWN_FLAGS,
    HelpFormatter,
    _data_options,
    _field_docs,
    _setup_logging,
    _show_defaults,
    _test_size,
    add_config_arguments,
    add_data_arguments,
    config_from_args,
    data_options,
)
from hf_mrl.cli.push import (  # noqa: F401
    push_main,
)
from hf_mrl.cli.train import (  # noqa: F401
    _OPTIONAL_KEYS,
    _RUN_KEYS,
    _load,
    check_fingerprint,
    next_steps,
    parse_train_args,
    preflight,
    run_identity,
    summary_line,
    train,
    train_main,
    train_parser,
)

__all__ = ["main", "train_main", "train_parser", "parse_train_args", "preflight", "run_identity", "train"]


logger = logging.getLogger("hf_mrl.cli")


def evaluate_main(argv=None) -> int:
    """`hf-mrl evaluate DIR`: reload DIR/reuser (rebuilding its pool) and DIR/student (timm alone) in this process,
    predict on the run's test split, and print the accuracies next to those in DIR/metrics.json."""
    from hf_mrl.data.images import ImageSet
    from hf_mrl.record import read_metrics
    from hf_mrl.reuse.reuser import AttentionReuser
    from hf_mrl.training.run_folder import IncompleteRunError, verify_run
    from hf_mrl.training.student import load_student, student_preprocess
    from hf_mrl.training.trainer import student_input_side

    p = argparse.ArgumentParser(
        prog="hf-mrl evaluate", description=evaluate_main.__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("run_dir")
    p.add_argument("--dataset", help="the run's dataset, where it is now (default: the path or id the run recorded)")
    parsed = p.parse_args(argv)
    run = Path(parsed.run_dir)
    try:
        verify_run(run)
    except IncompleteRunError as err:
        sys.exit(f"error: {err}")
    try:
        metrics = read_metrics(run)  # this version's metrics.json or an older one
    except ValueError as err:
        sys.exit(f"error: {err}")
    if metrics.args is None:
        sys.exit(f"error: {run} was not written by `hf-mrl train` (its metrics.json records no arguments).")
    recorded = dict(metrics.args)
    if parsed.dataset:
        recorded["dataset"] = parsed.dataset
    try:
        data, desc = _load(recorded, recorded["seed"])
    except (ValueError, OSError) as err:  # the data moved, or the run recorded a path relative to elsewhere
        sys.exit(
            f"error: the test data of {run} cannot be read: {' '.join(str(err).split())} Pass --dataset with where "
            "the run's dataset is now."
        )
    rows = {}
    if metrics.reuser_accuracy is not None:  # an MRL run: its reuser rebuilds the pool
        reuser = AttentionReuser.from_pretrained(str(run / "reuser"))
        reuser_pred = reuser.predict(data.test_images)["predictions"]
        rows["reuser_accuracy"] = (reuser_pred == data.test_labels).float().mean().item()
    student = load_student(str(run / "student"))
    test = data.test_images
    if isinstance(test, ImageSet):  # decoded where the run's student read it
        test = test.resized(student_input_side(student))
    preprocess = student_preprocess(student)
    with torch.no_grad():
        student_pred = torch.cat([student(preprocess(test[i : i + 256])).argmax(-1) for i in range(0, len(test), 256)])
    rows["student_accuracy"] = (student_pred == data.test_labels).float().mean().item()
    method = metrics.method
    print(f"{desc}: {len(data.test_labels)} test samples; method {method}, delivered {metrics.delivered}")
    if "reuser_accuracy" not in rows:
        print(f"no reuser: --method {method} trains none")
    ok = True
    for key, value in rows.items():
        same = abs(value - metrics[key]) < 1e-6
        ok &= same
        print(f"{key:17s} reloaded {value:.4f}   recorded {metrics[key]:.4f}   {'same' if same else 'DIFFERENT'}")
    return 0 if ok else 1


COMMANDS = {
    "train": "train a student (see `hf-mrl train -h`)",
    "evaluate": "reload a finished run's reuser and student and re-measure them (see `hf-mrl evaluate -h`)",
    "push": "push a run (see `hf-mrl push -h`)",
    "select": "discover, screen and select K teachers from the Hub (see `hf-mrl select -h`)",
}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    listed = "\n".join(f"  {name:9s} {text.splitlines()[0]}" for name, text in COMMANDS.items())
    usage = f"usage: hf-mrl [-h] [--version] {{{','.join(COMMANDS)}}} ...\n\ncommands:\n{listed}"
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        sys.exit(0)
    if argv and argv[0] == "--version":
        print(f"hf-mrl {__version__}")
        sys.exit(0)
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "a command is required"
        print(f"{usage}\nhf-mrl: error: {what}", file=sys.stderr)
        sys.exit(2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        train_main(rest, prog="hf-mrl train")
    elif command == "evaluate":
        sys.exit(evaluate_main(rest))
    elif command == "select":
        from hf_mrl.cli.select import main as select_main

        sys.exit(select_main(rest))
    else:
        push_main(rest)


if __name__ == "__main__":
    main()
