"""Robustness report: MRL against Supervised on hostile teacher pools, with the guard, the reuse strength, the
attention and the screening each recorded (issue #5).

    python benchmarks/robustness.py                      # 6 pools x 5 seeds -> results/robustness/
    python benchmarks/robustness.py --quick              # seed 0, 80 steps -> results/robustness_quick/
    python benchmarks/robustness.py --render_only        # rebuild report.md / summary.json / PNG from the records
    python benchmarks/robustness.py --pools honest,swap-6,swap-7,swap-8,permuted --seeds 0,1   # the guard's power curve

Pools (`hostile`, built once under $HF_MRL_CACHE/robustness_pools_v1): the honest Digits-LD pool, random-logit
teachers, label-permuted teachers, teachers of unrelated tasks, one good teacher among six bad ones, and the honest
pool with duplicates; and `swap-k` pools of graded harm (the honest teachers with labels cycled among k classes)
for the guard's power curve (share of seeds caught against the MRL student's measured loss). On each pool and seed (Digits-LD MUS, 10 labels per class, the benchmark's training settings)
the recipe trains MRL, runs the never-worse guard (2 x 3-fold non-inferiority check against supervised-only at a
2-point margin, as `recipes/train_mrl.py` by default), and records the supervised, MRL and delivered students' test accuracy.

Supervised does not read the pool, so its student and its side of the guard are trained once per seed and shared by
every pool (a `supervised__...` record). Each (pool, seed) writes one JSON record, atomically; a stopped run started
again with the same arguments runs only what is missing. `--workers` processes run with `--threads` torch threads
each; results do not depend on the number of workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shlex
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch
from harness import apply_preset, csv_arg, read_json, write_json

from hf_mrl.training.config import MRLConfig

logger = logging.getLogger("robustness")

RECORD_FORMAT = "hf_mrl-robustness-run-1"
RECORDS_DIR = "records"
REPORT = "report.md"
FIGURE = "robustness.png"
TIMING_FILE = "timing.json"
POOLS = ("honest", "random", "permuted", "unrelated", "one-good", "duplicates")
SWAP_POOLS = tuple(f"swap-{k}" for k in (4, 5, 6, 7, 8))  # graded harm (`hostile.SWAP_LEVELS`)
# The guard's power curve (issue 13): honest (a large gain), then pools whose MRL student loses about 0, 5, 10 and
# 25 points against Supervised on Digits-LD MUS at 10 labels per class (measured per seed; see the report).
POWER_POOLS = ("honest", "swap-6", "swap-7", "swap-8", "permuted")
# Nominal true-loss levels of the power curve (points) and the bin edges between them.
LOSS_LEVELS = (0, 2, 5, 10, 25)
LOSS_EDGES = (1.0, 3.5, 7.5, 17.5)
POOL_TITLES = {
    "honest": "Honest Digits-LD pool (teacher-M, teacher-U, teacher-S)",
    "random": "Random-logit teachers (3, the honest teachers' architectures with random weights)",
    "permuted": "Label-permuted teachers (3, the honest teachers with deranged label names)",
    "unrelated": "Unrelated-task teachers (3, grating orientation / grating frequency / hue, labels named 0-9)",
    "one-good": "One good teacher (teacher-S) among six bad ones (2 random, 2 permuted, 2 unrelated)",
    "duplicates": "Duplicates: the honest pool plus two copies of teacher-M",
    **{
        f"swap-{k}": f"Label-swapped teachers (the honest three, labels cycled among the same {k} of 10 classes)"
        for k in (4, 5, 6, 7, 8)
    },
}
BAD_ROLES = ("random", "permuted", "unrelated")

FULL = {"results_dir": "results/robustness", "seeds": [0, 1, 2, 3, 4], "max_steps": 250}
QUICK = {"results_dir": "results/robustness_quick", "seeds": [0], "max_steps": 80}


# ------------------------------------------------------------------------------------------------ what runs


@dataclass
class Spec:
    """What every run of one report shares (the benchmark's settings by default: batch 32 + 64, lr 3e-3)."""

    dataset_template: str = "digits-ld:{setting}"
    setting: str = "MUS"
    labeled_per_class: int = 10
    train: dict = field(default_factory=lambda: {"max_steps": 250, "batch_size": 32, "unlabeled_batch_size": 64})
    student_spec: dict | None = None
    threads: int = 1
    guard_folds: int = 3
    guard_repeats: int = 2
    guard_margin: float = 0.02
    # the sequential guard (stops once settled); off by default so that the records of the full guard still match
    guard_sequential: bool = False
    cache_dir: str | None = None

    def __post_init__(self):
        bad = {"method", "seed"} & set(self.train)
        if bad:
            raise ValueError(f"`train` may not set {sorted(bad)}: they come from each run.")
        self.config("mrl", 0)
        if self.guard_folds < 2:
            raise ValueError(f"guard_folds must be >= 2; got {self.guard_folds}.")

    @property
    def dataset(self) -> str:
        return self.dataset_template.replace("{setting}", self.setting)

    def config(self, method: str, seed: int) -> MRLConfig:
        return MRLConfig(**{**self.train, "method": method, "seed": seed})

    def identity(self) -> dict:
        """What shapes a run besides its seed and pool (the full trainer config, defaults included)."""
        shared = self.config("mrl", 0).to_dict()
        del shared["method"], shared["seed"]
        return {
            "dataset": self.dataset,
            "labeled_per_class": self.labeled_per_class,
            "train": shared,
            "student_spec": self.student_spec,
            "threads": self.threads,
            "guard_folds": self.guard_folds,
            "guard_repeats": self.guard_repeats,
            "guard_margin": self.guard_margin,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def supervised_hash(spec: Spec) -> str:
    return _hash(spec.identity())


def pool_run_hash(spec: Spec, pool_hash: str) -> str:
    # the supervised side does not depend on the guard's stopping rule; a pool run does (only when sequential, so
    # that the full guard's hashes stay those of its records)
    extra = {"guard_sequential": True} if spec.guard_sequential else {}
    return _hash({**spec.identity(), "pool": pool_hash, **extra})


def supervised_file(spec: Spec, seed: int) -> str:
    return f"supervised__{spec.setting}__n{spec.labeled_per_class}__s{seed}__{supervised_hash(spec)}.json"


def pool_file_name(spec: Spec, pool: str, seed: int, pool_hash: str) -> str:
    return f"{pool}__{spec.setting}__n{spec.labeled_per_class}__s{seed}__{pool_run_hash(spec, pool_hash)}.json"


def _done(path: Path) -> bool:
    rec = read_json(path)
    return rec is not None and rec.get("format") == RECORD_FORMAT


# ------------------------------------------------------------------------------------------------ the pools


def resolve_pools(names: list[str], pool_files: dict[str, str] | None, pool_dir: str | None, honest: str | None):
    """{pool name: pool file}: the given files, else the hostile pools built (or reused) by `hostile`."""
    pool_files = dict(pool_files or {})
    missing = [n for n in names if n not in pool_files]
    if missing:
        from hostile import build_hostile_pools

        built = build_hostile_pools(pool_dir, honest=honest, pools=[n for n in missing if n != "honest"])
        pool_files.update({n: str(built[n]) for n in missing})
    return {n: str(pool_files[n]) for n in names}


def pool_info(pool_file: str, label_names: list[str], cache_dir: str | None) -> dict:
    """Teacher ids, roles, weight hashes and one hash of the pool's content (loads the pool in this process)."""
    from harness import load_pool, pool_identity
    from hostile import teacher_role

    pool = load_pool(pool_file, label_names, cache_dir)
    roles = [teacher_role(t.id) if os.path.isdir(t.id) else "honest" for t in pool.teachers]
    return {"file": pool_file, **pool_identity(pool), "roles": roles}


# ------------------------------------------------------------------------------------------------ one task

_DATA: dict = {}  # one dataset kept per process: (dataset, n, seed) -> TargetData


def _load_data(spec: Spec, seed: int):
    from hf_mrl.data.target import load_target

    key = (spec.dataset, spec.labeled_per_class, seed)
    if key not in _DATA:
        _DATA.clear()
        data, description = load_target(spec.dataset, spec.labeled_per_class, seed)
        _DATA[key] = (data, description)
    return _DATA[key]


def _dataset_info(spec: Spec, data, description: str, seed: int) -> dict:
    from harness import fingerprints

    return {
        "spec": spec.dataset,
        "description": description,
        "labeled_per_class": spec.labeled_per_class,
        "seed": seed,
        "num_labeled": len(data.labeled_labels),
        "num_unlabeled": len(data.unlabeled_images),
        "num_test": len(data.test_labels),
        "fingerprints": fingerprints(data),
    }


def _sha(preds: torch.Tensor) -> str:
    return hashlib.sha256(preds.to(torch.int64).numpy().tobytes()).hexdigest()


def run_supervised(spec_dict: dict, seed: int, records_dir: str) -> dict:
    """The supervised student of one seed and its side of the guard (both independent of the pool)."""
    from harness import environment

    from hf_mrl import ReuseArguments, ReuseTrainer
    from hf_mrl.guard import repeated_folds
    from hf_mrl.metrics import accuracy_report

    spec = Spec(**spec_dict)
    torch.set_num_threads(spec.threads)
    start = time.perf_counter()
    data, description = _load_data(spec, seed)
    config = spec.config("supervised", seed)
    args = ReuseArguments(
        guard_folds=spec.guard_folds,
        guard_repeats=spec.guard_repeats,
        guard_margin=spec.guard_margin,
        guard_workers=1,
        student=spec.student_spec,
        progress=False,
    )
    runner = ReuseTrainer(None, data, config, args)
    result = runner.train()
    preds = result.predictions["method"]
    report = accuracy_report(preds, data.test_labels, data.test_domains, data.domain_names)
    train_s = time.perf_counter() - start
    ok, folds = runner.supervised_guard_side(result.supervised), runner.guard_folds()
    guard = None
    if ok is not None:
        fold = repeated_folds(data.labeled_labels, folds, spec.guard_repeats, seed=seed)
        guard = {"folds": folds, "repeats": spec.guard_repeats, "fold": fold.tolist(), "correct": ok.int().tolist()}
    record = {
        "format": RECORD_FORMAT,
        "kind": "supervised",
        "key": {"setting": spec.setting, "labeled_per_class": spec.labeled_per_class, "seed": seed},
        "hash": supervised_hash(spec),
        "identity": spec.identity(),
        "config": config.to_dict(),
        "dataset": _dataset_info(spec, data, description, seed),
        "accuracy": report["accuracy"],
        "per_domain": report.get("per_domain"),
        "predictions_sha256": _sha(preds),
        "guard_side": guard,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "train_time_s": round(train_s, 2),
        "threads": spec.threads,
        "environment": environment(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(Path(records_dir) / supervised_file(spec, seed), record)
    return record


def run_pool(spec_dict: dict, pool: str, info: dict, seed: int, records_dir: str) -> dict:
    """MRL on one pool and seed, its guard (sharing the seed's supervised side), screening and attention."""
    from harness import environment, load_pool

    from hf_mrl import ReuseArguments, ReuseTrainer
    from hf_mrl.guard import repeated_folds
    from hf_mrl.metrics import accuracy_report
    from hf_mrl.training.reuse_trainer import SupervisedRun

    spec = Spec(**spec_dict)
    torch.set_num_threads(spec.threads)
    start = time.perf_counter()
    records = Path(records_dir)
    sup = read_json(records / supervised_file(spec, seed))
    if sup is None:
        raise RuntimeError(f"No supervised record for seed {seed}: run it first.")
    data, description = _load_data(spec, seed)
    model_pool = load_pool(info["file"], data.label_names, spec.cache_dir)
    config = spec.config("mrl", seed)
    side = sup.get("guard_side")
    shared = SupervisedRun()  # the seed's supervised guard side: no supervised training here
    if side is not None:
        fold = repeated_folds(data.labeled_labels, side["folds"], side["repeats"], seed=seed)
        if fold.tolist() != side["fold"]:
            raise RuntimeError("The supervised record's guard folds differ from this data's: stale record?")
        shared.guard_correct[(side["folds"], side["repeats"])] = torch.tensor(side["correct"], dtype=torch.bool)
    folds = side["folds"] if side is not None else 0
    args = ReuseArguments(
        guard_folds=folds,
        guard_repeats=spec.guard_repeats,
        guard_margin=spec.guard_margin,
        guard_sequential=spec.guard_sequential,
        guard_workers=1,
        student=spec.student_spec,
        progress=False,
    )
    runner = ReuseTrainer(model_pool, data, config, args)
    runner.compute_teacher_outputs()
    prep_s = time.perf_counter() - start
    result = runner.train(supervised=shared)
    preds = result.predictions["method"]
    mrl = accuracy_report(preds, data.test_labels, data.test_domains, data.domain_names)
    every = max(1, config.max_steps // 10)
    trace = [
        [i + 1, h["reuse_strength"]]
        for i, h in enumerate(result.history)
        if "reuse_strength" in h and ((i + 1) % every == 0 or i == 0)
    ]
    mrl_s = time.perf_counter() - start - prep_s
    guard = None if result.guard is None else result.guard.to_dict()
    fell_back = result.delivered == "supervised"
    delivered = sup["accuracy"] if fell_back else mrl["accuracy"]
    teacher_acc = list(result.metrics["teacher_accuracy"].values())
    record = {
        "format": RECORD_FORMAT,
        "kind": "pool",
        "key": {"pool": pool, "setting": spec.setting, "labeled_per_class": spec.labeled_per_class, "seed": seed},
        "hash": pool_run_hash(spec, info["hash"]),
        "supervised_hash": supervised_hash(spec),
        "identity": spec.identity(),
        "config": config.to_dict(),
        "dataset": _dataset_info(spec, data, description, seed),
        "pool": info,
        "supervised_accuracy": sup["accuracy"],
        "mrl_accuracy": mrl["accuracy"],
        "mrl_per_domain": mrl.get("per_domain"),
        "mrl_predictions_sha256": _sha(preds),
        "delivered": "supervised" if fell_back else "reuse",
        "delivered_accuracy": delivered,
        "guard": guard,
        "reuse_strength": result.metrics["reuse_strength"],
        "reuse_strength_trace": trace,
        "reuser_accuracy": result.metrics.reuser_accuracy,
        "attention_mean": result.reuse_weights.mean(0).tolist(),
        "teacher_accuracy": teacher_acc,
        "screening": result.metrics["screening"],
        "wall_time_s": round(time.perf_counter() - start, 2),
        "time_s": {"prepare": round(prep_s, 2), "mrl": round(mrl_s, 2)},
        "threads": spec.threads,
        "environment": environment(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(records / pool_file_name(spec, pool, seed, info["hash"]), record)
    return record


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    from harness import quiet_progress_bars

    quiet_progress_bars()


# ------------------------------------------------------------------------------------------------ many runs


def run_all(
    spec: Spec,
    pools: dict[str, str],
    seeds: list[int],
    results_dir: str | os.PathLike,
    workers: int = 1,
    log=print,
    argv=None,
) -> dict:
    """Every missing record: the supervised student of each seed first, then that seed's pools.

    Returns `{"ran": n, "skipped": n, "wall_time_s": s}`.
    """
    from hf_mrl.data.target import check_target

    results = Path(results_dir)
    records = results / RECORDS_DIR
    records.mkdir(parents=True, exist_ok=True)
    start = time.time()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    label_names = check_target(spec.dataset, spec.labeled_per_class)
    infos = {name: pool_info(f, label_names, spec.cache_dir) for name, f in pools.items()}
    sup_todo = [s for s in seeds if not _done(records / supervised_file(spec, s))]
    pool_todo = {
        s: [p for p in pools if not _done(records / pool_file_name(spec, p, s, infos[p]["hash"]))] for s in seeds
    }
    total = len(sup_todo) + sum(len(v) for v in pool_todo.values())
    skipped = len(seeds) * (1 + len(pools)) - total
    log(f"robustness: {len(pools)} pool(s) x {len(seeds)} seed(s): {skipped} recorded, {total} to run ({workers} w.)")
    spec_dict = spec.to_dict()
    finished = 0

    def report(what: str, rec: dict) -> None:
        nonlocal finished
        finished += 1
        elapsed = time.time() - start
        if rec["kind"] == "supervised":
            text = f"supervised {100 * rec['accuracy']:.1f}%"
        else:
            g = rec["guard"]
            text = (
                f"MRL {100 * rec['mrl_accuracy']:.1f}%, delivered {100 * rec['delivered_accuracy']:.1f}% "
                f"(supervised {100 * rec['supervised_accuracy']:.1f}%), guard {g['decision'] if g else 'off'}, "
                f"s {rec['reuse_strength']:.2f}"
            )
        log(f"[{finished}/{total}] {what}: {text}  ({rec['wall_time_s']:.0f} s; elapsed {elapsed / 60:.1f} min)")

    pool_args = {s: [(spec_dict, p, infos[p], s, str(records)) for p in pool_todo[s]] for s in seeds}
    try:
        if workers <= 1:
            before = torch.get_num_threads()
            try:
                for s in seeds:
                    if s in sup_todo:
                        report(f"supervised seed {s}", run_supervised(spec_dict, s, str(records)))
                    for a in pool_args[s]:
                        report(f"{a[1]} seed {s}", run_pool(*a))
            finally:
                torch.set_num_threads(before)
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(spec.threads,)
            ) as ex:
                futures = {}
                for s in seeds:
                    if s in sup_todo:
                        futures[ex.submit(run_supervised, spec_dict, s, str(records))] = ("sup", s)
                    else:
                        futures.update({ex.submit(run_pool, *a): (a[1], s) for a in pool_args[s]})
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in done:
                        what, s = futures.pop(fut)
                        rec = fut.result()  # raises a worker's error
                        report(f"supervised seed {s}" if what == "sup" else f"{what} seed {s}", rec)
                        if what == "sup":
                            futures.update({ex.submit(run_pool, *a): (a[1], s) for a in pool_args[s]})
    finally:
        wall = time.time() - start
        if total:
            timing = read_json(results / TIMING_FILE) or {"invocations": []}
            timing["invocations"].append(
                {
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
                    "wall_time_s": round(wall, 1),
                    "runs": finished,
                    "workers": workers,
                    "threads": spec.threads,
                    "cpus": os.cpu_count(),
                    "load_average_at_start": load_start,
                    "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "argv": list(argv) if argv is not None else None,
                    "supervised_hash": supervised_hash(spec),
                }
            )
            write_json(results / TIMING_FILE, timing)
    log(f"ran {finished} task(s) in {wall / 60:.2f} min")
    return {"ran": finished, "skipped": skipped, "wall_time_s": wall}


# ------------------------------------------------------------------------------------------------ the report


def load_records(results_dir: str | os.PathLike, spec: Spec) -> tuple[dict[int, dict], dict[str, dict[int, dict]]]:
    """({seed: supervised record}, {pool: {seed: record}}) of this spec; per pool, the newest pool content only."""
    sup, runs = {}, {}
    target = supervised_hash(spec)
    for path in sorted((Path(results_dir) / RECORDS_DIR).glob("*.json")):
        rec = read_json(path)
        if not rec or rec.get("format") != RECORD_FORMAT:
            continue
        if rec["kind"] == "supervised" and rec["hash"] == target:
            sup[rec["key"]["seed"]] = rec
        elif rec["kind"] == "pool" and rec["supervised_hash"] == target:
            runs.setdefault(rec["key"]["pool"], []).append(rec)
    newest = {}
    for pool, recs in runs.items():
        latest = max(recs, key=lambda r: r["finished_at"])["pool"]["hash"]
        newest[pool] = {r["key"]["seed"]: r for r in recs if r["pool"]["hash"] == latest}
    return sup, newest


def _stats(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n, "min": min(values, default=float("nan"))}


_FLAG_CODES = (
    ("no better than chance", "chance"),
    ("almost no information", "uninformative"),
    ("label order", "label-order?"),
    ("covers only", "partial-coverage"),
    ("duplicates teacher", "duplicate"),
)


def flag_codes(flags: list[str]) -> list[str]:
    """Short names of screening flags."""
    return [next((code for text, code in _FLAG_CODES if text in f), f) for f in flags]


def summarise(
    sup: dict[int, dict], runs: dict[str, dict[int, dict]], seeds: list[int] | None = None, margin: float = 0.02
) -> dict:
    """Per pool: accuracies (points), the acceptance criterion, and how often each mechanism acted."""
    seeds = sorted(seeds if seeds is not None else sup)
    sup_acc = {s: 100 * sup[s]["accuracy"] for s in seeds if s in sup}
    noise = _stats(list(sup_acc.values()))["std"]
    pools = {}
    order = POOLS + SWAP_POOLS
    for name in [p for p in order if p in runs] + sorted(set(runs) - set(order)):
        recs = [runs[name][s] for s in seeds if s in runs[name]]
        if not recs:
            continue
        roles = recs[0]["pool"]["roles"]
        ids = recs[0]["pool"]["ids"]
        bad = [k for k, r in enumerate(roles) if r in BAD_ROLES]
        per_seed = []
        for r in recs:
            g = r["guard"]
            att = r["attention_mean"]
            per_seed.append(
                {
                    "seed": r["key"]["seed"],
                    "supervised": 100 * r["supervised_accuracy"],
                    "mrl": 100 * r["mrl_accuracy"],
                    "delivered": 100 * r["delivered_accuracy"],
                    "delta": 100 * (r["delivered_accuracy"] - r["supervised_accuracy"]),
                    "mrl_delta": 100 * (r["mrl_accuracy"] - r["supervised_accuracy"]),
                    "decision": g["decision"] if g else "off",
                    "guard_gain": 100 * g["gain"] if g else None,
                    "guard_loss_upper": 100 * g["loss_upper"] if g else None,
                    "guard_trainings": g.get("trainings") if g else None,
                    # what the sequential guard decides on this evidence (replayed on a full-guard record)
                    "sequential": _sequential_of(g),
                    "guard_harmful_clusters": [c["cluster"] for c in g.get("clusters", []) if c["harmful"]]
                    if g
                    else [],
                    "true_loss": 100 * (r["supervised_accuracy"] - r["mrl_accuracy"]),
                    "s": r["reuse_strength"],
                    "attention_bad": sum(att[k] for k in bad),
                    "reuser": 100 * r["reuser_accuracy"],
                }
            )
        flags = {}
        for k in range(len(ids)):
            codes = {}
            for r in recs:
                for c in flag_codes(r["screening"][k]["flags"]):
                    codes[c] = codes.get(c, 0) + 1
            flags[k] = codes
        teachers = [
            {
                "id": tid,
                "name": Path(tid.split("@")[0].rstrip("/")).name,
                "role": roles[k],
                "test_accuracy": 100 * sum(r["teacher_accuracy"][k] for r in recs) / len(recs),
                "attention": sum(r["attention_mean"][k] for r in recs) / len(recs),
                "flags": flags[k],
            }
            for k, tid in enumerate(ids)
        ]
        deltas = [p["delta"] for p in per_seed]
        flagged_bad = sum(1 for r in recs for k in bad if r["screening"][k]["flags"])
        flagged_honest = sum(
            1 for r in recs for k, role in enumerate(roles) if role == "honest" and r["screening"][k]["flags"]
        )
        honest_count = sum(1 for role in roles if role == "honest")
        fell_back = sum(p["decision"] == "fall_back" for p in per_seed)
        entry = {
            "title": POOL_TITLES.get(name, name),
            "seeds": [p["seed"] for p in per_seed],
            "per_seed": per_seed,
            "teachers": teachers,
            "supervised": _stats([p["supervised"] for p in per_seed]),
            "mrl": _stats([p["mrl"] for p in per_seed]),
            "delivered": _stats([p["delivered"] for p in per_seed]),
            "worst_delta": min(deltas),
            "mean_delta": sum(deltas) / len(deltas),
            "fell_back": fell_back,
            "guard_ran": sum(p["decision"] != "off" for p in per_seed),
            "guard_trainings": _trainings_stats([p["guard_trainings"] for p in per_seed]),
            "sequential_trainings": _trainings_stats([(p["sequential"] or {}).get("trainings") for p in per_seed]),
            "sequential_differs": [
                {"seed": p["seed"], "full": p["decision"], **p["sequential"]}
                for p in per_seed
                if p["sequential"] and p["sequential"]["decision"] != p["decision"]
            ],
            "s": _stats([p["s"] for p in per_seed]),
            "s_below_half": sum(p["s"] < 0.5 for p in per_seed),
            "attention_bad": _stats([p["attention_bad"] for p in per_seed]) if bad else None,
            "uniform_bad_share": len(bad) / len(roles) if bad else None,
            "screening_bad_flagged": [flagged_bad, len(bad) * len(recs)],
            "screening_honest_flagged": [flagged_honest, honest_count * len(recs)],
        }
        entry["criterion"] = _criterion(name, entry, noise, margin)
        pools[name] = entry
    out = {"seeds": seeds, "supervised": sup_acc, "noise": noise, "margin": margin, "pools": pools}
    out["power"] = power_curve(pools)
    out["acceptance"] = acceptance(out)
    return out


def _sequential_of(g: dict | None) -> dict | None:
    """The sequential guard's decision and cost for a record: its own (a sequential run), or the replay that a full
    run records (`GuardReport.sequential_replay`); None for records older than the replay."""
    if not g:
        return None
    if g.get("rule") == "sequential":
        return {k: g[k] for k in ("decision", "looks", "trainings", "loss_upper")}
    replay = g.get("sequential_replay")
    return None if replay is None else {k: replay[k] for k in ("decision", "looks", "trainings", "loss_upper")}


def _trainings_stats(values: list) -> dict | None:
    """Mean and max of the guard's student trainings per pool-seed pair (None when the guard did not run)."""
    values = [v for v in values if v is not None]
    return {"mean": sum(values) / len(values), "max": max(values)} if values else None


def _trainings_note(stats: dict | None) -> str:
    return "" if not stats else f"; guard student trainings per seed {stats['mean']:.1f} mean, {stats['max']} max"


def _sequential_note(p: dict) -> str:
    stats = p.get("sequential_trainings")
    if not stats:
        return ""
    differs = p.get("sequential_differs") or []
    what = (
        "; ".join(
            f"seed {d['seed']}: {d['full']} -> {d['decision']} at look {d['looks']} (bound {100 * d['loss_upper']:+.1f})"
            for d in differs
        )
        or "no decision differs"
    )
    return f"; the sequential guard on the same folds: {stats['mean']:.1f} mean, {stats['max']} max trainings, {what}"


def loss_level(loss: float) -> int | None:
    """The nominal loss level (points) a measured true loss falls nearest to; None for a gain (loss < -1)."""
    if loss < -LOSS_EDGES[0]:
        return None
    for level, edge in zip(LOSS_LEVELS, LOSS_EDGES, strict=False):
        if loss < edge:
            return level
    return LOSS_LEVELS[-1]


def power_curve(pools: dict) -> list[dict]:
    """Share of (pool, seed) pairs the guard caught (fell back on), by the MRL student's measured true loss against
    Supervised on the test split (binned to the nearest of `LOSS_LEVELS`; gains in their own row)."""
    rows = []
    pairs = [(name, q) for name, p in pools.items() for q in p["per_seed"] if q["decision"] != "off"]
    for level in (None, *LOSS_LEVELS):
        hits = [(n, q) for n, q in pairs if loss_level(q["true_loss"]) == level]
        caught = sum(q["decision"] == "fall_back" for _, q in hits)
        rows.append(
            {
                "level": level,
                "pairs": len(hits),
                "caught": caught,
                "rate": caught / len(hits) if hits else None,
                "mean_loss": sum(q["true_loss"] for _, q in hits) / len(hits) if hits else None,
                "pools": sorted({n for n, _ in hits}),
            }
        )
    return rows


def acceptance(summary: dict) -> list[dict]:
    """Issue 13's three checks on the guard, from the summary."""
    pools, noise, margin = summary["pools"], summary["noise"], summary["margin"]
    out = []
    if "honest" in pools:
        h = pools["honest"]
        out.append(
            {
                "check": "the honest pool keeps on every seed",
                "ok": h["fell_back"] == 0,
                "evidence": f"kept on {len(h['per_seed']) - h['fell_back']}/{len(h['per_seed'])} seeds",
            }
        )
    five = next(r for r in summary["power"] if r["level"] == 5)
    out.append(
        {
            "check": "catch rate >= 80% at a ~5-point loss",
            "ok": None if not five["pairs"] else five["rate"] >= 0.8,
            "evidence": f"{five['caught']}/{five['pairs']} pairs caught" if five["pairs"] else "no pair in that bin",
        }
    )
    bound = 100 * margin + noise if math.isfinite(noise) else float("nan")
    worst = [(n, q) for n, p in pools.items() for q in p["per_seed"]]
    below = [f"{n} seed {q['seed']} ({q['delta']:+.1f})" for n, q in worst if q["delta"] < -bound]
    out.append(
        {
            "check": "no (pool, seed) delivers below Supervised by more than margin + Supervised's seed std",
            "ok": None if not math.isfinite(bound) else not below,
            "evidence": f"bound -{bound:.1f} points; worst delivered - supervised "
            f"{min((q['delta'] for _, q in worst), default=float('nan')):+.1f}"
            + (": " + ", ".join(below) if below else ""),
        }
    )
    return out


def _criterion(name: str, entry: dict, noise: float, margin: float = 0.0) -> dict:
    """Pass / fail of the acceptance criterion (see `CRITERION`)."""
    if name == "honest":
        ok = entry["fell_back"] == 0
        return {
            "ok": ok,
            "evidence": f"guard kept the reuse student on {len(entry['per_seed']) - entry['fell_back']}/"
            f"{len(entry['per_seed'])} seeds; mean gain {entry['mean_delta']:+.1f} points",
        }
    if not math.isfinite(noise):
        return {"ok": None, "evidence": "needs >= 2 seeds of Supervised to measure its noise"}
    bound = noise + 100 * margin
    below = [p for p in entry["per_seed"] if p["delta"] < -bound]
    return {
        "ok": not below,
        "evidence": f"worst delivered - supervised {entry['worst_delta']:+.1f} vs -(margin + noise) {-bound:.1f}"
        + (": below on seed(s) " + ", ".join(str(p["seed"]) for p in below) if below else ""),
    }


CRITERION = (
    "**Acceptance criterion.** Let sigma be the sample standard deviation (n - 1) over the report's seeds of the "
    "Supervised student's test accuracy (the same student for every pool at a given seed; its records are shared). "
    "A hostile pool **passes** when, on *every* seed, delivered - supervised >= -(margin + sigma), with the guard's "
    "non-inferiority margin in points, where *delivered* is the "
    "student the recipe ships: the MRL student, or the Supervised one when the guard falls back. The honest pool "
    "**passes** when the guard keeps the MRL student on every seed (it never throws the gain away)."
)


def _pm(stat: dict | None, digits: int = 1) -> str:
    if not stat or not math.isfinite(stat["mean"]):
        return "-"
    if stat["n"] > 1 and math.isfinite(stat["std"]):
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def _verdict(c: dict) -> str:
    return "n/a" if c["ok"] is None else ("**pass**" if c["ok"] else "**FAIL**")


def render_markdown(summary: dict, spec_identity: dict, timing: dict | None, command: str | None) -> str:
    s, lines = summary, []
    train = spec_identity["train"]
    lines.append("# Robustness of MRL to hostile teacher pools\n")
    lines.append(
        f"Target: `{spec_identity['dataset']}`, {spec_identity['labeled_per_class']} labels per class; seeds "
        f"{s['seeds']}. Every student: the same `MRLConfig` but `method` (max_steps {train['max_steps']}, batch "
        f"{train['batch_size']} labeled + {train['unlabeled_batch_size']} unlabeled, lr {train['learning_rate']}, "
        f"learned reuse strength {train['learn_reuse_strength']} from s = {train['reuse_strength_init']}), "
        f"{spec_identity['threads']} torch thread(s) per run. Guard: {spec_identity.get('guard_repeats', 1)} x "
        f"{spec_identity['guard_folds']}-fold stratified cross-validation of MRL against Supervised on the labeled "
        f"data; non-inferiority at margin {100 * spec_identity.get('guard_margin', 0):.1f} points: MRL is kept only "
        "when the 95% upper bound of its loss (Nadeau-Bengio corrected resampled t) is below the margin and no "
        "latent psi cluster shows a loss confidently above it, as `recipes/train_mrl.py` by default "
        f"(`--guard_folds {spec_identity['guard_folds']} --guard_repeats {spec_identity.get('guard_repeats', 1)} "
        f"--guard_margin {spec_identity.get('guard_margin', 0)}`). Test accuracy in %.\n"
    )
    noise = s["noise"]
    sup_line = ", ".join(f"seed {k}: {v:.1f}" for k, v in s["supervised"].items())
    lines.append(
        f"Supervised (shared by every pool): {sup_line}; seed-to-seed std sigma = {noise:.2f} points.\n"
        if math.isfinite(noise)
        else f"Supervised (shared by every pool): {sup_line}; sigma needs >= 2 seeds.\n"
    )
    lines.append(CRITERION + "\n")
    if s.get("power"):
        lines.append("## The guard's power curve\n")
        lines.append(
            "Each (pool, seed) pair's *true loss* is Supervised's test accuracy minus the MRL student's (points, "
            "measured on the test split, which the guard never sees); pairs are binned to the nearest nominal level "
            "(edges " + ", ".join(f"{e:g}" for e in LOSS_EDGES) + "; a loss below -1 is a gain). *Caught*: the guard "
            "fell back. Pools of graded harm: `swap-k` (the honest teachers with labels cycled among k classes), "
            "`permuted` (all 10).\n"
        )
        lines.append("| true loss (nominal) | pairs | caught | catch rate | mean true loss | pools |")
        lines.append("| --- | ---: | ---: | ---: | ---: | --- |")
        for r in s["power"]:
            name = "gain (< -1)" if r["level"] is None else f"~{r['level']}"
            rate = "-" if r["rate"] is None else f"{100 * r['rate']:.0f}%"
            ml = "-" if r["mean_loss"] is None else f"{r['mean_loss']:+.1f}"
            lines.append(f"| {name} | {r['pairs']} | {r['caught']} | {rate} | {ml} | {', '.join(r['pools'])} |")
        lines.append("\n**Acceptance (issue 13).**\n")
        for a in s.get("acceptance", []):
            lines.append(f"- {a['check']}: {_verdict(a)} ({a['evidence']})")
        lines.append("")
    lines.append("## Overview\n")
    lines.append(
        "| pool | Supervised | MRL | delivered | worst delivered - sup. | guard fell back | mean s (s < 0.5) | "
        "attention on bad teachers (uniform) | bad teachers flagged | honest flagged | criterion |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, p in s["pools"].items():
        att = (
            f"{p['attention_bad']['mean']:.2f} ({p['uniform_bad_share']:.2f})"
            if p["attention_bad"] is not None
            else "-"
        )
        bad_f = (
            f"{p['screening_bad_flagged'][0]}/{p['screening_bad_flagged'][1]}"
            if p["screening_bad_flagged"][1]
            else "-"
        )
        hon_f = (
            f"{p['screening_honest_flagged'][0]}/{p['screening_honest_flagged'][1]}"
            if p["screening_honest_flagged"][1]
            else "-"
        )
        lines.append(
            f"| {name} | {_pm(p['supervised'])} | {_pm(p['mrl'])} | {_pm(p['delivered'])} | {p['worst_delta']:+.1f} | "
            f"{p['fell_back']}/{p['guard_ran']} | {p['s']['mean']:.2f} ({p['s_below_half']}/{len(p['per_seed'])}) | "
            f"{att} | {bad_f} | {hon_f} | {_verdict(p['criterion'])} |"
        )
    lines.append(
        "\nBad teachers: roles random, permuted and unrelated. *Attention on bad teachers*: the MRL reuser's mean "
        "weight on them over the test samples (summed over the bad teachers), next to their share under uniform "
        "weights. *Flagged*: teacher x seed pairs with at least one screening flag (`hf_mrl.pool.screening`, LEEP and "
        "accuracy on the labeled data); screening only reports, it drops no teacher.\n"
    )
    lines.append(f"![delivered - supervised per pool and seed]({FIGURE})\n")
    for name, p in s["pools"].items():
        lines.append(f"## {name}: {p['title']}\n")
        lines.append(f"Criterion: {_verdict(p['criterion'])} ({p['criterion']['evidence']}).\n")
        lines.append(
            f"Supervised {_pm(p['supervised'])}, MRL {_pm(p['mrl'])}, delivered {_pm(p['delivered'])} "
            f"(mean ± std over {len(p['per_seed'])} seed(s)); worst per-seed delivered - supervised "
            f"{p['worst_delta']:+.1f}; Supervised seed-to-seed std {_num(noise, 2)}; guard fell back on "
            f"{p['fell_back']}/{p['guard_ran']} seed(s); final reuse strength s {_pm(p['s'], 2)}"
            + _trainings_note(p.get("guard_trainings"))
            + _sequential_note(p)
            + ".\n"
        )
        lines.append(
            "| seed | Supervised | MRL | delivered | delivered - sup. | guard (CV gain, loss bound) | s | attention on bad | "
            "reuser |"
        )
        lines.append("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
        for q in p["per_seed"]:
            g = (
                f"{q['decision']} ({q['guard_gain']:+.1f}, {q['guard_loss_upper']:+.1f})"
                if q["guard_gain"] is not None
                else q["decision"]
            )
            ab = f"{q['attention_bad']:.2f}" if p["attention_bad"] is not None else "-"
            lines.append(
                f"| {q['seed']} | {q['supervised']:.1f} | {q['mrl']:.1f} | {q['delivered']:.1f} | {q['delta']:+.1f} | "
                f"{g} | {q['s']:.2f} | {ab} | {q['reuser']:.1f} |"
            )
        lines.append("\n| teacher | role | test accuracy | mean attention | screening flags (seeds) |")
        lines.append("| --- | --- | ---: | ---: | --- |")
        for t in p["teachers"]:
            flags = ", ".join(f"{c} ({k}/{len(p['per_seed'])})" for c, k in t["flags"].items()) or "none"
            lines.append(f"| {t['name']} | {t['role']} | {t['test_accuracy']:.1f} | {t['attention']:.2f} | {flags} |")
        lines.append("")
    lines.append("## Cost\n")
    if timing and timing.get("invocations"):
        inv = timing["invocations"]
        last = inv[-1]
        lines.append(
            f"Measured wall time: {sum(i['wall_time_s'] for i in inv) / 60:.1f} min over {len(inv)} invocation(s) "
            f"({sum(i['runs'] for i in inv)} tasks; last: {last['workers']} worker(s) x {last['threads']} thread(s) on "
            f"{last['cpus']} CPUs, load average {last.get('load_average_at_start')} at its start).\n"
        )
    if command:
        lines.append(f"Command:\n\n```bash\n{command}\n```\n")
    lines.append(
        f"Records: `{RECORDS_DIR}/` (one JSON per pool and seed, one per seed for Supervised and its guard side); "
        "`summary.json` holds these tables as data.\n"
    )
    return "\n".join(lines)


def plot(summary: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = list(summary["pools"])
    noise = summary["noise"]
    fig, ax = plt.subplots(figsize=(1.4 * len(pools) + 3, 4.5))
    if math.isfinite(noise):
        ax.axhspan(-noise, noise, color="0.85", label=f"Supervised noise band (± {noise:.1f})")
    ax.axhline(0, color="0.4", linewidth=0.8)
    for i, name in enumerate(pools):
        per = summary["pools"][name]["per_seed"]
        xs = [i + (j - (len(per) - 1) / 2) * 0.08 for j in range(len(per))]
        ax.scatter(xs, [q["mrl_delta"] for q in per], facecolors="none", edgecolors="tab:blue")
        colours = ["tab:red" if q["decision"] == "fall_back" else "black" for q in per]
        ax.scatter(xs, [q["delta"] for q in per], c=colours, marker="x")
    ax.scatter([], [], facecolors="none", edgecolors="tab:blue", label="MRL student - supervised")
    ax.scatter([], [], c="black", marker="x", label="delivered - supervised (guard kept MRL)")
    ax.scatter([], [], c="tab:red", marker="x", label="delivered - supervised (guard fell back)")
    ax.set_xlim(-0.5, len(pools) - 0.5)
    ax.margins(y=0.12)
    ax.set_yscale("symlog", linthresh=max(2 * noise, 1.0) if math.isfinite(noise) else 1.0)
    ax.set_xticks(range(len(pools)))
    ax.set_xticklabels(pools)
    ax.set_ylabel("test accuracy difference (points, symlog)")
    ax.set_title("Delivered student minus Supervised, per pool and seed")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results_dir: str | os.PathLike, spec: Spec, seeds: list[int], command: str | None = None) -> dict:
    """Render report.md, summary.json and the PNG from the records; returns the summary."""
    results = Path(results_dir)
    sup, runs = load_records(results, spec)
    if not sup or not runs:
        raise ValueError(f"No robustness records in {results / RECORDS_DIR} for this configuration.")
    summary = summarise(sup, runs, [s for s in seeds if s in sup], margin=spec.guard_margin)
    timing = read_json(results / TIMING_FILE)
    if timing:
        timing = {
            "invocations": [i for i in timing["invocations"] if i.get("supervised_hash") == supervised_hash(spec)]
        }
    summary["identity"] = spec.identity()
    summary["command"] = command
    plot(summary, results / FIGURE)
    (results / REPORT).write_text(render_markdown(summary, spec.identity(), timing, command))
    write_json(results / "summary.json", summary)
    return summary


# ------------------------------------------------------------------------------------------------ command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seed 0, 80 steps, into results/robustness_quick/")
    p.add_argument("--results_dir", help=f"default {FULL['results_dir']} ({QUICK['results_dir']} with --quick)")
    p.add_argument(
        "--pools", type=csv_arg(str), default=list(POOLS), help=f"comma-separated (default: {','.join(POOLS)})"
    )
    p.add_argument("--seeds", type=csv_arg(int), help="comma-separated (default 0,1,2,3,4; quick 0)")
    p.add_argument("--setting", default="MUS")
    p.add_argument("--labeled_per_class", type=int, default=10)
    p.add_argument(
        "--max_steps", type=int, help=f"per student (default {FULL['max_steps']}, quick {QUICK['max_steps']})"
    )
    p.add_argument("--batch_size", type=int, default=32, help="labeled per step (the benchmark's)")
    p.add_argument("--unlabeled_batch_size", type=int, default=64, help="unlabeled per step (the benchmark's)")
    p.add_argument("--guard_folds", type=int, default=3)
    p.add_argument("--guard_repeats", type=int, default=2)
    p.add_argument("--guard_margin", type=float, default=0.02, help="non-inferiority margin (accuracy)")
    p.add_argument(
        "--guard_sequential", action="store_true", help="the sequential guard (stops once settled; new records)"
    )
    p.add_argument("--config", type=json.loads, default={}, help="other MRLConfig fields as JSON")
    p.add_argument("--student", type=json.loads, help="student spec JSON (default: the library's student)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (results do not depend on it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (recorded)")
    p.add_argument("--dataset_template", default="digits-ld:{setting}")
    p.add_argument(
        "--pool_files",
        type=json.loads,
        default={},
        help='JSON {pool name: pool file} to use instead of the built pools, e.g. \'{"honest": "hub-ids.txt"}\'',
    )
    p.add_argument("--pool_dir", help="where hostile pools are built (default $HF_MRL_CACHE/robustness_pools_v1)")
    p.add_argument("--honest_pool", help="pool file of teacher-<domain> folders (default: the Digits-LD pool)")
    p.add_argument("--cache_dir", help="teacher-output cache (default: $HF_MRL_CACHE/logits)")
    p.add_argument("--render_only", action="store_true", help="only rebuild the report from the records")
    args = p.parse_args(argv)
    apply_preset(p, args, QUICK if args.quick else FULL)
    if args.guard_folds < 2:
        p.error("--guard_folds must be >= 2.")
    if not args.seeds:
        p.error("--seeds: give at least one seed.")
    return args


def make_spec(args: argparse.Namespace) -> Spec:
    return Spec(
        dataset_template=args.dataset_template,
        setting=args.setting,
        labeled_per_class=args.labeled_per_class,
        train={
            **args.config,
            "max_steps": args.max_steps,
            "batch_size": args.batch_size,
            "unlabeled_batch_size": args.unlabeled_batch_size,
        },
        student_spec=args.student,
        threads=args.threads,
        guard_folds=args.guard_folds,
        guard_repeats=args.guard_repeats,
        guard_margin=args.guard_margin,
        guard_sequential=args.guard_sequential,
        cache_dir=args.cache_dir,
    )


def main(argv=None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from harness import quiet_progress_bars

    quiet_progress_bars()
    try:
        spec = make_spec(args)
    except ValueError as err:
        sys.exit(f"error: {err}")
    command = "python benchmarks/robustness.py " + " ".join(shlex.quote(a) for a in argv if a != "--render_only")
    if not args.render_only:
        pools = resolve_pools(args.pools, args.pool_files, args.pool_dir, args.honest_pool)
        run_all(spec, pools, args.seeds, args.results_dir, workers=args.workers, argv=argv)
    summary = write_report(args.results_dir, spec, args.seeds, command=command.strip())
    for name, p in summary["pools"].items():
        print(f"{name:>11}: {_verdict(p['criterion']).strip('*'):4}  {p['criterion']['evidence']}")
    print(f"report: {Path(args.results_dir) / REPORT}")
    return summary


if __name__ == "__main__":
    main()
