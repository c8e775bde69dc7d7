"""Speed of MRL against plain knowledge distillation, teacher-logit caching, and scaling in K and in the data.

    python benchmarks/speed.py                          # the full CPU run (about 10 minutes on 2 cores)
    python benchmarks/speed.py --quick                  # tiny sizes, seconds (what the tests run)
    python benchmarks/speed.py --device cuda --precision bf16 --out benchmarks/results/speed-cuda.json

Everything is measured in one run, as ratios of numbers measured side by side (interleaved rounds, medians), so
other load on the machine affects both sides of a ratio alike. Sections:

- step: the MRL training step (default config, K=3 cached teachers) against the plain single-teacher KD step at
  the same student, batch and data. Plain KD is the same trainer with one teacher and `outer_every` larger than
  the steps measured: attention over one teacher is that teacher, and no outer step runs, so its training step is
  exactly a KD step (CE on the labeled batch + lambda * T^2 KL(teacher || student) on the unlabeled batch). Also the
  outer (hypergradient) step alone, and the MRL step against `outer_every`.
- memory: peak memory of KD and MRL training steps (and MRL at each K), each in a fresh process: the growth of the
  resident set over the training steps (`working`), and the whole process's peak (`total`). On CUDA, the peak of
  allocated device memory.
- cache: teacher-logit cost with Hub-format teachers (the Digits-LD architectures): a first run (every sample a
  miss), a second run and a run with another seed (another labeled / unlabeled split), each in a new process; the
  teacher cost amortised over an epoch of student steps.
- teachers: time and memory of MRL steps at K = 3, 10, 30, 100 cheap synthetic teachers, with cached logits.
- unlabeled: cache build (cold) and load (warm, memory-mapped) time, and the MRL step, as the unlabeled set grows.

The trainer is used only through its public API (`StudentTrainer(MRLConfig(...), data, reuse, teacher_ids)`,
`training_step`, `outer_step`, `compute_teacher_outputs`), so the benchmark survives refactors of its internals.
`--patch FILE` runs a Python file first (in the probe processes too): a way to measure a proposed change.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = ("step", "memory", "cache", "teachers", "unlabeled")
C = 10  # classes
SIZE = 32  # image side


# ----------------------------------------------------------------------------------------------- sizes


@dataclasses.dataclass
class Sizes:
    n_labeled: int = 100
    n_unlabeled: int = 5000
    n_test: int = 500
    rounds: int = 5
    block: int = 20  # steps per timed block (a multiple of every outer_every measured)
    outer_every: tuple = (1, 2, 5, 10, 20)
    teachers: tuple = (3, 10, 30, 100)
    unlabeled: tuple = (1_000, 10_000, 100_000)
    batch_size: int | None = None  # None: MRLConfig's defaults
    unlabeled_batch_size: int | None = None

    @classmethod
    def quick(cls) -> Sizes:
        return cls(20, 200, 40, 2, 4, (2,), (3, 6), (100, 300), 8, 16)


# ----------------------------------------------------------------------------------------------- helpers


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def synthetic_data(n_labeled: int, n_unlabeled: int, n_test: int, seed: int = 0):
    """Random uint8 images and labels: timing does not depend on the pixels."""
    from hf_mrl import TargetData

    gen = torch.Generator().manual_seed(seed)

    def images(n):
        return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)

    return TargetData(
        label_names=[str(i) for i in range(C)],
        labeled_images=images(n_labeled),
        labeled_labels=torch.arange(n_labeled) % C,
        unlabeled_images=images(n_unlabeled),
        test_images=images(n_test),
        test_labels=torch.arange(n_test) % C,
    )


def cheap_teachers(k: int, seed: int = 0):
    """K synthetic teachers (a linear layer on the pixels): for scaling curves, where the teacher cost is cached."""
    from hf_mrl import Teacher

    teachers = []
    for i in range(k):
        torch.manual_seed(seed * 1000 + i)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, C))
        teachers.append(
            Teacher(model, [str(c) for c in range(C)], name=f"synthetic/t{i}", weights_hash=f"s{seed}-{i}")
        )
    return teachers


def reuse_inputs(data, k: int, cache_dir=None, device: str = "cpu", precision: str = "fp32"):
    """ModelPool of K cheap teachers -> (TeacherOutputs, teacher ids), through the public API."""
    from hf_mrl import Embedding, ModelPool, compute_teacher_outputs

    pool = ModelPool(cheap_teachers(k), data.label_names, cache_dir=cache_dir, precision=precision).to(device)
    return compute_teacher_outputs(pool, Embedding("teacher-outputs"), data), pool.ids


def make_trainer(data, reuse, ids, sizes: Sizes, device: str, precision: str, **config):
    from hf_mrl import MRLConfig, StudentTrainer
    from hf_mrl.training.trainer import make_accelerator

    if sizes.batch_size:
        config.setdefault("batch_size", sizes.batch_size)
        config.setdefault("unlabeled_batch_size", sizes.unlabeled_batch_size)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision] if device == "cuda" else "no"
    accelerator = make_accelerator(cpu=device == "cpu", mixed_precision=mixed)
    return StudentTrainer(MRLConfig(max_steps=10**9, **config), data, reuse, teacher_ids=ids, accelerator=accelerator)


def kd_trainer(data, sizes, device, precision):
    """Plain single-teacher KD: one teacher, and no outer step within the steps measured."""
    reuse, ids = reuse_inputs(data, 1, device=device)
    return make_trainer(data, reuse, ids, sizes, device, precision, outer_every=10**9)


def _timed_block(trainer, start: int, n: int, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for s in range(start, start + n):
        trainer.training_step(s)
    _sync(device)
    return (time.perf_counter() - t0) / n


# ----------------------------------------------------------------------------------------------- sections


def section_step(sizes: Sizes, device: str, precision: str) -> dict:
    from hf_mrl import MRLConfig

    default = MRLConfig().outer_every
    data = synthetic_data(sizes.n_labeled, sizes.n_unlabeled, sizes.n_test)
    reuse, ids = reuse_inputs(data, 3, device=device)
    trainers = {"kd": kd_trainer(data, sizes, device, precision)}
    for oe in sorted(set(sizes.outer_every) | {default}):
        trainers[f"mrl@{oe}"] = make_trainer(data, reuse, ids, sizes, device, precision, outer_every=oe)
    for mode in HYPERGRADIENT_VARIANTS:  # the other ways to compute the same hypergradient, at the default
        trainers[f"hg-{mode}@{default}"] = make_trainer(
            data, reuse, ids, sizes, device, precision, outer_every=default, hypergradient=mode
        )
    cursor = {}
    for name, tr in trainers.items():  # warm-up: first steps allocate and pick kernels
        _timed_block(tr, 0, 2, device)
        tr.strategy.outer_step(0)
        cursor[name] = 10**6  # a multiple of every outer_every: each block holds block / outer_every outer steps
    per_step = {name: [] for name in trainers}
    outer, outer_step = [], 10**7
    for _ in range(sizes.rounds):
        for name, tr in trainers.items():
            per_step[name].append(_timed_block(tr, cursor[name], sizes.block, device))
            cursor[name] += sizes.block
        tr = trainers[f"mrl@{default}"]
        for _ in range(2):
            _sync(device)
            t0 = time.perf_counter()
            tr.strategy.outer_step(outer_step)
            outer_step += 1
            _sync(device)
            outer.append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in per_step.items()}
    kd = med["kd"]
    mrl = {name.split("@")[1]: t for name, t in med.items() if name.startswith("mrl@")}
    variants = {name[3:].split("@")[0]: t for name, t in med.items() if name.startswith("hg-")}
    variants = {MRLConfig().hypergradient: mrl[str(default)], **variants}
    return {
        "default_outer_every": default,
        "kd_step_s": kd,
        "mrl_step_s": mrl,
        "mrl_over_kd": {oe: t / kd for oe, t in mrl.items()},
        "hypergradient_step_s": variants,
        "hypergradient_over_kd": {mode: t / kd for mode, t in variants.items()},
        "outer_step_s": statistics.median(outer),
        "outer_over_kd_step": statistics.median(outer) / kd,
        "rounds": sizes.rounds,
        "block": sizes.block,
        "spread": {name: [min(v) / med[name], max(v) / med[name]] for name, v in per_step.items()},
    }


def _probe(spec: dict, args) -> dict:
    """Run a memory probe in a fresh process (so one variant's allocations never hide another's)."""
    cmd = [sys.executable, __file__, "--probe", json.dumps(spec), "--threads", str(args.threads)]
    cmd += ["--device", args.device, "--precision", args.precision] + (["--patch", args.patch] if args.patch else [])
    cmd += ["--quick"] if args.quick else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_probe(spec: dict, sizes: Sizes, device: str, precision: str) -> dict:
    """In the probe process: build the trainer, then measure the peak over 2 * outer_every training steps."""
    data = synthetic_data(sizes.n_labeled, sizes.n_unlabeled, sizes.n_test)
    if spec["method"] == "kd":
        trainer, steps = kd_trainer(data, sizes, device, precision), 10
    else:
        reuse, ids = reuse_inputs(data, spec["k"], device=device)
        extra = {"hypergradient": spec["hypergradient"]} if "hypergradient" in spec else {}
        trainer = make_trainer(data, reuse, ids, sizes, device, precision, **extra)
        steps = 2 * trainer.config.outer_every
    before = _status_kb("VmRSS")
    reset = _reset_peak_rss()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    for s in range(steps):
        trainer.training_step(s)
    out = {"rss_before_mb": before / 1024 if before else None, "steps": steps}
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        out["total_mb"] = hwm / 1024
        out["working_mb"] = (hwm - before) / 1024 if reset else None
    if device == "cuda":
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    return out


def section_memory(sizes: Sizes, args, ks=(3,)) -> dict:
    result = {"kd": _probe({"method": "kd"}, args)}
    for k in ks:
        result[f"mrl_k{k}"] = _probe({"method": "mrl", "k": k}, args)
    for mode in HYPERGRADIENT_VARIANTS:
        result[f"mrl_k{ks[0]}_{mode}"] = _probe({"method": "mrl", "k": ks[0], "hypergradient": mode}, args)
    kd = result["kd"]
    for r in result.values():
        for field in ("working_mb", "total_mb", "cuda_peak_mb"):
            if r.get(field) is not None and kd.get(field):
                r[f"{field[:-3]}_over_kd"] = r[field] / kd[field]
    return result


_RUN = """
import json, sys, time, torch
sys.path.insert(0, {bench!r})
import speed
torch.set_num_threads({threads})
from hf_mrl import Embedding, ModelPool, compute_teacher_outputs
data = speed.synthetic_data({n_l}, {n_u}, {n_t})
if {resplit}:  # another seed = another labeled / unlabeled / test split of the same images
    data = speed.resplit(data, seed={resplit})
pool = ModelPool.from_file({pool!r}, data.label_names, cache_dir={cache!r}, precision={precision!r}).to({device!r})
t0 = time.perf_counter()
compute_teacher_outputs(pool, Embedding("teacher-outputs"), data)
print(json.dumps({{"seconds": time.perf_counter() - t0, "forward_samples": sum(t.samples_seen for t in pool.teachers)}}))
"""


def _hub_format_pool(root: Path) -> Path:
    """The Digits-LD pool's architectures (timm test_resnet, transformers ConvNeXt and ResNet), untrained, saved
    as Hub checkpoints: realistic teacher inference cost without training anything."""
    import timm

    from hf_mrl.pool.builder import _LABELS, make_timm_classifier, make_transformers_classifier

    torch.manual_seed(0)
    model, _ = make_timm_classifier("test_resnet")
    timm.models.save_for_hf(
        model, str(root / "teacher-M"), model_config={"label_names": _LABELS}, safe_serialization=True
    )
    for name, kind in (("U", "convnext"), ("S", "resnet")):
        model, processor, _ = make_transformers_classifier(kind)
        model.save_pretrained(root / f"teacher-{name}")
        processor.save_pretrained(root / f"teacher-{name}")
    pool_file = root / "hub-ids.txt"
    pool_file.write_text("teacher-M\nteacher-U\nteacher-S\n")
    return pool_file


def section_cache(sizes: Sizes, args, step: dict | None) -> dict:
    """First run (all misses), then new processes over the same samples: another run, another seed."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pool_file = _hub_format_pool(root)
        n = {"n_l": sizes.n_labeled, "n_u": sizes.n_unlabeled, "n_t": sizes.n_test}

        def run(resplit: int, cache: str, precision: str = "fp32") -> dict:
            script = _RUN.format(
                bench=str(Path(__file__).parent),
                threads=args.threads,
                pool=str(pool_file),
                cache=str(root / cache),
                precision=precision,
                device=args.device,
                resplit=resplit,
                **n,
            )
            proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            return json.loads(proc.stdout.strip().splitlines()[-1])

        first = run(0, "cache")
        second = run(0, "cache")
        other_seed = run(1, "cache")  # another seed: another split of the same images
        result = {"first_run": first, "second_run": second, "other_seed": other_seed}
        if args.precision == "fp32":
            result["first_run_bf16"] = run(0, "cache-bf16", "bf16")
    samples = sum(n.values())
    result["samples"] = samples
    result["miss_ms_per_sample"] = 1e3 * first["seconds"] / samples
    result["hit_ms_per_sample"] = 1e3 * second["seconds"] / samples
    if step:
        epoch = step["mrl_step_s"][str(step["default_outer_every"])] * sizes.n_unlabeled / _unlabeled_batch(sizes)
        result["mrl_epoch_s"] = epoch
        result["first_run_over_epoch"] = first["seconds"] / epoch
        result["later_runs_over_epoch"] = second["seconds"] / epoch
    return result


def _unlabeled_batch(sizes: Sizes) -> int:
    from hf_mrl import MRLConfig

    return sizes.unlabeled_batch_size or MRLConfig().unlabeled_batch_size


def resplit(data, seed: int):
    """The same images split anew into labeled / unlabeled / test (what another seed does to a fixed dataset)."""
    from hf_mrl import TargetData

    images = torch.cat([data.labeled_images, data.unlabeled_images, data.test_images])
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))]
    n_l, n_u = len(data.labeled_images), len(data.unlabeled_images)
    return TargetData(
        label_names=data.label_names,
        labeled_images=images[:n_l],
        labeled_labels=data.labeled_labels,
        unlabeled_images=images[n_l : n_l + n_u],
        test_images=images[n_l + n_u :],
        test_labels=data.test_labels,
    )


def section_teachers(sizes: Sizes, device: str, precision: str) -> dict:
    data = synthetic_data(sizes.n_labeled, sizes.n_unlabeled, sizes.n_test)
    result, trainers = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in sizes.teachers:
            t0 = time.perf_counter()
            reuse_inputs(data, k, cache_dir=tmp, device=device, precision=precision)
            cold = time.perf_counter() - t0
            from hf_mrl import Embedding, ModelPool, compute_teacher_outputs

            pool = ModelPool(cheap_teachers(k), data.label_names, cache_dir=tmp, precision=precision).to(device)
            t0 = time.perf_counter()
            reuse = compute_teacher_outputs(pool, Embedding("teacher-outputs"), data)
            warm = time.perf_counter() - t0
            result[str(k)] = {
                "cold_s": cold,
                "warm_s": warm,
                "warm_forward_samples": sum(t.samples_seen for t in pool.teachers),
            }
            trainers[k] = make_trainer(data, reuse, pool.ids, sizes, device, precision)
    oe = trainers[sizes.teachers[0]].config.outer_every
    block = max(oe, sizes.block // oe * oe)
    times = {k: [] for k in trainers}
    for tr in trainers.values():
        _timed_block(tr, 0, 2, device)
    for r in range(sizes.rounds):
        for k, tr in trainers.items():
            times[k].append(_timed_block(tr, 10**6 + r * block, block, device))
    base = statistics.median(times[sizes.teachers[0]])
    for k in trainers:
        result[str(k)]["mrl_step_s"] = statistics.median(times[k])
        result[str(k)][f"mrl_step_over_k{sizes.teachers[0]}"] = statistics.median(times[k]) / base
    return result


def section_unlabeled(sizes: Sizes, device: str, precision: str) -> dict:
    from hf_mrl import Embedding, ModelPool, compute_teacher_outputs

    result = {}
    for n_u in sizes.unlabeled:
        data = synthetic_data(sizes.n_labeled, n_u, sizes.n_test, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            reuse_inputs(data, 3, cache_dir=tmp, device=device, precision=precision)
            cold = time.perf_counter() - t0
            rss0 = _status_kb("VmRSS")
            pool = ModelPool(cheap_teachers(3), data.label_names, cache_dir=tmp, precision=precision).to(device)
            t0 = time.perf_counter()
            reuse = compute_teacher_outputs(pool, Embedding("teacher-outputs"), data)
            warm = time.perf_counter() - t0
            rss1 = _status_kb("VmRSS")
            disk = sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))
            trainer = make_trainer(data, reuse, pool.ids, sizes, device, precision)
            oe = trainer.config.outer_every
            _timed_block(trainer, 0, 2, device)
            step = statistics.median(_timed_block(trainer, 10**6 + r * oe, oe, device) for r in range(3))
        result[str(n_u)] = {
            "cold_s": cold,
            "warm_s": warm,
            "warm_forward_samples": sum(t.samples_seen for t in pool.teachers),
            "cache_disk_mb": disk / 2**20,
            "warm_load_rss_growth_mb": (rss1 - rss0) / 1024 if rss0 and rss1 else None,
            "images_mb": data.unlabeled_images.numel() / 2**20,
            "mrl_step_s": step,
        }
        del data, reuse, trainer, pool
    return result


# ----------------------------------------------------------------------------------------------- report


def acceptance(results: dict) -> list[dict]:
    checks = []
    step = results.get("step")
    if step:
        oe = str(step["default_outer_every"])
        checks.append(_check("MRL step / plain KD step at the default outer_every", step["mrl_over_kd"][oe], 1.3))
    cache = results.get("cache")
    if cache:
        later = cache["second_run"]["forward_samples"] + cache["other_seed"]["forward_samples"]
        checks.append(_check("teacher forwards in the second run and another seed's run", later, 0))
    teachers = results.get("teachers")
    if teachers and len(teachers) > 1:
        ks = sorted(int(k) for k in teachers)
        ratio = teachers[str(ks[-1])]["mrl_step_s"] / teachers[str(ks[0])]["mrl_step_s"]
        checks.append(_check(f"MRL step at K={ks[-1]} / at K={ks[0]} (cached logits)", ratio, 2.0))
    memory = results.get("memory")
    if memory:
        mrl = memory.get("mrl_k3") or next(v for k, v in memory.items() if k != "kd")
        for field in ("working", "total", "cuda_peak"):
            if f"{field}_over_kd" in mrl:
                checks.append(_check(f"MRL peak memory / plain KD ({field})", mrl[f"{field}_over_kd"], 1.5))
    return checks


def _check(name: str, value: float, limit: float) -> dict:
    return {"check": name, "value": round(value, 3), "limit": limit, "pass": bool(value <= limit)}


HYPERGRADIENT_VARIANTS = ("jvp", "unrolled")  # measured next to the default (fd)
HYPERGRADIENT_TEXT = {
    "fd": "fd (default): first order, finite-difference JVP, fused with the training step",
    "jvp": "jvp: first order, exact forward-mode JVP, fused",
    "unrolled": "unrolled: second order through its own unrolled step (before)",
}


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"# Speed benchmark ({env['device']}, {env['precision']}, {env['threads']} thread(s))",
        "",
        f"{env['date']}, hf_mrl {env['commit']}, torch {env['torch']}, {env['cpu_count']} CPUs; load average "
        f"before {env['loadavg_before']}, after {env['loadavg_after']}; {results['wall_s']:.0f} s in all.",
        "",
        "| acceptance check | measured | limit | |",
        "| --- | --- | --- | --- |",
    ]
    for c in results["acceptance"]:
        lines.append(f"| {c['check']} | {c['value']} | {c['limit']} | {'pass' if c['pass'] else 'FAIL'} |")
    step = results.get("step")
    if step:
        lines += ["", "## MRL step against plain KD (K=3, cached logits)", ""]
        lines += [
            f"Plain KD step: {1e3 * step['kd_step_s']:.1f} ms. Outer (hypergradient) step alone: "
            f"{1e3 * step['outer_step_s']:.1f} ms = {step['outer_over_kd_step']:.2f} KD steps.",
            "",
        ]
        lines += ["| outer_every | MRL step (ms) | MRL / KD |", "| --- | --- | --- |"]
        for oe, t in step["mrl_step_s"].items():
            mark = " (default)" if int(oe) == step["default_outer_every"] else ""
            lines.append(f"| {oe}{mark} | {1e3 * t:.1f} | {step['mrl_over_kd'][oe]:.2f} |")
        if step.get("hypergradient_step_s"):
            lines += [
                "",
                f"The same hypergradient computed three ways, outer_every={step['default_outer_every']}:",
                "",
            ]
            lines += ["| hypergradient | MRL step (ms) | MRL / KD |", "| --- | --- | --- |"]
            for mode, t in step["hypergradient_step_s"].items():
                lines.append(
                    f"| {HYPERGRADIENT_TEXT.get(mode, mode)} | {1e3 * t:.1f} | {step['hypergradient_over_kd'][mode]:.2f} |"
                )
    memory = results.get("memory")
    if memory:
        lines += ["", "## Peak memory (fresh process per row)", ""]
        lines += ["| variant | working set growth (MB) | process peak (MB) | / KD (working, total) |"]
        lines += ["| --- | --- | --- | --- |"]
        for name, r in memory.items():
            ratio = f"{r.get('working_over_kd', float('nan')):.2f}, {r.get('total_over_kd', float('nan')):.2f}"
            lines.append(
                f"| {name} | {r.get('working_mb') or float('nan'):.0f} | {r.get('total_mb', 0):.0f} | {ratio} |"
            )
    cache = results.get("cache")
    if cache:
        lines += ["", f"## Teacher logits: Hub-format teachers, {cache['samples']} samples", ""]
        lines += ["| run | seconds | teacher forward samples |", "| --- | --- | --- |"]
        for name in ("first_run", "second_run", "other_seed", "first_run_bf16"):
            if name in cache:
                lines.append(
                    f"| {name.replace('_', ' ')} | {cache[name]['seconds']:.2f} | {cache[name]['forward_samples']} |"
                )
        if "mrl_epoch_s" in cache:
            lines += [
                "",
                f"One MRL epoch over the unlabeled set: {cache['mrl_epoch_s']:.1f} s. The first run's teacher "
                f"cost is {cache['first_run_over_epoch']:.2f} epochs, paid once; later runs "
                f"{cache['later_runs_over_epoch']:.3f} epochs.",
            ]
    teachers = results.get("teachers")
    if teachers:
        lines += ["", "## Scaling in the number of teachers (cheap synthetic teachers)", ""]
        lines += ["| K | logits cold (s) | logits warm (s) | warm teacher forwards | MRL step (ms) | / smallest K |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for k, r in teachers.items():
            ratio = next(v for key, v in r.items() if key.startswith("mrl_step_over"))
            lines.append(
                f"| {k} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | {r['warm_forward_samples']} | "
                f"{1e3 * r['mrl_step_s']:.1f} | {ratio:.2f} |"
            )
        mem = {k: v for k, v in (memory or {}).items() if k.startswith("mrl_k")}
        if len(mem) > 1:
            lines += [
                "",
                "Peak memory by K: "
                + ", ".join(
                    f"K={k[5:]}: {v.get('working_mb') or float('nan'):.0f} MB working / {v.get('total_mb', 0):.0f} MB total"
                    for k, v in mem.items()
                ),
            ]
    unl = results.get("unlabeled")
    if unl:
        lines += ["", "## Scaling in the unlabeled set (K=3 cheap teachers)", ""]
        lines += [
            "| unlabeled | images (MB) | cache cold (s) | cache warm (s) | warm forwards | cache on disk (MB) | "
            "MRL step (ms) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n, r in unl.items():
            lines.append(
                f"| {int(n):,} | {r['images_mb']:.0f} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | "
                f"{r['warm_forward_samples']} | {r['cache_disk_mb']:.1f} | {1e3 * r['mrl_step_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the machinery")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="teacher inference precision; on CUDA also the student's mixed precision",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1 by default: on a shared 2-core machine 2 threads were up to 6x "
        "slower per step under load)",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--max_unlabeled", type=int, default=None, help="add this unlabeled-set size (e.g. 1000000)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/speed-<device>[-quick].json; .md beside)")
    p.add_argument("--patch", help="a Python file run first (and in probe processes): measure a proposed change")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False).")
    if args.patch:
        runpy.run_path(args.patch, run_name="hf_mrl_bench_patch")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.max_unlabeled:
        sizes.unlabeled = tuple(sorted(set(sizes.unlabeled) | {args.max_unlabeled}))
    if args.probe:
        print(json.dumps(run_probe(json.loads(args.probe), sizes, args.device, args.precision)))
        return {}
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"error: unknown sections {sorted(unknown)}; choose from {SECTIONS}.")
    import logging

    logging.disable(logging.WARNING)  # cheap synthetic teachers trigger no useful warnings
    started = time.perf_counter()
    results = {
        "environment": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _commit(),
            "device": torch.cuda.get_device_name()
            if args.device == "cuda"
            else f"cpu ({platform.processor() or platform.machine()})",
            "precision": args.precision,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg_before": _loadavg(),
            "quick": args.quick,
            "patch": args.patch,
            "sizes": dataclasses.asdict(sizes),
        }
    }
    log = lambda msg: print(f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if "step" in sections:
        log("step: MRL against plain KD")
        results["step"] = section_step(sizes, args.device, args.precision)
    if "memory" in sections:
        log("memory: one process per variant")
        ks = sizes.teachers if "teachers" in sections else (3,)
        results["memory"] = section_memory(sizes, args, ks=tuple(sorted(set(ks) | {3})))
    if "cache" in sections:
        log("cache: Hub-format teachers, first and later runs")
        results["cache"] = section_cache(sizes, args, results.get("step"))
    if "teachers" in sections:
        log("teachers: K = " + ", ".join(map(str, sizes.teachers)))
        results["teachers"] = section_teachers(sizes, args.device, args.precision)
    if "unlabeled" in sections:
        log("unlabeled: " + ", ".join(map(str, sizes.unlabeled)))
        results["unlabeled"] = section_unlabeled(sizes, args.device, args.precision)
    results["environment"]["loadavg_after"] = _loadavg()
    results["wall_s"] = time.perf_counter() - started
    results["acceptance"] = acceptance(results)
    table = markdown(results)
    print(table)
    out = Path(args.out) if args.out else RESULTS / f"speed-{args.device}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
