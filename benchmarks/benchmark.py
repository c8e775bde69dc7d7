"""Reproduce the paper's evaluation on Digits-LD: every method x seven settings x seeds, the budget curve, attention.

    python benchmarks/benchmark.py                      # the full benchmark -> results/digits_ld/
    python benchmarks/benchmark.py --quick              # a few minutes -> results/digits_ld_quick/
    python benchmarks/benchmark.py --render_only        # rebuild README.md / summary.json / PNGs from the records
    python benchmarks/benchmark.py --converged          # 10x the steps on MUS and S -> results/digits_ld_converged/
    python benchmarks/benchmark.py --rerun results/digits_ld/records/mrl__MUS__n10__s0__HASH.json

Each run writes one JSON record (RESULTS/records/); a stopped benchmark started again with the same arguments
runs only what is missing. Parts: --methods, --settings, --seeds, --budgets (the budget curve, on
--budget_setting). Every method trains with the same MRLConfig but `method`, on the same data and seed (FixMatch
may get its own unlabeled batch, --fixmatch_mu, and an evaluation EMA, --fixmatch_eval_ema_decay).

--converged asks whether MRL's lead survives when every method has converged: 10x the main table's steps on MUS and
S, FixMatch as its paper runs it (mu = 7, evaluated with an EMA of its weights, decay 0.999), the mean teacher
evaluated with its EMA weights (as always). S is the setting where the semi-supervised baselines had the most room
in the main table (results/digits_ld: best of them 38.0% against MRL's 97.9% at 250 steps, some below Supervised's
35.9%; on US, the next, 45.0% against 96.2%), and SVHN-like digits are known to need long SSL training.
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

from hf_mrl.training.strategies import METHODS

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
# 10x FULL's steps on MUS and S (see the docstring), FixMatch with its paper's mu and EMA; 3 seeds, no budget curve.
CONVERGED = {
    **FULL,
    "results_dir": "results/digits_ld_converged",
    "settings": ["MUS", "S"],
    "seeds": [0, 1, 2],
    "budgets": [],
    "max_steps": 10 * FULL["max_steps"],
    "fixmatch_mu": 7,
    "fixmatch_eval_ema_decay": 0.999,
}
CONVERGED_NOTE = (
    "Converged budget (issue #13, fair baselines): every method at {steps} steps per run, {factor:g}x the main "
    "table's {full} (`results/digits_ld`); FixMatch as its paper runs it ({fixmatch}), the mean teacher evaluated "
    "with its EMA weights. Settings: MUS, and S, where the semi-supervised baselines had the most room in the main "
    "table (best of them 38.0% against MRL's 97.9% at 250 steps). Does MRL's lead survive?"
)
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
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="settings M,MUS, seed 0, budgets 2,10,50, 80 steps")
    preset.add_argument(
        "--converged",
        action="store_true",
        help=f"{CONVERGED['max_steps']} steps (10x), settings MUS,S (S: where the SSL baselines had the most room), "
        f"seeds 0,1,2, no budget curve, FixMatch mu {CONVERGED['fixmatch_mu']} and EMA "
        f"{CONVERGED['fixmatch_eval_ema_decay']} -> {CONVERGED['results_dir']}",
    )
    p.add_argument(
        "--results_dir",
        help=f"default {FULL['results_dir']} ({QUICK['results_dir']} with --quick, {CONVERGED['results_dir']} with "
        "--converged)",
    )
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
        "--fixmatch_mu",
        type=int,
        help="FixMatch's unlabeled batch is this x --batch_size (default: --unlabeled_batch_size, as every method; "
        f"{CONVERGED['fixmatch_mu']} with --converged)",
    )
    p.add_argument(
        "--fixmatch_eval_ema_decay",
        type=float,
        help="FixMatch evaluates an EMA of its weights with this decay (default 0: its last iterate; "
        f"{CONVERGED['fixmatch_eval_ema_decay']} with --converged)",
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
    apply_preset(p, args, QUICK if args.quick else CONVERGED if args.converged else FULL)
    if args.fixmatch_mu is not None and args.fixmatch_mu < 1:
        p.error("--fixmatch_mu must be >= 1.")
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
    fixmatch = {}
    if args.fixmatch_mu:
        fixmatch["unlabeled_batch_size"] = args.fixmatch_mu * args.batch_size
    if args.fixmatch_eval_ema_decay:
        fixmatch["eval_ema_decay"] = args.fixmatch_eval_ema_decay
    return BenchmarkSpec(
        dataset_template=args.dataset_template,
        pool_file=args.pool,
        cache_dir=args.cache_dir,
        train=train,
        student_spec=args.student,
        threads=args.threads,
        method_train={"fixmatch": fixmatch} if fixmatch else {},
    )


def report_heading(args: argparse.Namespace) -> tuple[str, str | None]:
    """The report's title and note: the converged table says which budget it is."""
    if not args.converged:
        return "Digits-LD benchmark", None
    factor = args.max_steps / FULL["max_steps"]
    title = f"Digits-LD benchmark, converged budget: {args.max_steps} steps ({factor:g}x the main table's)"
    fixmatch = f"mu = {args.fixmatch_mu or args.unlabeled_batch_size / args.batch_size:g}, " + (
        f"evaluated with an EMA of its weights, decay {args.fixmatch_eval_ema_decay:g}"
        if args.fixmatch_eval_ema_decay
        else "no EMA"
    )
    note = CONVERGED_NOTE.format(steps=args.max_steps, factor=factor, full=FULL["max_steps"], fixmatch=fixmatch)
    return title, note


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
    title, note = report_heading(args)
    summary = write_report(
        args.results_dir,
        spec,
        args.labeled_per_class,
        args.budget_setting,
        command=command.strip(),
        title=title,
        note=note,
    )
    print(f"report: {Path(args.results_dir) / 'README.md'}")
    return summary


if __name__ == "__main__":
    main()
