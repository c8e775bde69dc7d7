"""Reproduce the paper's evaluation on Digits-LD: every method x seven settings x seeds, the budget curve, attention.

    python benchmarks/benchmark.py                      # the full benchmark -> results/digits_ld/
    python benchmarks/benchmark.py --quick              # a few minutes -> results/digits_ld_quick/
    python benchmarks/benchmark.py --render_only        # rebuild README.md / summary.json / PNGs from the records
    python benchmarks/benchmark.py --rerun results/digits_ld/records/mrl__MUS__n10__s0__HASH.json

Each run writes one JSON record (RESULTS/records/); a stopped benchmark started again with the same arguments
runs only what is missing. Parts: --methods, --settings, --seeds, --budgets (the budget curve, on
--budget_setting). Every method trains with the same MRLConfig but `method`, on the same data and seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from harness import (
    BUDGETS,
    SEEDS,
    SETTINGS,
    BenchmarkSpec,
    apply_preset,
    csv_arg,
    plan_runs,
    quiet_progress_bars,
    rerun_record,
    run_benchmark,
    write_report,
)

from hf_mrl.strategies import METHODS

# Full-run defaults: 495 runs on 2 CPU cores within an hour (see README, Benchmark).
FULL = {
    "results_dir": "results/digits_ld",
    "settings": list(SETTINGS),
    "seeds": list(SEEDS),
    "budgets": list(BUDGETS),
    "max_steps": 250,
    "batch_size": 32,
    "unlabeled_batch_size": 64,
}
QUICK = {
    "results_dir": "results/digits_ld_quick",
    "settings": ["M", "MUS"],
    "seeds": [0],
    "budgets": [2, 10, 50],
    "max_steps": 80,
    "batch_size": 32,
    "unlabeled_batch_size": 64,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="settings M,MUS, seed 0, budgets 2,10,50, 100 steps")
    p.add_argument("--results_dir", help=f"default {FULL['results_dir']} ({QUICK['results_dir']} with --quick)")
    p.add_argument("--methods", type=csv_arg(str), default=list(METHODS), help="comma-separated (default: all)")
    p.add_argument("--settings", type=csv_arg(str), help="comma-separated, e.g. M,MUS (default: all seven)")
    p.add_argument("--seeds", type=csv_arg(int), help="comma-separated (default 0,1,2,3,4)")
    p.add_argument("--labeled_per_class", type=int, default=10, help="the main table's budget")
    p.add_argument(
        "--budgets", type=csv_arg(int), help="budget curve, labels per class (default 2,5,10,20,50; '' none)"
    )
    p.add_argument("--budget_setting", default="MUS")
    p.add_argument("--max_steps", type=int, help=f"per run (default {FULL['max_steps']}, quick {QUICK['max_steps']})")
    p.add_argument("--batch_size", type=int, help=f"labeled per step (default {FULL['batch_size']})")
    p.add_argument(
        "--unlabeled_batch_size", type=int, help=f"unlabeled per step (default {FULL['unlabeled_batch_size']})"
    )
    p.add_argument(
        "--config", type=json.loads, default={}, help="other MRLConfig fields as JSON, e.g. '{\"outer_every\": 10}'"
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes (results do not depend on it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (recorded: results may depend on it)")
    p.add_argument("--pool", help="pool file (default: the Digits-LD pool, built once and cached)")
    p.add_argument("--dataset_template", default="digits-ld:{setting}", help="load_target spec of a setting")
    p.add_argument("--student", type=json.loads, help='student spec JSON, e.g. \'{"architecture": "resnet10t"}\'')
    p.add_argument("--cache_dir", help="teacher-output cache (default: $HF_MRL_CACHE/logits)")
    p.add_argument("--render_only", action="store_true", help="only rebuild the report from the records")
    p.add_argument("--rerun", metavar="RECORD.json", help="re-execute one record; exit 1 unless it reproduces")
    args = p.parse_args(argv)
    apply_preset(p, args, QUICK if args.quick else FULL)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}.")
    return args


def make_spec(args: argparse.Namespace) -> BenchmarkSpec:
    train = {
        **args.config,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "unlabeled_batch_size": args.unlabeled_batch_size,
    }
    return BenchmarkSpec(
        dataset_template=args.dataset_template,
        pool_file=args.pool,
        cache_dir=args.cache_dir,
        train=train,
        student_spec=args.student,
        threads=args.threads,
    )


def main(argv=None) -> dict | None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    quiet_progress_bars()
    if args.rerun:
        result = rerun_record(args.rerun, cache_dir=args.cache_dir, pool_file=args.pool)
        verdict = "reproduced exactly" if result["match"] else "DID NOT reproduce"
        print(f"{args.rerun}: recorded {result['recorded']:.4f}, rerun {result['rerun']:.4f}: {verdict}")
        if not result["match"]:
            sys.exit(1)
        return result
    try:
        spec = make_spec(args)
    except ValueError as err:
        sys.exit(f"error: {err}")
    command = "python benchmarks/benchmark.py " + " ".join(shlex.quote(a) for a in argv if a != "--render_only")
    if not args.render_only:
        keys = plan_runs(
            args.methods, args.settings, args.seeds, args.labeled_per_class, args.budgets, args.budget_setting
        )
        start = time.time()
        run_benchmark(spec, keys, args.results_dir, workers=args.workers, argv=argv)
        print(f"benchmark wall time this invocation: {(time.time() - start) / 60:.2f} min")
    summary = write_report(
        args.results_dir, spec, args.labeled_per_class, args.budget_setting, command=command.strip()
    )
    print(f"report: {Path(args.results_dir) / 'README.md'}")
    return summary


if __name__ == "__main__":
    main()
