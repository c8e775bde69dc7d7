"""The paper's evaluation: methods x settings x seeds, a labeled-budget curve, and the learned attention.

Each run (method, setting, labels per class, seed) trains one student with `hf_mrl.ReuseTrainer` and writes one JSON
record, named by its key and by a hash of everything else that shapes it (trainer config, student, pool, data
template, torch threads), written atomically. A benchmark that is stopped and started again skips the runs that
have a record, and `rerun_record` re-executes any record and checks that it reproduces it exactly.

The runs of one dataset (setting, labels per class, seed) share the data and the teachers' outputs, which
`ModelPool(cache_dir=...)` keeps on disk; every method gets the same `MRLConfig` but for `method`. Runs go to
worker processes with a fixed number of torch threads each, so a result never depends on how many workers ran.

    spec = BenchmarkSpec(train={"max_steps": 300})
    keys = plan_runs(methods=["supervised", "mrl"], settings=["MUS"], seeds=[0])
    run_benchmark(spec, keys, "results/digits_ld")
    write_report("results/digits_ld", spec)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_mrl.training.config import MRLConfig
from hf_mrl.training.strategies import METHODS
from hf_mrl.utils import atomic_write_json, cache_root, torch_threads

__all__ = [
    "BUDGETS",
    "BenchmarkSpec",
    "METHODS",
    "REFERENCE_METHODS",
    "RunKey",
    "SETTINGS",
    "load_records",
    "plan_runs",
    "rerun_record",
    "run_benchmark",
    "summarise",
    "write_report",
]

logger = logging.getLogger(__name__)

SETTINGS = ("M", "U", "S", "MU", "MS", "US", "MUS")
BUDGETS = (2, 5, 10, 20, 50)
SEEDS = (0, 1, 2, 3, 4)
REFERENCE_METHODS = ("oracle",)  # reads domain labels: a ceiling, shown apart, never ranked
METHOD_NAMES = {
    "supervised": "Supervised",
    "pl": "PL",
    "mean-teacher": "TE (mean teacher)",
    "vat": "VAT",
    "fixmatch": "FixMatch",
    "mr-bs": "MR-BS",
    "mr-cr": "MR-CR",
    "mrl": "MRL",
    "oracle": "Oracle routing",
}
RECORD_FORMAT = "hf_mrl-benchmark-run-1"
RECORDS_DIR = "records"  # not `runs/`: .gitignore drops every folder of that name
TIMING_FILE = "timing.json"
PAPER_MRL_GAIN = 13.1  # the paper's digits result: MRL's average gain over Supervised, in points


# ------------------------------------------------------------------------------------------------ what runs


@dataclass
class BenchmarkSpec:
    """Everything the runs of one benchmark share.

    Args:
        dataset_template: the `load_target` spec of a setting, `{setting}` replaced (a folder path works too).
        pool_file: the teacher pool file; None builds (or reuses) the Digits-LD pool.
        cache_dir: where teacher outputs persist ($HF_MRL_CACHE/logits when None).
        train: `MRLConfig` fields shared by every run (`method` and `seed` come from each run's key).
        student_spec: `create_student` arguments; None for the default student.
        threads: torch intra-op threads of every run (results may differ across thread counts, not across workers).
        method_train: per-method `MRLConfig` fields on top of `train`, e.g. `{"fixmatch": {"unlabeled_batch_size":
            224, "eval_ema_decay": 0.999}}` (FixMatch's own mu and EMA). Part of the identity (and so of the hash
            and of every record) when not empty; an override equal to the shared value is dropped.
    """

    dataset_template: str = "digits-ld:{setting}"
    pool_file: str | None = None
    cache_dir: str | None = None
    train: dict = field(default_factory=dict)
    student_spec: dict | None = None
    threads: int = 1
    method_train: dict = field(default_factory=dict)

    def __post_init__(self):
        bad = {"method", "seed"} & set(self.train)
        if bad:
            raise ValueError(f"`train` may not set {sorted(bad)}: they come from each run's key.")
        shared = self.config("supervised", 0).to_dict()  # validates the fields
        unknown = sorted(set(self.method_train) - set(METHODS))
        if unknown:
            raise ValueError(f"`method_train` names unknown methods {unknown}; choose from {list(METHODS)}.")
        overrides = {}
        for method, changes in self.method_train.items():
            bad = {"method", "seed"} & set(changes)
            if bad:
                raise ValueError(
                    f"`method_train[{method!r}]` may not set {sorted(bad)}: they come from each run's key."
                )
            MRLConfig.from_dict({**shared, **changes, "method": method})  # validates the fields and their method
            changes = {k: v for k, v in changes.items() if v != shared[k]}
            if changes:
                overrides[method] = changes
        self.method_train = overrides
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1; got {self.threads}.")

    def config(self, method: str, seed: int) -> MRLConfig:
        return MRLConfig(**{**self.train, **self.method_train.get(method, {}), "method": method, "seed": seed})

    def dataset(self, setting: str) -> str:
        return self.dataset_template.replace("{setting}", setting)

    def identity(self) -> dict:
        """What shapes a run besides its key and the pool (the shared trainer config as a full dict, defaults
        included, and the per-method overrides)."""
        shared = self.config("supervised", 0).to_dict()
        del shared["method"], shared["seed"]
        identity = {
            "dataset_template": self.dataset_template,
            "train": shared,
            "student_spec": self.student_spec,
            "threads": self.threads,
        }
        if self.method_train:  # absent otherwise: a benchmark without overrides keeps its hash
            identity["method_train"] = self.method_train
        return identity

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True, order=True)
class RunKey:
    setting: str
    labeled_per_class: int
    seed: int
    method: str

    def filename(self, bench_hash: str) -> str:
        return f"{self.method}__{self.setting}__n{self.labeled_per_class}__s{self.seed}__{bench_hash}.json"

    @property
    def dataset_key(self) -> tuple[str, int, int]:
        return self.setting, self.labeled_per_class, self.seed


def plan_runs(
    methods: Sequence[str] = METHODS,
    settings: Sequence[str] = SETTINGS,
    seeds: Sequence[int] = SEEDS,
    labeled_per_class: int = 10,
    budgets: Sequence[int] = BUDGETS,
    budget_setting: str = "MUS",
) -> list[RunKey]:
    """The main grid (methods x settings x seeds at `labeled_per_class`) and the budget curve on `budget_setting`,
    without duplicates, grouped by dataset."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {list(METHODS)}.")
    keys = {RunKey(s, labeled_per_class, seed, m) for s in settings for seed in seeds for m in methods}
    keys |= {RunKey(budget_setting, b, seed, m) for b in budgets for seed in seeds for m in methods}
    order = {m: i for i, m in enumerate(METHODS)}
    setting_order: dict[str, int] = {}
    for s in [*settings, budget_setting]:
        setting_order.setdefault(s, len(setting_order))
    return sorted(keys, key=lambda k: (setting_order[k.setting], k.labeled_per_class, k.seed, order[k.method]))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def bench_hash(spec: BenchmarkSpec, pool_hash: str) -> str:
    return _hash({**spec.identity(), "pool": pool_hash})


# ------------------------------------------------------------------------------------------------ environment


def resolve_pool_file(spec: BenchmarkSpec) -> str:
    if spec.pool_file is not None:
        return str(spec.pool_file)
    from hf_mrl.pool.builder import build_digits_pool

    return str(build_digits_pool())


def pool_identity(pool) -> dict:
    """Teacher ids (paths or `name@commit`), their weight hashes, and one hash of the pool's content."""
    weights = [t.weights_hash or t.id for t in pool.teachers]
    return {"ids": list(pool.ids), "weights": weights, "hash": _hash(weights)}


@dataclass
class _Env:
    version: str
    git_commit: str | None
    git_dirty: bool | None
    torch: str
    python: str


_ENV: _Env | None = None


def environment() -> dict:
    """The hf_mrl version and, from a source checkout, its git commit (and whether the tree had changes)."""
    global _ENV
    if _ENV is None:
        from hf_mrl import __version__

        root = Path(__file__).resolve().parent.parent
        commit = dirty = None
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", "hf_mrl"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            dirty = bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            pass
        _ENV = _Env(__version__, commit or None, dirty, torch.__version__, platform.python_version())
    return dataclasses.asdict(_ENV)


# ------------------------------------------------------------------------------------------------ one dataset


_POOLS: dict[tuple[str, str | None, tuple[str, ...]], object] = {}


def load_pool(teachers: str | Sequence[str], label_names: list[str], cache_dir: str | None):
    """A ModelPool from a pool file or a list of ids, kept per process (loading teachers is the slow part)."""
    from hf_mrl.pool.model_pool import ModelPool, parse_pool_file

    ids = tuple(parse_pool_file(teachers)) if isinstance(teachers, (str, os.PathLike)) else tuple(teachers)
    key = (str(cache_dir), ",".join(label_names), ids)
    if key not in _POOLS:
        _POOLS[key] = ModelPool(list(ids), label_names, cache_dir=cache_dir or cache_root() / "logits")
    return _POOLS[key]


@dataclass
class _Dataset:
    spec: str
    data: object  # TargetData
    pool: object  # ModelPool
    reuse: object  # TeacherOutputs
    info: dict
    teachers: dict


def fingerprints(data) -> dict:
    from hf_mrl.pool.cache import fingerprint

    return {
        "labeled": fingerprint(data.labeled_images),
        "unlabeled": fingerprint(data.unlabeled_images),
        "test": fingerprint(data.test_images),
    }


def _teacher_table(reuse, data) -> dict:
    """Each teacher's test accuracy, overall and per latent domain."""
    preds = reuse.probs_t.argmax(-1)  # (N, K)
    correct = (preds == data.test_labels[:, None]).float()
    table = {"accuracy": correct.mean(0).tolist()}
    if data.test_domains is not None:
        names = _domain_names(data)
        table["per_domain"] = {
            names[d]: correct[data.test_domains == d].mean(0).tolist() for d in _present_domains(data.test_domains)
        }
    return table


def _present_domains(domains: torch.Tensor) -> list[int]:
    return sorted(d for d in set(domains.tolist()) if d >= 0)


def _domain_names(data) -> list[str]:
    n = int(data.test_domains.max()) + 1 if data.test_domains is not None else 0
    return list(data.domain_names) if data.domain_names else [str(d) for d in range(n)]


def prepare_dataset(spec: BenchmarkSpec, teachers, setting: str, labeled_per_class: int, seed: int) -> _Dataset:
    """Load one dataset and the teachers' outputs on it (cached on disk across runs and processes)."""
    from hf_mrl.data.target import check_target, load_target
    from hf_mrl.reuse.embedding import Embedding
    from hf_mrl.reuse.outputs import compute_teacher_outputs

    dataset = spec.dataset(setting)
    label_names = check_target(dataset, labeled_per_class)
    pool = load_pool(teachers, label_names, spec.cache_dir)
    data, description = load_target(dataset, labeled_per_class, seed)
    cache_dir = spec.cache_dir or cache_root() / "logits"
    embedding = Embedding(spec.config("mrl", seed).embedding, cache_dir=cache_dir).prepare()
    reuse = compute_teacher_outputs(pool, embedding, data)
    info = {
        "spec": dataset,
        "description": description,
        "setting": setting,
        "labeled_per_class": labeled_per_class,
        "seed": seed,
        "num_labeled": len(data.labeled_labels),
        "num_unlabeled": len(data.unlabeled_images),
        "num_test": len(data.test_labels),
        "domain_names": _domain_names(data) if data.test_domains is not None else None,
        "fingerprints": fingerprints(data),
    }
    return _Dataset(dataset, data, pool, reuse, info, _teacher_table(reuse, data))


# ------------------------------------------------------------------------------------------------ one run


def _attention(weights: torch.Tensor, data, teacher_per_domain: dict) -> dict:
    """Mean attention and argmax-teacher shares per true latent domain, and the in-domain routing rate."""
    names = _domain_names(data)
    k = weights.shape[1]
    top = weights.argmax(-1)
    mean, share, hits, total = {}, {}, 0, 0
    for d in _present_domains(data.test_domains):
        mask = data.test_domains == d
        mean[names[d]] = weights[mask].mean(0).tolist()
        share[names[d]] = torch.bincount(top[mask], minlength=k).div(int(mask.sum())).tolist()
        hits += int((top[mask] == teacher_per_domain[names[d]]).sum())
        total += int(mask.sum())
    return {
        "mean_by_domain": mean,
        "argmax_share_by_domain": share,
        "in_domain_teacher": teacher_per_domain,
        "in_domain_routing": hits / total if total else float("nan"),
    }


def in_domain_teachers(per_domain: dict[str, list[float]]) -> dict[str, int]:
    """The in-domain teacher of each domain: the teacher most accurate on it."""
    return {d: int(torch.tensor(accs).argmax()) for d, accs in per_domain.items()}


VALIDATION_SIZE = 1000


def _validation_indices(data) -> torch.Tensor | None:
    """A fixed subset of the unlabeled set whose hidden labels are known, or None."""
    if data.unlabeled_labels is None:
        return None
    n = len(data.unlabeled_labels)
    gen = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=gen)[: min(n, VALIDATION_SIZE)]


def execute_run(spec: BenchmarkSpec, key: RunKey, ds: _Dataset, pool_info: dict) -> dict:
    """Train one method on one dataset with `ReuseTrainer` (no baseline, no guard) and return its record."""
    from hf_mrl import ReuseArguments, ReuseTrainer
    from hf_mrl.metrics import accuracy_report

    with torch_threads(spec.threads):
        config = spec.config(key.method, key.seed)
        start = time.perf_counter()
        args = ReuseArguments(guard_folds=0, supervised_baseline=False, student=spec.student_spec, progress=False)
        result = ReuseTrainer(ds.pool, ds.data, config, args, reuse=ds.reuse).train()
        train_s = time.perf_counter() - start
        preds = result.predictions["method"]
        wall = time.perf_counter() - start
        val = _validation_indices(ds.data)
        val_preds = None if val is None else result.predict(ds.data.unlabeled_images[val])
    data = ds.data
    report = accuracy_report(preds, data.test_labels, data.test_domains, data.domain_names)
    record = {
        "format": RECORD_FORMAT,
        "key": dataclasses.asdict(key),
        "bench_hash": bench_hash(spec, pool_info["hash"]),
        "benchmark": spec.identity(),
        "config": config.to_dict(),
        "dataset": ds.info,
        "pool": pool_info,
        "accuracy": report["accuracy"],
        "per_domain": report.get("per_domain"),
        "worst_domain_accuracy": report.get("worst_domain_accuracy"),
        "predictions_sha256": hashlib.sha256(preds.to(torch.int64).numpy().tobytes()).hexdigest(),
        # Accuracy on hidden labels of unlabeled samples: the validation that ablations decide on (not the test).
        "unlabeled_accuracy": None if val is None else float((val_preds == data.unlabeled_labels[val]).float().mean()),
        "teachers": ds.teachers,
        "final_losses": result.history[-1] if result.history else {},
        "wall_time_s": round(wall, 3),
        "train_time_s": round(train_s, 3),
        "threads": spec.threads,
        "environment": environment(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if result.reuser is not None:
        record["reuse_accuracy"] = float((result.predictions["reuser"] == data.test_labels).float().mean())
        if data.test_domains is not None and "per_domain" in ds.teachers:
            teacher_of = in_domain_teachers(ds.teachers["per_domain"])
            record["attention"] = _attention(result.reuse_weights, data, teacher_of)
    return record


def write_json(path: Path, data) -> None:
    """Atomically (temp file, then rename), NaN written as null."""
    atomic_write_json(path, data, indent=1)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ many runs


_PROGRESS = None  # a worker's queue to the main process, for a log line per finished run


def _run_group(
    spec_dict: dict,
    teachers: str,
    pool_info: dict,
    keys: list[RunKey],
    records_dir: str,
    notify: Callable[[RunKey, dict], None] | None = None,
) -> list[tuple[RunKey, dict]]:
    """Pending methods on one dataset (a worker task): one record file each, written as it finishes."""
    spec = BenchmarkSpec(**spec_dict)
    torch.set_num_threads(spec.threads)  # teacher inference too: cached outputs must not depend on the worker
    setting, n, seed = keys[0].dataset_key
    prep_start = time.perf_counter()
    ds = prepare_dataset(spec, teachers, setting, n, seed)
    prep = time.perf_counter() - prep_start
    digest = bench_hash(spec, pool_info["hash"])
    done = []
    for key in keys:
        record = execute_run(spec, key, ds, pool_info)
        record["dataset_prep_time_s"] = round(prep, 3)
        write_json(Path(records_dir) / key.filename(digest), record)
        result = {"accuracy": record["accuracy"], "wall_time_s": record["wall_time_s"]}
        done.append((key, result))
        if notify is not None:
            notify(key, result)
        elif _PROGRESS is not None:
            _PROGRESS.put((key, result))
        prep = 0.0
    return done


def _init_worker(threads: int, progress=None) -> None:
    global _PROGRESS
    torch.set_num_threads(threads)
    quiet_progress_bars()
    _PROGRESS = progress


def quiet_progress_bars() -> None:
    """No per-teacher 'Loading weights' bars: a benchmark loads the pool once per worker and per rerun."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def pending_runs(keys: Iterable[RunKey], results_dir: str | os.PathLike, digest: str) -> list[RunKey]:
    """The keys without a readable record (a half-written or corrupted one is run again)."""
    records = Path(results_dir) / RECORDS_DIR
    out = []
    for key in keys:
        rec = read_json(records / key.filename(digest))
        if rec is None or rec.get("format") != RECORD_FORMAT:
            out.append(key)
    return out


def make_tasks(todo: Sequence[RunKey], workers: int) -> list[list[RunKey]]:
    """One task per dataset (its data and teacher outputs are loaded once), but the last `workers` datasets (all of
    them when there are few) are split in `workers` interleaved parts, so that no worker idles at the end."""
    groups: dict[tuple, list[RunKey]] = {}
    for key in todo:
        groups.setdefault(key.dataset_key, []).append(key)
    whole = list(groups.values())
    if workers <= 1:
        return whole
    cut = len(whole) - workers if len(whole) >= 4 * workers else 0
    return whole[:cut] + [g[i::workers] for g in whole[cut:] for i in range(workers) if g[i::workers]]


def run_benchmark(
    spec: BenchmarkSpec,
    keys: Sequence[RunKey],
    results_dir: str | os.PathLike,
    workers: int = 1,
    log: Callable[[str], None] = print,
    argv: Sequence[str] | None = None,
) -> dict:
    """Run every key that has no record yet; returns `{"ran": n, "skipped": n, "wall_time_s": s, "bench_hash": h}`.

    `workers` > 1 runs the datasets in that many spawned processes, each with `spec.threads` torch threads; a run's
    result does not depend on `workers`.
    """
    results = Path(results_dir)
    (results / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    start = time.time()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    teachers = resolve_pool_file(spec)
    label_names = _label_names(spec, keys)
    pool_info = {"file": teachers, **pool_identity(load_pool(teachers, label_names, spec.cache_dir))}
    digest = bench_hash(spec, pool_info["hash"])
    todo = pending_runs(keys, results, digest)
    skipped = len(keys) - len(todo)
    log(f"benchmark {digest}: {len(keys)} runs, {skipped} already recorded, {len(todo)} to run ({workers} worker(s))")
    tasks = make_tasks(todo, workers)
    args = [(spec.to_dict(), teachers, pool_info, t, str(results / RECORDS_DIR)) for t in tasks]
    logged: set[RunKey] = set()

    def report(key: RunKey, res: dict) -> None:
        if key in logged:
            return
        logged.add(key)
        elapsed = time.time() - start
        eta = elapsed / len(logged) * (len(todo) - len(logged))
        log(
            f"[{len(logged)}/{len(todo)}] {key.method:>12} {key.setting:>3} n={key.labeled_per_class:<2} "
            f"seed={key.seed}: {100 * res['accuracy']:5.1f}%  ({res['wall_time_s']:.1f} s; "
            f"elapsed {elapsed / 60:.1f} min, eta {eta / 60:.1f} min)"
        )

    try:
        if workers <= 1 or len(args) <= 1:
            before = torch.get_num_threads()
            try:
                for a in args:
                    _run_group(*a, notify=report)
            finally:
                torch.set_num_threads(before)
        else:
            import multiprocessing
            import queue as queue_mod

            ctx = multiprocessing.get_context("spawn")
            progress = ctx.Queue()
            with ProcessPoolExecutor(
                min(workers, len(args)), mp_context=ctx, initializer=_init_worker, initargs=(spec.threads, progress)
            ) as pool:
                futures = {pool.submit(_run_group, *a) for a in args}
                while futures:
                    try:
                        report(*progress.get(timeout=1.0))
                    except queue_mod.Empty:
                        pass
                    for fut in [f for f in futures if f.done()]:
                        futures.discard(fut)
                        for key, res in fut.result():  # raises a worker's error
                            report(key, res)
    finally:
        wall = time.time() - start
        if todo:
            _append_timing(results, digest, wall, len(logged), workers, spec.threads, argv, load_start)
    log(f"ran {len(logged)} run(s) in {wall / 60:.2f} min")
    return {"ran": len(logged), "skipped": skipped, "wall_time_s": wall, "bench_hash": digest}


def _label_names(spec: BenchmarkSpec, keys: Sequence[RunKey]) -> list[str]:
    from hf_mrl.data.target import check_target

    setting = keys[0].setting if keys else "MUS"
    return check_target(spec.dataset(setting), keys[0].labeled_per_class if keys else None)


def _append_timing(
    results: Path, digest: str, wall: float, runs: int, workers: int, threads: int, argv, load_start=None
) -> None:
    path = results / TIMING_FILE
    timing = read_json(path) or {"invocations": []}
    timing["invocations"].append(
        {
            "bench_hash": digest,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - wall)),
            "wall_time_s": round(wall, 1),
            "runs": runs,
            "workers": workers,
            "threads": threads,
            "cpus": os.cpu_count(),
            "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "argv": list(argv) if argv is not None else None,
        }
    )
    write_json(path, timing)


# ------------------------------------------------------------------------------------------------ reproduce


def rerun_record(path: str | os.PathLike, cache_dir: str | None = None, pool_file: str | None = None) -> dict:
    """Re-execute the run a record describes; `{"match": bool, "recorded": acc, "rerun": acc, "record": new}`.

    The teachers are the record's ids (local paths or `name@commit`), or those of `pool_file`; on another machine,
    where the record's local paths do not exist, a Digits-LD record uses the Digits-LD pool of this one. Checks
    first that the pool's weights and the data are those of the record (a ValueError says which differ), then
    compares accuracy and the hash of every test prediction.
    """
    rec = json.loads(Path(path).read_text())
    if rec.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path} is not a benchmark record (format {rec.get('format')!r}).")
    bench = rec["benchmark"]
    config = dict(rec["config"])
    key = RunKey(**rec["key"])
    spec = BenchmarkSpec(
        dataset_template=bench["dataset_template"],
        pool_file=rec["pool"].get("file"),
        cache_dir=cache_dir,
        train=dict(bench["train"]),
        student_spec=bench["student_spec"],
        threads=bench["threads"],
        method_train=bench.get("method_train") or {},
    )
    if not _same_config(spec.config(key.method, key.seed), config):
        raise ValueError("The record's config does not rebuild: MRLConfig changed since it was written.")
    teachers = pool_file or rec["pool"]["ids"]
    if pool_file is None and not all(_exists_or_hub(t) for t in teachers):
        if not bench["dataset_template"].startswith("digits-ld"):
            raise ValueError(f"The record's teachers {teachers} are not on this machine: pass the pool file.")
        teachers = resolve_pool_file(BenchmarkSpec())
    with torch_threads(spec.threads):
        ds = prepare_dataset(spec, teachers, key.setting, key.labeled_per_class, key.seed)
    pool = load_pool(teachers, ds.data.label_names, cache_dir)
    pool_info = {"file": rec["pool"].get("file"), **pool_identity(pool)}
    if pool_info["hash"] != rec["pool"]["hash"]:
        raise ValueError(f"The pool's weights differ from the record's: {pool_info['weights']} != {rec['pool']}.")
    if ds.info["fingerprints"] != rec["dataset"]["fingerprints"]:
        raise ValueError(f"The data differ from the record's: {ds.info['fingerprints']} != {rec['dataset']}.")
    new = execute_run(spec, key, ds, pool_info)
    match = new["accuracy"] == rec["accuracy"] and new["predictions_sha256"] == rec["predictions_sha256"]
    return {"match": match, "recorded": rec["accuracy"], "rerun": new["accuracy"], "record": new}


def _same_config(config: MRLConfig, recorded: dict) -> bool:
    """`config` is the recorded one; fields that postdate the record must be at their defaults (the behaviour the
    code had before they existed)."""
    defaults = {f.name: f.default for f in dataclasses.fields(MRLConfig)}
    rebuilt = config.to_dict()
    return set(recorded) <= set(rebuilt) and rebuilt == {**{k: defaults[k] for k in rebuilt}, **recorded}


def _exists_or_hub(teacher_id: str) -> bool:
    return os.path.exists(teacher_id) or not teacher_id.startswith(("/", "."))


# ------------------------------------------------------------------------------------------------ report


def load_records(results_dir: str | os.PathLike, bench_hash: str | None = None) -> list[dict]:
    """Every readable record under `results_dir/records/` (of one benchmark hash when given)."""
    out = []
    for path in sorted((Path(results_dir) / RECORDS_DIR).glob("*.json")):
        rec = read_json(path)
        if rec and rec.get("format") == RECORD_FORMAT and (bench_hash is None or rec["bench_hash"] == bench_hash):
            out.append(rec)
    return out


def select_benchmark(records: list[dict], spec: BenchmarkSpec | None = None) -> list[dict]:
    """The records of one benchmark: those matching `spec`'s identity (the newest pool's when several), or, when
    none matches, the newest benchmark's in the folder (with a warning)."""
    if spec is not None:
        matching = [r for r in records if r["benchmark"] == spec.identity()]
        if records and not matching:
            logger.warning("No record matches this configuration; reporting the newest benchmark in the folder.")
        records = matching or records
    if not records:
        return []
    newest = max(records, key=lambda r: r["finished_at"])["bench_hash"]
    hashes = {r["bench_hash"] for r in records}
    if len(hashes) > 1:
        logger.warning("Records of %d benchmarks in the folder; reporting the newest (%s).", len(hashes), newest)
    return [r for r in records if r["bench_hash"] == newest]


def _stats(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std()) if len(values) > 1 else 0.0
    return {"mean": float(t.mean()), "std": std, "n": len(values)}


def summarise(records: list[dict], labeled_per_class: int = 10, budget_setting: str = "MUS") -> dict:
    """Tables (in accuracy points, 0-100) from the records of one benchmark."""
    acc: dict[tuple, float] = {}
    for r in records:
        k = r["key"]
        acc[(k["method"], k["setting"], k["labeled_per_class"], k["seed"])] = 100 * r["accuracy"]
    methods = [m for m in METHODS if any(k[0] == m for k in acc)]
    settings = [s for s in SETTINGS if any(k[1] == s and k[2] == labeled_per_class for k in acc)]
    settings += sorted({k[1] for k in acc if k[2] == labeled_per_class} - set(settings))
    seeds = sorted({k[3] for k in acc})

    main = {m: {} for m in methods}
    for m in methods:
        for s in settings:
            vals = [acc[(m, s, labeled_per_class, seed)] for seed in seeds if (m, s, labeled_per_class, seed) in acc]
            if vals:
                main[m][s] = _stats(vals)
    gains = {}
    for m in methods:
        per_seed = []
        for seed in seeds:
            diffs = [
                acc[(m, s, labeled_per_class, seed)] - acc[("supervised", s, labeled_per_class, seed)]
                for s in settings
                if (m, s, labeled_per_class, seed) in acc and ("supervised", s, labeled_per_class, seed) in acc
            ]
            if len(diffs) == len(settings) and diffs:
                per_seed.append(sum(diffs) / len(diffs))
        if per_seed:
            gains[m] = _stats(per_seed)
    best = {}
    ranked = [m for m in methods if m not in REFERENCE_METHODS]
    for col in settings:
        cands = [m for m in ranked if col in main[m]]
        if cands:
            best[col] = max(cands, key=lambda m: main[m][col]["mean"])
    cands = [m for m in ranked if m in gains]
    if cands:
        best["Ave. Gain"] = max(cands, key=lambda m: gains[m]["mean"])

    budgets = sorted({k[2] for k in acc if k[1] == budget_setting})
    budget = {m: {} for m in methods}
    for m in methods:
        for b in budgets:
            vals = [acc[(m, budget_setting, b, seed)] for seed in seeds if (m, budget_setting, b, seed) in acc]
            if vals:
                budget[m][b] = _stats(vals)

    # teacher x domain accuracy (the test split of a domain is the same in every setting that has it)
    teacher_ids, matrix = None, {}
    for r in records:
        teacher_ids = teacher_ids or r["pool"]["ids"]
        for d, accs in (r["teachers"].get("per_domain") or {}).items():
            matrix.setdefault(d, [100 * a for a in accs])
    domains = [d for d in ("M", "U", "S") if d in matrix] + sorted(set(matrix) - {"M", "U", "S"})
    matrix = {d: matrix[d] for d in domains}
    teacher_of = in_domain_teachers(matrix) if matrix else {}

    # learned attention, MRL
    attention = {}
    for s in settings + ([budget_setting] if budget_setting not in settings else []):
        runs = [
            r
            for r in records
            if r["key"]["method"] == "mrl"
            and r["key"]["setting"] == s
            and r["key"]["labeled_per_class"] == labeled_per_class
            and "attention" in r
        ]
        if not runs:
            continue
        doms = list(runs[0]["attention"]["mean_by_domain"])
        attention[s] = {
            "mean_by_domain": {
                d: torch.tensor([r["attention"]["mean_by_domain"][d] for r in runs]).mean(0).tolist() for d in doms
            },
            "argmax_share_by_domain": {
                d: torch.tensor([r["attention"]["argmax_share_by_domain"][d] for r in runs]).mean(0).tolist()
                for d in doms
            },
            "in_domain_routing": _stats([100 * r["attention"]["in_domain_routing"] for r in runs]),
            "reuse_accuracy": _stats([100 * r["reuse_accuracy"] for r in runs]),
        }

    per_domain = {}
    for m in methods:
        runs = [
            r
            for r in records
            if r["key"]["method"] == m
            and r["key"]["setting"] == budget_setting
            and r["key"]["labeled_per_class"] == labeled_per_class
            and r.get("per_domain")
        ]
        if runs:
            per_domain[m] = {d: _stats([100 * r["per_domain"][d] for r in runs]) for d in runs[0]["per_domain"]}
            per_domain[m]["worst"] = _stats([100 * r["worst_domain_accuracy"] for r in runs])

    summary = {
        "labeled_per_class": labeled_per_class,
        "budget_setting": budget_setting,
        "methods": methods,
        "settings": settings,
        "seeds": seeds,
        "main": main,
        "ave_gain": gains,
        "best": best,
        "budgets": budgets,
        "budget": {m: {str(b): v for b, v in row.items()} for m, row in budget.items()},
        "teacher_ids": teacher_ids,
        "teacher_domain_accuracy": matrix,
        "in_domain_teacher": teacher_of,
        "attention": attention,
        "per_domain": per_domain,
        "runs": len(records),
        "run_time_s": _run_times(records),
    }
    summary["checks"] = _checks(summary, acc, labeled_per_class)
    return summary


def _run_times(records: list[dict]) -> dict:
    """Mean training + evaluation time of one run, per method (seconds), and the sum over the records."""
    by_method: dict[str, list[float]] = {}
    for r in records:
        by_method.setdefault(r["key"]["method"], []).append(r["wall_time_s"])
    prep = [r.get("dataset_prep_time_s", 0.0) for r in records if r.get("dataset_prep_time_s")]
    return {
        "mean_by_method": {m: sum(v) / len(v) for m, v in by_method.items()},
        "total_run_s": sum(r["wall_time_s"] for r in records),
        "total_dataset_prep_s": sum(prep),
    }


def _checks(summary: dict, acc: dict, labeled_per_class: int) -> list[dict]:
    """The benchmark's success criteria (design/benchmark.md), each with its evidence."""
    main, gains, checks = summary["main"], summary["ave_gain"], []
    if "mrl" not in main or "supervised" not in main:
        return checks
    ranked = [m for m in summary["methods"] if m not in REFERENCE_METHODS]
    if "mrl" in gains:
        g = gains["mrl"]["mean"]
        others = {m: gains[m]["mean"] for m in ranked if m in gains and m != "mrl"}
        checks.append(
            {
                "check": "MRL has the best average gain",
                "ok": all(g >= v for v in others.values()),
                "evidence": f"MRL {g:+.1f}; best other {max(others.values(), default=float('nan')):+.1f}",
            }
        )
        checks.append(
            {
                "check": f"MRL's average gain >= the paper's +{PAPER_MRL_GAIN} points",
                "ok": g >= PAPER_MRL_GAIN,
                "evidence": f"{g:+.1f}",
            }
        )
        if "oracle" in gains:
            o = gains["oracle"]["mean"]
            checks.append(
                {
                    "check": "MRL's average gain within 2 points of oracle routing's",
                    "ok": g >= o - 2.0,
                    "evidence": f"MRL {g:+.1f}, oracle {o:+.1f}",
                }
            )
    behind = []
    for col in summary["settings"]:
        b = summary["best"].get(col)
        if b and col in main["mrl"] and b != "mrl":
            mrl, top = main["mrl"][col], main[b][col]
            if mrl["mean"] + mrl["std"] < top["mean"] - top["std"]:
                behind.append(f"{col} ({METHOD_NAMES[b]} {top['mean']:.1f} vs {mrl['mean']:.1f})")
    checks.append(
        {
            "check": "MRL within noise (1-std intervals overlap) of the best method in every column",
            "ok": not behind,
            "evidence": "behind in " + ", ".join(behind) if behind else "every column",
        }
    )
    if "mr-bs" in main:
        single = [s for s in summary["settings"] if len(s) == 1 and s in main["mrl"] and s in main["mr-bs"]]
        lag = [
            f"{s} ({main['mrl'][s]['mean']:.1f} vs {main['mr-bs'][s]['mean']:.1f})"
            for s in single
            if main["mrl"][s]["mean"] + main["mrl"][s]["std"] < main["mr-bs"][s]["mean"] - main["mr-bs"][s]["std"]
        ]
        checks.append(
            {
                "check": "single-domain settings: MRL matches MR-BS (within noise)",
                "ok": not lag,
                "evidence": "below in " + ", ".join(lag) if lag else ", ".join(single) or "no single-domain setting",
            }
        )
    pairs = [
        (k, v - acc[("supervised",) + k[1:]])
        for k, v in acc.items()
        if k[0] == "mrl" and k[2] == labeled_per_class and ("supervised",) + k[1:] in acc
    ]
    worse = [f"{k[1]}/seed {k[3]} ({d:+.1f})" for k, d in pairs if d < 0]
    checks.append(
        {
            "check": "MRL never below Supervised on any (setting, seed) pair",
            "ok": not worse,
            "evidence": f"{len(pairs) - len(worse)}/{len(pairs)} pairs at or above"
            + (": below on " + ", ".join(worse) if worse else ""),
        }
    )
    return checks


def _fmt(stat: dict | None, bold: bool = False, signed: bool = False) -> str:
    if not stat:
        return "-"
    mean = f"{stat['mean']:+.1f}" if signed else f"{stat['mean']:.1f}"
    text = f"{mean} ± {stat['std']:.1f}" if stat.get("n", 2) > 1 else mean
    return f"**{text}**" if bold else text


def teacher_name(teacher_id: str) -> str:
    """A short name: the folder or repo name, without the revision."""
    name = teacher_id.split("@")[0] if not os.path.exists(teacher_id) else teacher_id
    return Path(name.rstrip("/")).name


def budget_text(bench: dict, methods: Sequence[str] = METHODS) -> str:
    """The budget of a benchmark in words: steps and batches of every method, FixMatch's mu and whether it is
    evaluated with an EMA, the mean teacher's EMA, and any other per-method override."""
    train = bench.get("train") or {}
    if not train:
        return ""
    per = bench.get("method_train") or {}

    def cfg(method: str) -> dict:
        return {**train, **per.get(method, {})}

    overridden = sorted({k for changes in per.values() for k in changes} & {"max_steps", "batch_size"})
    parts = [
        f"**Budget**: {train['max_steps']} steps per run, batches of {train['batch_size']} labeled + "
        f"{train['unlabeled_batch_size']} unlabeled images (the methods that use unlabeled images)"
        + (" but where overridden below" if overridden else "")
        + f", lr {train['learning_rate']}, augment {train['augment']}"
    ]
    if "fixmatch" in methods:
        f = cfg("fixmatch")
        ema = f.get("eval_ema_decay", 0.0)
        parts.append(
            f"FixMatch: mu = {f['unlabeled_batch_size'] / f['batch_size']:g} ({f['unlabeled_batch_size']} unlabeled "
            f"per {f['batch_size']} labeled), "
            + (
                f"evaluated with an EMA of its weights (decay {ema:g})"
                if ema
                else "no EMA (its last iterate is evaluated)"
            )
        )
    if "mean-teacher" in methods:
        parts.append(
            f"mean teacher: evaluated with its EMA (teacher) weights, decay {cfg('mean-teacher')['ema_decay']:g}"
        )
    others = {
        m: {
            k: v
            for k, v in changes.items()
            if not (m == "fixmatch" and k in ("unlabeled_batch_size", "eval_ema_decay"))
        }
        for m, changes in per.items()
    }
    for m, changes in others.items():
        if changes and m in methods:
            parts.append(f"{METHOD_NAMES[m]}: " + ", ".join(f"{k} {v}" for k, v in sorted(changes.items())))
    return "; ".join(parts) + "."


def render_markdown(
    summary: dict,
    timing: dict | None = None,
    command: str | None = None,
    title: str = "Digits-LD benchmark",
    note: str | None = None,
) -> str:
    """The report: main table, per-domain table, teacher x domain matrix, budget table, attention, checks.

    `title`: its heading; `note`: a paragraph under it (what this benchmark is for)."""
    s, lines = summary, []
    n = s["labeled_per_class"]
    lines.append(f"# {title}\n")
    if note:
        lines.append(note.strip() + "\n")
    bench = s.get("benchmark") or {}
    train = bench.get("train") or {}
    if train:
        overrides = " and the per-method fields of the budget above" if bench.get("method_train") else ""
        lines.append(budget_text(bench, s["methods"]) + "\n")
        lines.append(
            f"Every method: the same student and `MRLConfig` but `method`{overrides}, {bench.get('threads')} torch "
            f"thread(s) per run; data `{bench.get('dataset_template')}`; benchmark hash `{s.get('bench_hash')}`.\n"
        )
    lines.append(
        f"Test accuracy (%), mean ± std over seeds {s['seeds']}, {n} labels per class; {s['runs']} runs. "
        "**Bold**: best method of the column (oracle routing excluded). Ave. Gain: the mean over the settings "
        "of the gain over Supervised on the same data and seed, then mean ± std over seeds.\n"
    )
    cols = s["settings"] + ["Ave. Gain"]
    lines.append("| method | " + " | ".join(cols) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for m in s["methods"]:
        ref = m in REFERENCE_METHODS
        name = f"*{METHOD_NAMES[m]}* †" if ref else METHOD_NAMES[m]
        cells = [_fmt(s["main"][m].get(c), bold=not ref and s["best"].get(c) == m) for c in s["settings"]]
        gain = s["ave_gain"].get(m)
        cells.append(
            "(baseline)"
            if m == "supervised"
            else _fmt(gain, bold=not ref and s["best"].get("Ave. Gain") == m, signed=True)
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "oracle" in s["methods"]:
        lines.append(
            "\n† Oracle routing distils each sample from its true domain's teacher: it **reads the latent-domain "
            "labels**, which no method may, so it is a ceiling for routing, not a rival.\n"
        )

    if s["checks"]:
        lines.append("## Success criteria (design/benchmark.md)\n")
        lines.append("| criterion | met | evidence |\n| --- | --- | --- |")
        for c in s["checks"]:
            lines.append(f"| {c['check']} | {'yes' if c['ok'] else '**no**'} | {c['evidence']} |")
        lines.append("")

    if s["teacher_domain_accuracy"]:
        lines.append("## The pool: teacher x test-domain accuracy (%)\n")
        doms = list(s["teacher_domain_accuracy"])
        lines.append("| teacher | " + " | ".join(doms) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in doms) + " |")
        for k, tid in enumerate(s["teacher_ids"]):
            cells = []
            for d in doms:
                v = s["teacher_domain_accuracy"][d][k]
                cells.append(f"**{v:.1f}**" if s["in_domain_teacher"].get(d) == k else f"{v:.1f}")
            lines.append(f"| {teacher_name(tid)} | " + " | ".join(cells) + " |")
        lines.append(
            "\nBold: the in-domain teacher of each domain (the teacher most accurate on it), which the attention "
            "analysis and oracle routing use.\n"
        )

    if s["per_domain"]:
        b = s["budget_setting"]
        lines.append(f"## Per latent domain on {b} ({n} labels per class), test accuracy (%)\n")
        doms = [d for d in next(iter(s["per_domain"].values())) if d != "worst"]
        lines.append("| method | " + " | ".join(doms) + " | worst domain |")
        lines.append("| --- | " + " | ".join("---:" for _ in doms) + " | ---: |")
        for m, row in s["per_domain"].items():
            lines.append(
                f"| {METHOD_NAMES[m]} | " + " | ".join(_fmt(row[d]) for d in doms) + f" | {_fmt(row['worst'])} |"
            )
        lines.append("")

    if len(s["budgets"]) > 1:
        b = s["budget_setting"]
        lines.append(f"## Labeled budget on {b}: test accuracy (%) against labels per class\n")
        lines.append("![budget curve](budget_curve.png)\n")
        lines.append("| method | " + " | ".join(str(x) for x in s["budgets"]) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in s["budgets"]) + " |")
        for m in s["methods"]:
            row = s["budget"][m]
            name = f"*{METHOD_NAMES[m]}* †" if m in REFERENCE_METHODS else METHOD_NAMES[m]
            lines.append(f"| {name} | " + " | ".join(_fmt(row.get(str(x))) for x in s["budgets"]) + " |")
        lines.append("")

    if s["attention"]:
        lines.append("## MRL's learned attention against the true latent domain\n")
        b = s["budget_setting"] if s["budget_setting"] in s["attention"] else next(iter(s["attention"]))
        lines.append(f"![attention]({ATTENTION_PNG})\n")
        lines.append(
            f"Left: mean attention weight of each teacher on the {b} test samples of each true domain; right: the "
            "share of those samples whose highest-weighted teacher is each teacher. In-domain routing rate: the "
            "share of test samples whose highest-weighted teacher is their domain's in-domain teacher (mean ± std "
            "over seeds); reuser accuracy: the attention-weighted teacher mixture's own test accuracy.\n"
        )
        lines.append("| setting | in-domain routing rate (%) | reuser accuracy (%) |\n| --- | ---: | ---: |")
        for setting, a in s["attention"].items():
            lines.append(f"| {setting} | {_fmt(a['in_domain_routing'])} | {_fmt(a['reuse_accuracy'])} |")
        lines.append("")

    lines.append("## Cost\n")
    rt = s["run_time_s"]
    lines.append(
        "Mean training + evaluation time of one run (s): "
        + ", ".join(f"{METHOD_NAMES[m]} {rt['mean_by_method'][m]:.1f}" for m in METHODS if m in rt["mean_by_method"])
        + f". Sum over the runs: {rt['total_run_s'] / 60:.1f} min of worker time, plus "
        f"{rt['total_dataset_prep_s'] / 60:.1f} min loading data and teacher outputs.\n"
    )
    if timing and timing.get("invocations"):
        inv = timing["invocations"]
        total = sum(i["wall_time_s"] for i in inv)
        last = inv[-1]
        lines.append(
            f"Measured wall time: {total / 60:.1f} min over {len(inv)} invocation(s) "
            f"({sum(i['runs'] for i in inv)} runs; last one: {last['workers']} worker(s) x {last['threads']} "
            f"torch thread(s) on {last['cpus']} CPUs; load average at its start {_loadavg(last, 'start')}, at its end "
            f"{_loadavg(last, 'end')}: other processes on the machine slow it down).\n"
        )
    if command:
        lines.append(f"Command:\n\n```bash\n{command}\n```\n")
    lines.append(
        "Every run has a record in `records/` (config, data and pool identity, accuracy, per-domain accuracy, "
        "attention, wall time); `python benchmarks/benchmark.py --rerun records/FILE.json` re-executes one and checks "
        "that it reproduces the recorded predictions exactly. `summary.json` holds these tables as data.\n"
    )
    return "\n".join(lines)


def _loadavg(invocation: dict, when: str) -> str:
    load = invocation.get(f"load_average_at_{when}")
    return " / ".join(f"{x:.1f}" for x in load) + " (1 / 5 / 15 min)" if load else "unknown"


ATTENTION_PNG = "attention.png"
BUDGET_PNG = "budget_curve.png"


def plot_budget(summary: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in summary["methods"]:
        row = summary["budget"][m]
        xs = [b for b in summary["budgets"] if str(b) in row]
        if not xs:
            continue
        mean = [row[str(b)]["mean"] for b in xs]
        std = [row[str(b)]["std"] for b in xs]
        style = {"linestyle": "--", "color": "0.45"} if m in REFERENCE_METHODS else {}
        if m == "mrl":
            style = {"color": "black"}
        width = 2.5 if m == "mrl" else 1.3
        label = METHOD_NAMES[m] + (" (reads domain labels)" if m in REFERENCE_METHODS else "")
        (line,) = ax.plot(xs, mean, marker="o", linewidth=width, label=label, **style)
        low = [a - b for a, b in zip(mean, std, strict=True)]
        high = [a + b for a, b in zip(mean, std, strict=True)]
        ax.fill_between(xs, low, high, alpha=0.12, color=line.get_color())
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(summary["budgets"])
    ax.set_xticklabels([str(b) for b in summary["budgets"]])
    ax.set_xlabel("labeled samples per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Digits-LD {summary['budget_setting']}: accuracy against the labeled budget (mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(summary: dict, path: str | os.PathLike, setting: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    att = summary["attention"]
    setting = setting if setting in att else (summary["budget_setting"] if summary["budget_setting"] in att else None)
    setting = setting or next(iter(att))
    a = att[setting]
    doms = list(a["mean_by_domain"])
    names = [teacher_name(t) for t in summary["teacher_ids"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.9 * len(doms) + 2.4))
    panels = (("mean_by_domain", "mean attention weight"), ("argmax_share_by_domain", "share routed (argmax)"))
    for ax, (field_, title) in zip(axes, panels, strict=True):
        mat = torch.tensor([a[field_][d] for d in doms]).numpy()
        ax.imshow(mat, vmin=0, vmax=1, cmap="Blues")
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                inside = summary["in_domain_teacher"].get(doms[i]) == j
                ax.text(
                    j,
                    i,
                    f"{mat[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white" if mat[i, j] > 0.6 else "black",
                    fontweight="bold" if inside else "normal",
                )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20)
        ax.set_yticks(range(len(doms)))
        ax.set_yticklabels([f"domain {d}" for d in doms])
        ax.set_xlabel("teacher")
        ax.set_title(title)
    rate = a["in_domain_routing"]
    fig.suptitle(
        f"MRL attention on {setting} test samples by true domain (bold: in-domain teacher); "
        f"in-domain routing {rate['mean']:.1f} ± {rate['std']:.1f}%",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    results_dir: str | os.PathLike,
    spec: BenchmarkSpec | None = None,
    labeled_per_class: int = 10,
    budget_setting: str = "MUS",
    command: str | None = None,
    title: str = "Digits-LD benchmark",
    note: str | None = None,
) -> dict:
    """Render README.md, summary.json, budget_curve.png and attention.png from the records; returns the summary.

    `title` and `note`: the report's heading and a paragraph under it."""
    results = Path(results_dir)
    records = select_benchmark(load_records(results), spec)
    if not records:
        raise ValueError(f"No benchmark records in {results / RECORDS_DIR} for this configuration.")
    summary = summarise(records, labeled_per_class, budget_setting)
    timing = read_json(results / TIMING_FILE)
    digest = records[0]["bench_hash"]
    if timing:
        timing = {"invocations": [i for i in timing["invocations"] if i["bench_hash"] == digest]}
        summary["wall_time_s"] = sum(i["wall_time_s"] for i in timing["invocations"])
    summary["bench_hash"] = digest
    summary["benchmark"] = records[0]["benchmark"]
    summary["pool"] = records[0]["pool"]
    summary["command"] = command
    if len(summary["budgets"]) > 1:
        plot_budget(summary, results / BUDGET_PNG)
    if summary["attention"]:
        plot_attention(summary, results / ATTENTION_PNG)
    (results / "README.md").write_text(render_markdown(summary, timing, command, title, note))
    write_json(results / "summary.json", summary)
    return summary


def _finite(obj):
    """JSON without NaN (written as null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------ command lines


def csv_arg(kind):
    """An argparse type: comma-separated values of `kind`."""

    def parse(text: str):
        return [kind(x) for x in text.split(",") if x.strip()]

    return parse


POSITIVE_FLAGS = ("max_steps", "batch_size", "unlabeled_batch_size", "workers", "threads", "labeled_per_class")


def apply_preset(parser, args, preset: dict, positive: Sequence[str] = POSITIVE_FLAGS) -> None:
    """Fill the flags `preset` (a script's FULL or QUICK) sets and the user left out; refuse values below 1."""
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1.")
