"""The paper's attribute table, offline: every method x seven digit attributes x seeds on Digits-LD MUS.

    python benchmarks/attributes/run.py                  # the full table -> results/digit_attributes/ (the long path)
    python benchmarks/attributes/run.py --quick          # Even + Symmetric, 1 seed, 80 steps -> results/digit_attributes_quick/
    python benchmarks/attributes/run.py --render_only    # rebuild README.md / summary.json from the records

Time (design/benchmark.md: the full table in at most 60 minutes on a 2-core CPU, a quick mode in at most 5): the
full table (7 attributes x 9 methods x 5 seeds, 250 steps) is the long path, extrapolated from its records to about
72 min of runs on the shared 2-core machine it ran on; `--quick` is the budgeted path: two attributes (one
arithmetic 5/5 split, one shape 4/6 split), every method, one seed, 80 steps, on a warm cache (a cold one first
trains their 6 teachers). Measured and extrapolated times: results/digit_attributes/README.md ("Time budget").

Each attribute is its own binary task (`digit_attributes.py`) with its own pool of three teachers, one per latent
domain (`attribute_pool.py`); both are built once and cached. Each attribute then runs through
`benchmarks/harness.py` exactly as a Digits-LD setting does (one record per run, under RESULTS/<Attribute>/records/; a
stopped run started again runs only what is missing), with the attribute as the table's column. Attributes run in
parallel over `--workers` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness beside this folder

from attribute_pool import build_attribute_pools, calibration_matrix, render_calibration  # noqa: E402
from digit_attributes import DIGIT_ATTRIBUTES, _canonical, save_attribute_tasks  # noqa: E402
from harness import (  # noqa: E402
    METHOD_NAMES,
    SEEDS,
    BenchmarkSpec,
    apply_preset,
    csv_arg,
    load_records,
    plan_runs,
    quiet_progress_bars,
    render_markdown,
    run_benchmark,
    select_benchmark,
    summarise,
)

from hf_mrl.training.strategies import METHODS  # noqa: E402
from hf_mrl.utils import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SETTING = "MUS"
# The paper's attribute table (talk slides): accuracy, and MRL's average gain over Supervised in points.
PAPER_ATTRIBUTE_TABLE = {
    "columns": ["Smart", "Slow", "Bulbous", "Solitary", "Nestspot", "Lean", "Spots"],
    "rows": {
        "Supervised": [".820", ".853", ".846", ".812", ".862", ".853", ".820", "-"],
        "PL": [".855", ".886", ".865", ".858", ".879", ".859", ".847", ".026"],
        "TE": [".855", ".878", ".864", ".849", ".873", ".855", ".862", ".024"],
        "VAT": [".855", ".884", ".876", ".857", ".887", ".861", ".871", ".032"],
        "MR-BS": [".811", ".870", ".844", ".818", ".852", ".851", ".862", ".006"],
        "MR-CR": [".827", ".874", ".852", ".826", ".852", ".847", ".866", ".011"],
        "MRL": [".876", ".901", ".890", ".874", ".896", ".889", ".896", ".051"],
    },
}
PAPER_MRL_GAIN = 5.1
# 50 labels per binary class: 100 labels per task, the digits table's budget (10 per digit class).
FULL = {
    "results_dir": "results/digit_attributes",
    "attributes": list(DIGIT_ATTRIBUTES),
    "seeds": list(SEEDS),
    "max_steps": 250,
}
# The budgeted path (5 minutes, warm cache): one attribute per worker (2 workers on 2 cores), so the 18 runs take one round, and only the
# 6 teachers of these two attributes are trained on a cold cache (21 for the full table). Even: arithmetic, a 5/5
# split of the digits; Symmetric: shape, a 4/6 split, where MRL routed worst in the full table.
QUICK = {
    "results_dir": "results/digit_attributes_quick",
    "attributes": ["Even", "Symmetric"],
    "seeds": [0],
    "max_steps": 80,
}
BUDGET_MIN = {"full": 60, "quick": 5}  # design/benchmark.md, on a 2-core CPU


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="Even and Symmetric, seed 0, 80 steps per run")
    p.add_argument("--results_dir", help=f"default {FULL['results_dir']} ({QUICK['results_dir']} with --quick)")
    p.add_argument("--attributes", type=csv_arg(str), help="comma-separated (default: all 7; quick Even,Symmetric)")
    p.add_argument("--methods", type=csv_arg(str), default=list(METHODS), help="comma-separated (default: all)")
    p.add_argument("--seeds", type=csv_arg(int), help="comma-separated (default 0,1,2,3,4; quick 0)")
    p.add_argument("--labeled_per_class", type=int, default=50, help="labels per binary class (default 50)")
    p.add_argument("--max_steps", type=int, help=f"per run (default {FULL['max_steps']}, quick {QUICK['max_steps']})")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--unlabeled_batch_size", type=int, default=64)
    p.add_argument(
        "--config",
        type=json.loads,
        default={},
        help='other MRLConfig fields as JSON, e.g. \'{"embedding": "pixels"}\'',
    )
    p.add_argument("--workers", type=int, default=2, help="attributes run in parallel (results do not depend on it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--cache_dir", help="teacher-output cache (default: $HF_MRL_CACHE/logits)")
    p.add_argument("--render_only", action="store_true", help="only rebuild the report from the records")
    args = p.parse_args(argv)
    apply_preset(p, args, QUICK if args.quick else FULL, positive=())
    try:
        args.attributes = [_canonical(a) for a in args.attributes]
    except ValueError as err:
        p.error(str(err))
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}.")
    for name in ("max_steps", "batch_size", "unlabeled_batch_size", "workers", "threads", "labeled_per_class"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1.")
    return args


def make_spec(args, folder: Path, pool: Path) -> BenchmarkSpec:
    train = {
        **args.config,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "unlabeled_batch_size": args.unlabeled_batch_size,
    }
    return BenchmarkSpec(
        dataset_template=str(folder), pool_file=str(pool), cache_dir=args.cache_dir, train=train, threads=args.threads
    )


def _run_attribute(spec: BenchmarkSpec, keys, results_dir: str, argv) -> dict:
    """One attribute's runs in this process (a worker task); its records go to RESULTS/<Attribute>/."""
    import torch

    torch.set_num_threads(spec.threads)
    quiet_progress_bars()
    return run_benchmark(spec, keys, results_dir, workers=1, argv=argv)


def collect(results_dir: Path, attributes) -> list[dict]:
    """The newest benchmark's records of each attribute (one folder per attribute)."""
    records = []
    for attribute in attributes:
        records += select_benchmark(load_records(results_dir / attribute))
    return records


def report(results_dir: Path, attributes, labeled_per_class: int, command: str, calibration: dict | None) -> dict:
    """README.md and summary.json from the records: the table with Ave. Gain, the checks, the paper's table."""
    records = collect(results_dir, attributes)
    if not records:
        raise SystemExit(f"No records under {results_dir}/<Attribute>/records/: run without --render_only first.")
    summary = summarise(records, labeled_per_class, budget_setting="")
    summary["settings"] = [a for a in DIGIT_ATTRIBUTES if a in summary["settings"]]
    # Each attribute has its own pool: the teacher x domain matrix is the calibration below, not one pool's.
    summary["teacher_domain_accuracy"], summary["teacher_ids"] = {}, None
    summary["checks"] = [c for c in summary["checks"] if not c["check"].startswith("single-domain settings")]
    for check in summary["checks"]:
        if check["check"].startswith("MRL's average gain >= the paper's"):
            gain = summary["ave_gain"]["mrl"]["mean"]
            check.update(
                check=f"MRL's average gain >= the paper's attribute +{PAPER_MRL_GAIN} points",
                ok=gain >= PAPER_MRL_GAIN,
            )
    timing_path = results_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    summary["wall_time_s"] = timing and sum(i["wall_time_s"] for i in timing["invocations"])
    summary["calibration"] = calibration
    summary["command"] = command
    summary["benchmark"] = records[0]["benchmark"]
    summary["bench_hash"] = {r["key"]["setting"]: r["bench_hash"] for r in records}  # one per attribute and pool
    summary["attention"] = {a: summary["attention"][a] for a in summary["settings"] if a in summary["attention"]}
    text = render_markdown(summary, None, command)
    text = text.replace("# Digits-LD benchmark\n", _intro(records, labeled_per_class), 1)
    text = text.replace("![attention](attention.png)\n", "")
    text = text.replace(f"`{records[0]['benchmark']['dataset_template']}`", "one folder per attribute")
    text = text.replace(f"{labeled_per_class} labels per class", f"{labeled_per_class} labels per binary class")
    text = text.replace(f"benchmark hash `{summary['bench_hash']}`", "benchmark hashes in `summary.json`")
    text = text.replace("a record in `records/`", "a record in `<Attribute>/records/`")
    text = text.replace("--rerun records/FILE.json", "--rerun RESULTS/<Attribute>/records/FILE.json")
    if timing:
        last = timing["invocations"][-1]
        setup = last.get("setup_time_s")
        text += (
            f"\nMeasured wall time of the driver's runs: {summary['wall_time_s'] / 60:.1f} min over "
            f"{len(timing['invocations'])} invocation(s) (last: {last['runs']} runs, {last['workers']} worker(s), "
            f"{last['cpus']} CPUs, load average at start {_load(last['load_average_at_start'])}"
            + ("" if setup is None else f"; before them, {setup / 60:.1f} min building task folders and teachers")
            + "). The design's budget on a 2-core CPU: "
            f"{BUDGET_MIN['quick']} min for a quick mode, {BUDGET_MIN['full']} min for the full table.\n"
        )
    text += _kept_section(results_dir / "README.md")
    text += "\n" + _paper_table() + _calibration_section(calibration)
    atomic_write_text(results_dir / "README.md", text)
    atomic_write_json(results_dir / "summary.json", summary)
    return summary


def _load(load) -> str:
    return "unknown" if not load else ", ".join(f"{x:.1f}" for x in load)


KEPT = "## Time budget"


def _kept_section(readme: Path) -> str:
    """A hand-written `## Time budget` section of the existing README (measured by hand, kept on a re-render)."""
    if not readme.is_file():
        return ""
    text = readme.read_text()
    start = text.find("\n" + KEPT)
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)].rstrip("\n") + "\n"


def _intro(records, n: int) -> str:
    present = {r["key"]["setting"] for r in records}
    defs = "; ".join(f"{a}: {', '.join(map(str, d))}" for a, d in DIGIT_ATTRIBUTES.items() if a in present)
    count = "Seven" if len(present) == len(DIGIT_ATTRIBUTES) else f"{len(present)} of the seven"
    return (
        "# Digit attributes: the paper's attribute table, offline\n\n"
        f"{count} binary attributes of the digit class (label 1 for the digits listed; {defs}) over the target data "
        f"of Digits-LD {SETTING} (latent domains M, U, S). Each attribute is a binary task (`not even` / `even`) "
        "with its own pool of three binary teachers, one per domain, each trained on its domain's source part only. "
        f"{n} labels per binary class ({2 * n} per task, the digits table's 100), drawn per seed from "
        "target-train; the unlabeled data is all of target-train (it contains the labeled images). Built by "
        "`benchmarks/attributes/`; see its README for where this differs from the paper's AwA setting.\n"
    )


def _paper_table() -> str:
    cols = PAPER_ATTRIBUTE_TABLE["columns"] + ["Ave. Gain"]
    lines = ["## The paper's attribute table (AwA; talk slides), for comparison\n"]
    lines.append("| method | " + " | ".join(cols) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
    lines += [f"| {m} | " + " | ".join(v) + " |" for m, v in PAPER_ATTRIBUTE_TABLE["rows"].items()]
    return "\n".join(lines) + "\n"


def _calibration_section(calibration: dict | None) -> str:
    if not calibration:
        return ""
    return (
        "\n## The pools: each attribute teacher's accuracy on each domain's target-test part\n\n"
        "Read through `ModelPool` as a run reads it. Bold: in-domain; last column: in-domain minus the mean over "
        "the other domains. Regenerate with `python benchmarks/attributes/attribute_pool.py --out FILE.json`.\n\n"
        + render_calibration(calibration)
    )


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    quiet_progress_bars()
    results = Path(args.results_dir)
    command = "python benchmarks/attributes/run.py " + " ".join(shlex.quote(a) for a in argv if a != "--render_only")
    setup_start = time.time()
    folders = save_attribute_tasks(args.attributes, SETTING)
    pools = build_attribute_pools(args.attributes)
    setup = time.time() - setup_start  # task folders and teachers: seconds on a warm cache, minutes on a cold one
    if not args.render_only:
        start = time.time()
        load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        jobs = []
        for attribute in args.attributes:
            spec = make_spec(args, folders[attribute], pools[attribute])
            keys = plan_runs(args.methods, [attribute], args.seeds, args.labeled_per_class, (), attribute)
            jobs.append((spec, keys, str(results / attribute), argv))
        if args.workers > 1 and len(jobs) > 1:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(args.workers, len(jobs)), mp_context=ctx) as pool:
                done = [fut.result() for fut in [pool.submit(_run_attribute, *job) for job in jobs]]
        else:
            done = [_run_attribute(*job) for job in jobs]
        wall = time.time() - start
        timing_path = results / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"invocations": []}
        runs = sum(d["ran"] for d in done)
        timing["invocations"].append(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
                "wall_time_s": round(wall, 1),
                "setup_time_s": round(setup, 1),
                "runs": runs,
                "workers": args.workers,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "load_average_at_start": load_start,
                "argv": argv,
            }
        )
        atomic_write_json(timing_path, timing)
        print(
            f"attribute benchmark wall time this invocation: {wall / 60:.2f} min ({runs} runs), "
            f"after {setup / 60:.2f} min building task folders and teachers"
        )
    calibration = calibration_matrix(args.attributes)
    summary = report(results, args.attributes, args.labeled_per_class, command, calibration)
    print(f"report: {results / 'README.md'}")
    for m in summary["methods"]:
        gain = summary["ave_gain"].get(m)
        print(f"{METHOD_NAMES[m]:>20}: Ave. Gain {gain['mean']:+.1f}" if gain else f"{METHOD_NAMES[m]:>20}: baseline")
    return summary


if __name__ == "__main__":
    main()
