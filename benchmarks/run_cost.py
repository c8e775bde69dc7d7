"""The whole run's cost against the method's own (issue 21, item 4): `make run`'s command on four pools, in one run.

    python benchmarks/run_cost.py                                  # default + honest + harmful + close
    python benchmarks/run_cost.py --cases honest,close --steps 250  # some cases only
    python benchmarks/run_cost.py --render_only                    # print results/robustness/run_cost.json again

Each case is one whole process, `accelerate launch recipes/train_mrl.py` as `make run` calls it, timed from outside
(start to exit: imports, loading the pool and the data, teacher outputs, supervised-only, the method, the guard,
writing the run folder). The phases come from the run's own `metrics.json` (`time_s`: teacher_outputs, supervised,
method, guard, measured by `ReuseTrainer.train`), the guard's cost from its report (`trainings`, `trainings_full`,
`looks`, `max_looks`, `stopped_at`). Printed per case:

- whole / (teacher outputs + method): what the run costs against reusing the teachers without a baseline or guard;
- guard / method: the guard's wall time against the method's own training (issue 21's target: at most 1.5x);
- guard's own / method: the same with the guard's whole wall time from its start; when it runs beside the
  trainings (the default on two workers or more) "guard" is only what it added after the method's training;
- trainings used / full design, and the look the guard stopped at (of how many).

Cases (Digits-LD MUS, 10 labels per class, seed 0, the guard's defaults):

- `default`: `make run`'s command exactly (the embedded Digits-LD pool, the recipe's default steps);
- `honest`: the same pool at `--steps` (default 250, as `benchmarks/robustness.py`);
- `harmful`: the label-permuted teachers (`benchmarks/hostile.py`'s `permuted` pool) at `--steps`;
- `close`: the honest teachers with labels cycled among 6 classes (`swap-6`; MRL about as good as supervised-only
  at 250 steps in `results/robustness/`) at `--steps`;
- `default-after`, `default-full`: `default` with the guard's earlier schedules, for a side-by-side in one run:
  started after the method's training (`--no-guard_beside`), and the full design after it (also
  `--no-guard_sequential`).

Every case gets a fresh `HF_MRL_CACHE` (no cached teacher outputs, as a new user's first run) in which only the
built Digits-LD dataset, the Digits-LD pool and the hostile pools are linked from the real cache (built once, before
any case is timed). Cases run one at a time; the machine's load average is recorded before and after each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hf_mrl.record import read_metrics

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "robustness" / "run_cost.json"
CASES = ("default", "honest", "harmful", "close", "default-after", "default-full")
# case -> (pool: None = make run's default pool, "honest" or a hostile pool name; reduced steps?)
CASE_POOLS = {
    "default": (None, False),
    "honest": ("honest", True),
    "harmful": ("permuted", True),
    "close": ("swap-6", True),
    "default-after": (None, False),
    "default-full": (None, False),
}
# the guard's earlier schedules, for a side-by-side in one run: started after the method's training (the sequential
# guard before it went beside the trainings), and the full 12-training design after it (issue 21's starting point)
CASE_FLAGS = {
    "default-after": ["--no-guard_beside"],
    "default-full": ["--no-guard_beside", "--no-guard_sequential"],
}
LINKED = ("digits_ld", "digits_ld_pool_v1", "robustness_pools_v1")  # built once; everything else fresh per case
LAUNCH = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


# ------------------------------------------------------------------------------------------ the numbers


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def case_cost(metrics: dict, whole_s: float) -> dict:
    """The cost figures of one run from its `metrics.json` and the whole process's wall time (seconds)."""
    t = metrics.get("time_s") or {}
    teacher, method, guard_s = t.get("teacher_outputs"), t.get("method"), t.get("guard")
    # beside the trainings, "guard" is the wall time it added after the method's training; its own, from its start,
    # is "guard_total" (absent when it ran after the method: then the two are the same)
    guard_total = t.get("guard_total", guard_s)
    g = metrics.get("guard") or {}
    base = None if teacher is None or method is None else teacher + method
    return {
        "whole_s": round(whole_s, 1),
        "trainer_wall_s": metrics.get("wall_time_s"),
        "time_s": t,
        "whole_over_teacher_plus_method": _ratio(whole_s, base),
        "guard_over_method": _ratio(guard_s, method),
        "guard_total_over_method": _ratio(guard_total, method),
        "decision": g.get("decision"),
        "delivered": metrics.get("delivered"),
        "loss_upper": g.get("loss_upper"),
        "trainings": g.get("trainings"),
        "trainings_full": g.get("trainings_full"),
        "looks": g.get("looks"),
        "max_looks": g.get("max_looks"),
        "stopped_at": g.get("stopped_at"),
        "rule": g.get("rule"),
        "method_accuracy": metrics.get("method_student_accuracy"),
        "supervised_accuracy": metrics.get("supervised_accuracy"),
        "max_steps": (metrics.get("config") or {}).get("max_steps"),
    }


def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def render(result: dict) -> str:
    """The printed table (markdown)."""
    lines = [
        "| case | pool | steps | whole | teacher outputs | supervised | method | guard | whole / (teacher + method) "
        "| guard / method | guard's own / method | trainings / full | stopped at look | decision |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, c in result["cases"].items():
        t = c.get("time_s") or {}
        used = f"{c.get('trainings')} / {c.get('trainings_full')}" if c.get("trainings") is not None else "-"
        look = f"{c.get('looks')} of {c.get('max_looks')} ({c.get('stopped_at')})" if c.get("looks") else "-"
        lines.append(
            f"| {name} | {c.get('pool')} | {c.get('max_steps')} | {_fmt(c.get('whole_s'), '.0f', ' s')} "
            f"| {_fmt(t.get('teacher_outputs'), '.1f', ' s')} | {_fmt(t.get('supervised'), '.0f', ' s')} "
            f"| {_fmt(t.get('method'), '.0f', ' s')} | {_fmt(t.get('guard'), '.0f', ' s')} "
            f"| {_fmt(c.get('whole_over_teacher_plus_method'))}x | {_fmt(c.get('guard_over_method'))}x "
            f"| {_fmt(c.get('guard_total_over_method', c.get('guard_over_method')))}x "
            f"| {used} | {look} | {c.get('decision')} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ running a case


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "hf_mrl", "recipes"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def pool_files(cases: list[str]) -> dict[str, str | None]:
    """{case: pool file or None}: builds (or reuses) the Digits-LD pool and the hostile pools in the real cache."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hostile import build_hostile_pools

    from hf_mrl.pool.builder import build_digits_pool

    honest = build_digits_pool()
    hostile = sorted({CASE_POOLS[c][0] for c in cases} - {None, "honest"})
    built = build_hostile_pools(pools=hostile) if hostile else {}
    files = {}
    for c in cases:
        name = CASE_POOLS[c][0]
        files[c] = None if name is None else str(honest if name == "honest" else built[name])
    return files


def fresh_cache(work: Path, real: Path) -> Path:
    """A new HF_MRL_CACHE with only the built dataset and pools linked in (teacher outputs computed afresh)."""
    cache = work / "hf_mrl_cache"
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    for name in LINKED:
        if (real / name).exists():
            (cache / name).symlink_to(real / name)
    return cache


def run_case(name: str, pool_file: str | None, steps: int | None, work: Path, real_cache: Path, log) -> dict:
    out_dir = work / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cache = fresh_cache(work / f"{name}-cache", real_cache)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", *LAUNCH, str(ROOT / "recipes" / "train_mrl.py")]
    cmd += ["--output_dir", str(out_dir)]
    if pool_file is not None:
        cmd += ["--pool", pool_file]
    if steps is not None:
        cmd += ["--max_steps", str(steps)]
    cmd += CASE_FLAGS.get(name, [])
    env = {**os.environ, "HF_MRL_CACHE": str(cache)}
    before = _load()
    log(f"{name}: {' '.join(cmd[1:])}  (load {before})")
    start = time.perf_counter()
    with open(work / f"{name}.log", "w") as console:
        proc = subprocess.run(cmd, env=env, stdout=console, stderr=subprocess.STDOUT, cwd=ROOT)
    whole = time.perf_counter() - start
    after = _load()
    if proc.returncode != 0:
        raise RuntimeError(f"case {name} exited {proc.returncode}; see {work / f'{name}.log'}")
    metrics = read_metrics(out_dir)
    cost = case_cost(metrics, whole)
    cost |= {"pool": CASE_POOLS[name][0] or "make run's default", "load_before": before, "load_after": after}
    cost["command"] = "HF_MRL_CACHE=<fresh> " + " ".join(["accelerate", *cmd[1:]]).replace(str(ROOT) + "/", "")
    log(f"{name}: whole {whole:.0f} s, guard/method {cost['guard_over_method']}x, trainings {cost['trainings']}")
    return cost


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--steps", type=int, default=250, help="max_steps of the reduced cases (honest, harmful, close)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--work_dir", help="run folders and fresh caches (default: a temporary folder)")
    p.add_argument("--render_only", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render_only:
        result = json.loads(Path(args.out).read_text())
        print(render(result))
        return result
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {list(CASES)}")
    from hf_mrl.utils import cache_root

    def log(msg: str) -> None:
        print(f"[{datetime.datetime.now(datetime.UTC):%H:%M:%S}] {msg}", flush=True)

    files = pool_files(cases)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="run_cost_"))
    work.mkdir(parents=True, exist_ok=True)
    result = {
        "format": "hf_mrl-run-cost-1",
        "commit": _commit(),
        "started_at": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}",
        "cpus": os.cpu_count(),
        "reduced_steps": args.steps,
        "note": (
            f"default: make run's command as is; honest / harmful / close: the same command with --pool and "
            f"--max_steps {args.steps} (reduced to fit the time, as benchmarks/robustness.py). Each case a fresh "
            "HF_MRL_CACHE (teacher outputs computed), one case at a time, whole = the process's wall time."
        ),
        "cases": {},
    }
    for name in cases:
        steps = args.steps if CASE_POOLS[name][1] else None
        result["cases"][name] = run_case(name, files[name], steps, work, cache_root(), log)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # after every case: a stopped run keeps them
    result["finished_at"] = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(result["note"])
    return result


if __name__ == "__main__":
    main()
