"""Ablations of MRL's own choices on Digits-LD MUS: one MRL variant per row, the benchmark's budget and seeds.

    python benchmarks/ablations.py                      # every ablation -> results/ablations/README.md
    python benchmarks/ablations.py --only outer_every   # one table
    python benchmarks/ablations.py --render_only

Each variant runs `benchmarks/benchmark.py`'s machinery (resumable JSON records under RESULTS/VARIANT/records/)
with one MRLConfig change. Variants are compared on the accuracy over hidden labels of 1,000 unlabeled samples
(validation: never the test split); test accuracy is shown next to it, and the defaults follow the validation.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from harness import (
    BenchmarkSpec,
    load_records,
    plan_runs,
    quiet_progress_bars,
    resolve_pool_file,
    run_benchmark,
)

from hf_mrl.config import MRLConfig

TRAIN = {"max_steps": 250, "batch_size": 32, "unlabeled_batch_size": 64}  # the benchmark's budget


def _encoder_spec() -> str:
    """The only frozen backbone available offline: the pool's S teacher (trained on digits; stated in the report)."""
    pool = Path(resolve_pool_file(BenchmarkSpec(train=dict(TRAIN))))
    return f"encoder:{pool.parent / 'teacher-S'}"


# table -> [(variant name, MRLConfig changes)]; the first row of each table is the default.
ABLATIONS = {
    "hypergradient": [
        ("fd (default): first order, finite-difference JVP, fused with the training step", {}),
        ("jvp: first order, exact forward-mode JVP, fused", {"hypergradient": "jvp"}),
        ("unrolled: second order through a separate unrolled step", {"hypergradient": "unrolled"}),
    ],
    "embedding": [
        ("teacher-outputs (default)", {}),
        ("pixels", {"embedding": "pixels"}),
        ("encoder (the S teacher's backbone)", {"embedding": "<encoder>"}),
    ],
    "direct_term": [
        ("beta = 1 (default)", {}),
        ("beta = 0 (hypergradient only)", {"direct_weight": 0.0}),
    ],
    "outer_every": [
        (f"outer_every = {MRLConfig.outer_every} (default)", {}),
        *[(f"outer_every = {k}", {"outer_every": k}) for k in (1, 2, 10, 20) if k != MRLConfig.outer_every],
    ],
    "unroll_steps": [
        ("s = 1, unrolled (second order)", {"hypergradient": "unrolled"}),
        ("s = 2, unrolled", {"hypergradient": "unrolled", "unroll_steps": 2}),
        ("s = 3, unrolled", {"hypergradient": "unrolled", "unroll_steps": 3}),
    ],
    "reuse_strength": [
        ("learned s (default)", {}),
        ("fixed s = 0.95", {"learn_reuse_strength": False}),
    ],
}


def _slug(changes: dict) -> str:
    if not changes:
        return "default"
    return "__".join(f"{k}-{v}" for k, v in sorted(changes.items())).replace("/", "_").replace(":", "_")


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(stat, bold=False):
    if stat is None:
        return "n/a"
    text = f"{100 * stat[0]:.1f} ± {100 * stat[1]:.1f}"
    return f"**{text}**" if bold else text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results_dir", default="results/ablations")
    p.add_argument("--only", help=f"comma-separated tables (default all: {', '.join(ABLATIONS)})")
    p.add_argument("--setting", default="MUS")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated")
    p.add_argument("--max_steps", type=int, default=TRAIN["max_steps"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--render_only", action="store_true")
    args = p.parse_args(argv)
    args.tables = [t.strip() for t in args.only.split(",")] if args.only else list(ABLATIONS)
    unknown = sorted(set(args.tables) - set(ABLATIONS))
    if unknown:
        p.error(f"unknown tables {unknown}; choose from {', '.join(ABLATIONS)}.")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def _spec(changes: dict, max_steps: int) -> BenchmarkSpec:
    changes = {k: (_encoder_spec() if v == "<encoder>" else v) for k, v in changes.items()}
    return BenchmarkSpec(train={**TRAIN, "max_steps": max_steps, **changes})


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = parse_args(argv)
    quiet_progress_bars()
    root = Path(args.results_dir)
    keys = plan_runs(["mrl"], [args.setting], args.seeds, 10, [], args.setting)
    rows: dict[str, list] = {}
    start = time.time()
    for table in args.tables:
        rows[table] = []
        for name, changes in ABLATIONS[table]:
            spec, folder = _spec(changes, args.max_steps), root / _slug(changes)
            if not args.render_only:
                run_benchmark(spec, keys, folder, workers=args.workers, log=lambda m, t=table: print(f"[{t}] {m}"))
            recs = [r for r in load_records(folder) if r["benchmark"] == spec.identity()]
            recs = [r for r in recs if r["key"]["seed"] in args.seeds and r["key"]["setting"] == args.setting]
            rows[table].append(
                {
                    "variant": name,
                    "changes": changes,
                    "runs": len(recs),
                    "validation": _stats([r.get("unlabeled_accuracy") for r in recs]),
                    "test": _stats([r["accuracy"] for r in recs]),
                    "reuse_test": _stats([r.get("reuse_accuracy") for r in recs]),
                    "train_s": _stats([r["train_time_s"] for r in recs]),
                }
            )
    wall = time.time() - start
    _render(root, rows, args, wall)
    print(f"report: {root / 'README.md'}  ({wall / 60:.1f} min)")
    return rows


def _render(root: Path, rows: dict, args, wall: float) -> None:
    seeds = ",".join(map(str, args.seeds))
    lines = [
        "# Ablations of MRL's choices (Digits-LD)\n",
        f"MRL on {args.setting}, 10 labels per class, seeds {seeds}, {args.max_steps} steps, batch "
        f"{TRAIN['batch_size']} labeled + {TRAIN['unlabeled_batch_size']} unlabeled (the benchmark's budget), 1 torch "
        "thread per run. **Validation**: student accuracy on the hidden labels of 1,000 fixed unlabeled samples "
        "(labels no method sees); defaults are chosen on it, never on the test split. Test accuracy, the reuser's "
        "own test accuracy and training time per run are shown for reference. Mean ± std over seeds, in %; "
        "time in seconds. The best validation in each table is bold. Training times come from runs that shared the "
        "2 cores with other jobs: read them as rough (`benchmarks/speed.py` measures speed side by side).\n",
        f"Regenerate: `python benchmarks/ablations.py --seeds {seeds} --max_steps {args.max_steps}` "
        "(resumable; `--render_only` rebuilds this page).\n",
    ]
    if args.render_only:  # keep the wall time of the invocation that ran the runs
        previous = root / "summary.json"
        wall = json.loads(previous.read_text()).get("wall_time_s") if previous.is_file() else None
    if wall is not None:
        lines.append(f"Wall time of the invocation that ran the runs: {wall / 60:.1f} min on this machine.\n")
    for table, entries in rows.items():
        best = max((e["validation"][0] for e in entries if e["validation"]), default=None)
        lines += [
            f"## {table}\n",
            "| variant | validation | test | reuser test | train time (s) | runs |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for e in entries:
            bold = e["validation"] is not None and e["validation"][0] == best
            t = e["train_s"]
            lines.append(
                f"| {e['variant']} | {_fmt(e['validation'], bold)} | {_fmt(e['test'])} | {_fmt(e['reuse_test'])} "
                f"| {'n/a' if t is None else f'{t[0]:.1f}'} | {e['runs']} |"
            )
        lines.append("")
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("\n".join(lines))
    (root / "summary.json").write_text(json.dumps({"wall_time_s": wall, "tables": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
