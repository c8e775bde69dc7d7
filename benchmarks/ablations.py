"""Ablations of MRL's own choices on Digits-LD MUS: one MRL variant per row, the benchmark's budget and seeds.

    python benchmarks/ablations.py                      # every ablation -> results/ablations/README.md
    python benchmarks/ablations.py --only outer_every   # one table
    python benchmarks/ablations.py --render_only
    python benchmarks/ablations.py --only bilevel       # the bi-level grid -> results/ablations/bilevel/README.md

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

from hf_mrl.training.config import MRLConfig

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


# The bi-level grid: does the outer step do the routing? Every variant spells out outer_lr, outer_labels and
# prototype_init, so its records do not depend on the defaults. "frozen": outer_lr 1e-9, so prototypes, bias and
# reuse strength s stay at their initialisation (Adam moves a parameter by about lr per step).
FROZEN_LR = 1e-9
BILEVEL = [
    ("frozen at labeled init", {"outer_lr": FROZEN_LR, "prototype_init": "labeled", "outer_labels": "shared"}),
    ("outer on, labeled init, shared labels", {"prototype_init": "labeled", "outer_labels": "shared"}),
    ("outer on, labeled init, held-out labels", {"prototype_init": "labeled", "outer_labels": "heldout"}),
    ("frozen at uniform init (plain average)", {"outer_lr": FROZEN_LR, "prototype_init": "uniform",
                                               "outer_labels": "shared"}),
    ("outer on, uniform init, shared labels", {"prototype_init": "uniform", "outer_labels": "shared"}),
    ("outer on, uniform init, held-out labels", {"prototype_init": "uniform", "outer_labels": "heldout"}),
    ("outer on, random init, shared labels", {"prototype_init": "random", "outer_labels": "shared"}),
    ("outer on, random init, held-out labels", {"prototype_init": "random", "outer_labels": "heldout"}),
]  # fmt: skip
# scenario -> (description, labels per class, MRLConfig changes): the benchmark's setting and harder routing.
SCENARIOS = {
    "mus10": ("MUS, 10 labels per class, teacher-outputs psi (the benchmark setting)", 10, {}),
    "mus2": ("MUS, 2 labels per class, teacher-outputs psi", 2, {}),
    "pixels10": ("MUS, 10 labels per class, `pixels` psi", 10, {"embedding": "pixels"}),
    "pixels2": ("MUS, 2 labels per class, `pixels` psi", 2, {"embedding": "pixels"}),
}
NEW_FIELDS = {
    "outer_labels": "shared",
    "outer_folds": 5,
    "prototype_init": "labeled",
    "eval_ema_decay": 0.0,
}  # absent from older records


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
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="bilevel grid: comma-separated scenarios")
    p.add_argument("--render_only", action="store_true")
    args = p.parse_args(argv)
    args.tables = [t.strip() for t in args.only.split(",")] if args.only else list(ABLATIONS)
    args.scenarios = [t.strip() for t in args.scenarios.split(",") if t.strip()]
    bad = sorted(set(args.scenarios) - set(SCENARIOS))
    if bad:
        p.error(f"unknown scenarios {bad}; choose from {', '.join(SCENARIOS)}.")
    unknown = sorted(set(args.tables) - set(ABLATIONS) - {"bilevel"})
    if unknown:
        p.error(f"unknown tables {unknown}; choose from {', '.join(ABLATIONS)}.")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def _spec(changes: dict, max_steps: int) -> BenchmarkSpec:
    changes = {k: (_encoder_spec() if v == "<encoder>" else v) for k, v in changes.items()}
    return BenchmarkSpec(train={**TRAIN, "max_steps": max_steps, **changes})


def _same_benchmark(recorded: dict, identity: dict) -> bool:
    """A record's benchmark is `identity`'s, reading fields that postdate the record at their (old) defaults."""
    if recorded == identity:
        return True
    train = {**NEW_FIELDS, **recorded.get("train", {})}
    return {**recorded, "train": train} == identity


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = parse_args(argv)
    quiet_progress_bars()
    root = Path(args.results_dir)
    rows: dict[str, list] = {}
    if "bilevel" in args.tables:
        run_bilevel(args, root / "bilevel")
        args.tables = [t for t in args.tables if t != "bilevel"]
        if not args.tables:
            return {"bilevel": True}
    keys = plan_runs(["mrl"], [args.setting], args.seeds, 10, [], args.setting)
    start = time.time()
    for table in args.tables:
        rows[table] = []
        for name, changes in ABLATIONS[table]:
            spec, folder = _spec(changes, args.max_steps), root / _slug(changes)
            if not args.render_only:
                run_benchmark(spec, keys, folder, workers=args.workers, log=lambda m, t=table: print(f"[{t}] {m}"))
            recs = [r for r in load_records(folder) if _same_benchmark(r["benchmark"], spec.identity())]
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


# ------------------------------------------------------------------------------------------------ the bi-level grid


def _final(r: dict, name: str):
    v = (r.get("final_losses") or {}).get(name)
    return None if v is None or v != v else v  # NaN (zero init) -> None


def _bilevel_row(name: str, changes: dict, recs: list[dict]) -> dict:
    routing = [(r.get("attention") or {}).get("in_domain_routing") for r in recs]
    return {
        "variant": name,
        "changes": changes,
        "runs": len(recs),
        "seeds": sorted(r["key"]["seed"] for r in recs),
        "validation": _stats([r.get("unlabeled_accuracy") for r in recs]),
        "validation_by_seed": {r["key"]["seed"]: r.get("unlabeled_accuracy") for r in recs},
        "test": _stats([r["accuracy"] for r in recs]),
        "test_by_seed": {r["key"]["seed"]: r["accuracy"] for r in recs},
        "reuse_test": _stats([r.get("reuse_accuracy") for r in recs]),
        "routing": _stats(routing),
        "proto_l2": _stats([_final(r, "proto_l2_from_init") for r in recs]),
        "proto_rel_l2": _stats([_final(r, "proto_rel_l2_from_init") for r in recs]),
        "proto_cos": _stats([_final(r, "proto_cos_to_init") for r in recs]),
        "bias_l2": _stats([_final(r, "bias_l2_from_init") for r in recs]),
        "reuse_strength": _stats([_final(r, "reuse_strength") for r in recs]),
        "train_s": _stats([r["train_time_s"] for r in recs]),
    }


def bilevel_specs(scenario: str, max_steps: int) -> list[tuple[str, dict, BenchmarkSpec]]:
    extra = SCENARIOS[scenario][2]
    return [(name, changes, _spec({**extra, **changes}, max_steps)) for name, changes in BILEVEL]


def run_bilevel(args, root: Path) -> dict:
    """Every BILEVEL variant in every scenario, runs in parallel across the whole grid, then the page."""
    start = time.time()
    if not args.render_only:
        for scenario in args.scenarios:
            n = SCENARIOS[scenario][1]
            keys = plan_runs(["mrl"], [args.setting], args.seeds, n, [], args.setting)
            for _name, changes, spec in bilevel_specs(scenario, args.max_steps):
                run_benchmark(
                    spec, keys, root / scenario / _slug(changes), workers=args.workers,
                    log=lambda m, s=scenario: print(f"[bilevel {s}] {m}"),
                )  # fmt: skip
    rows = {}
    for scenario in args.scenarios:
        n = SCENARIOS[scenario][1]
        rows[scenario] = []
        for name, changes, spec in bilevel_specs(scenario, args.max_steps):
            recs = [r for r in load_records(root / scenario / _slug(changes)) if r["benchmark"] == spec.identity()]
            recs = [r for r in recs if r["key"]["seed"] in args.seeds and r["key"]["labeled_per_class"] == n]
            rows[scenario].append(_bilevel_row(name, changes, recs))
    wall = time.time() - start
    _render_bilevel(root, rows, args, None if args.render_only else wall)
    print(f"report: {root / 'README.md'}")
    return rows


def _paired(a: dict, b: dict):
    """Mean ± std over seeds of a - b (same seed: same labels, same data), or None."""
    seeds = sorted(set(a) & set(b))
    return _stats([a[s] - b[s] for s in seeds if a[s] is not None and b[s] is not None]) if seeds else None


def _fmt_num(stat, digits=2):
    return "n/a" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def _render_bilevel(root: Path, rows: dict, args, wall: float | None) -> None:
    seeds = ",".join(map(str, args.seeds))
    lines = [
        "# Does the bi-level step do the routing? (Digits-LD MUS)\n",
        f"MRL, seeds {seeds}, {args.max_steps} steps, batch {TRAIN['batch_size']} labeled + "
        f"{TRAIN['unlabeled_batch_size']} unlabeled, 1 torch thread per run. Every variant is one MRLConfig change "
        "(the `changes` column spells it out, so rows do not depend on the defaults). **Validation**: student "
        "accuracy on the hidden labels of 1,000 fixed unlabeled samples (labels no method sees); choices are made on "
        "it, never on test. **Routing**: share of test samples whose argmax-attention teacher is their true "
        "domain's teacher (the teacher most accurate on that domain; reads domain labels, evaluation only). "
        "**|dP|**: mean over teachers of the L2 distance of the final prototype from its initialisation (rel.: over "
        "the mean initial norm; n/a from the zero, uniform init); **cos**: mean cosine of final and initial "
        "prototypes; **|db|**: L2 change of the attention bias; **s**: final reuse strength (from 0.95). Mean ± std "
        "over seeds, accuracies and routing in %. 'frozen' is `outer_lr` 1e-9: prototypes, bias and s stay put.\n",
        f"Regenerate: `python benchmarks/ablations.py --only bilevel --seeds {seeds} --max_steps {args.max_steps} "
        f"--scenarios {','.join(args.scenarios)}` (resumable; add `--render_only` to rebuild this page).\n",
    ]
    previous = root / "summary.json"
    if wall is None and previous.is_file():
        wall = json.loads(previous.read_text()).get("wall_time_s")
    if wall is not None:
        lines.append(f"Wall time of the invocation that ran the runs: {wall / 60:.1f} min on this machine.\n")
    for scenario, entries in rows.items():
        best = max((e["validation"][0] for e in entries if e["validation"]), default=None)
        lines += [
            f"## {scenario}: {SCENARIOS[scenario][0]}\n",
            "| variant | validation | test | reuser test | routing | abs. dP | rel. dP | cos | abs. db | s | runs |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for e in entries:
            bold = e["validation"] is not None and e["validation"][0] == best
            lines.append(
                f"| {e['variant']} | {_fmt(e['validation'], bold)} | {_fmt(e['test'])} | {_fmt(e['reuse_test'])} "
                f"| {_fmt(e['routing'])} | {_fmt_num(e['proto_l2'])} | {_fmt_num(e['proto_rel_l2'])} "
                f"| {_fmt_num(e['proto_cos'], 3)} | {_fmt_num(e['bias_l2'])} | {_fmt_num(e['reuse_strength'], 3)} "
                f"| {e['runs']} |"
            )
        frozen = entries[0]
        lines += [
            "",
            "Paired over seeds against 'frozen at labeled init' (same seed: same labels and data), in points:",
            "",
        ]
        lines += ["| variant | validation gain | test gain | frozen's seed std (val / test) | gain > spread? |",
                  "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
        for e in entries[1:]:
            dv = _paired(e["validation_by_seed"], frozen["validation_by_seed"])
            dt = _paired(e["test_by_seed"], frozen["test_by_seed"])
            fv, ft = frozen["validation"], frozen["test"]
            spread = max(fv[1], (e["validation"] or (0, 0))[1]) if fv else None
            verdict = "n/a" if dv is None or spread is None else ("yes" if dv[0] > spread else "no")
            lines.append(
                f"| {e['variant']} | {_fmt(dv)} | {_fmt(dt)} | "
                f"{'n/a' if fv is None else f'{100 * fv[1]:.1f} / {100 * ft[1]:.1f}'} | {verdict} |"
            )
        lines.append("")
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("\n".join(lines))
    (root / "summary.json").write_text(json.dumps({"wall_time_s": wall, "scenarios": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
