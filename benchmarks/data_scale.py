"""Memory and teacher throughput of the lazy data path at 224 px, measured in one run.

    python benchmarks/data_scale.py                      # 10,000 vs 100,000 unlabeled 224 px images (long, ~1 h on 2 cores)
    python benchmarks/data_scale.py --quick              # 300 vs 3,000 at 64 px: what the tests run
    python benchmarks/data_scale.py --device cuda --precision bf16   # on a GPU machine (see gpu_check.sh)

- memory: a run (`ReuseTrainer`: the teacher pass over labeled, unlabeled and test images, then `--steps` MRL
  student steps; no guard, no supervised baseline) over N_small and N_large unlabeled images, each in a fresh
  process. Peak resident set of the run's main process (VmHWM) and the peak of its anonymous memory (RssAnon,
  sampled), and the same summed with its DataLoader workers; the ratio large / small of each. Pages of the
  memory-mapped Arrow files count in VmHWM while they are mapped (the kernel drops them under pressure), which is why
  the anonymous peak is shown beside it. On CPU these runs' teachers take `--memory_teacher_size` inputs (64 px: they
  read the 224 px originals through their processors, which resize), so that 100,000 images stay affordable on 2
  cores; memory per batch does not depend on N, which is what the ratio measures.
- throughput: `ModelPool.probs` over the small set with a cold cache against a plain loop of the same teachers
  over the same images with the same DataLoader (decoding and each teacher's own processor in `--workers`
  processes), in interleaved rounds; the ratio of images per second.

Images are generated once (seeded JPEGs of smooth noise with shapes, `--image_size` px) into a `save_to_disk`
dataset under `--data_dir`; the teachers are two small timm ViTs (`test_vit`) with random weights (what they predict
does not matter here) sharing one preprocessing, and one small transformers ResNet with its own processor. Results: `--out` (JSON) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
LABELS = [str(i) for i in range(10)]
FULL = {"sizes": [10_000, 100_000], "image_size": 224, "steps": 200, "rounds": 2, "throughput_images": 1000}
FULL["memory_teacher_size"] = 64
QUICK = {"sizes": [300, 3000], "image_size": 64, "steps": 20, "rounds": 2, "throughput_images": 300}
QUICK["memory_teacher_size"] = 64


# ----------------------------------------------------------------------------------------------- data, teachers


def _image(rng: np.random.Generator, size: int) -> bytes:
    from PIL import Image, ImageDraw

    low = rng.random((8, 8, 3))
    img = Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, size, 2)
        x1, y1 = np.array([x0, y0]) + rng.integers(size // 8, size // 2, 2)
        draw.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buf = __import__("io").BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_data(folder: Path, num_unlabeled: int, size: int) -> Path:
    """labeled (100), unlabeled (`num_unlabeled`), test (500) splits of generated JPEGs; built once."""
    import datasets

    done = folder / "dataset_dict.json"
    if done.is_file() and json.loads((folder / "build.json").read_text()) == [num_unlabeled, size]:
        return folder
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=LABELS)})

    def rows(n: int, seed: int):
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield {"image": {"bytes": _image(rng, size), "path": None}, "label": i % len(LABELS)}

    parts = {
        name: datasets.Dataset.from_generator(rows, gen_kwargs={"n": n, "seed": s}, features=features)
        for name, n, s in (("labeled", 100, 0), ("unlabeled", num_unlabeled, 1), ("test", 500, 2))
    }
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    (folder / "build.json").write_text(json.dumps([num_unlabeled, size]))
    return folder


def build_teachers(folder: Path, size: int) -> list[str]:
    import timm
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    out = []
    for i, arch in enumerate(("test_vit", "test_vit")):
        path = folder / f"t{i}-{arch}-{size}"
        if not (path / "model.safetensors").is_file():
            torch.manual_seed(i)
            model = timm.create_model(arch, num_classes=len(LABELS))
            model.pretrained_cfg = {
                **model.pretrained_cfg,
                **{"input_size": (3, size, size), "crop_pct": 1.0, "label_names": LABELS},
                **{"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear"},
            }
            timm.models.save_for_hf(model, str(path), model_config={"label_names": LABELS}, safe_serialization=True)
        out.append(str(path))
    path = folder / f"t2-hf-resnet-{size}"
    if not (path / "model.safetensors").is_file():
        torch.manual_seed(2)
        names = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
        config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", **names)
        ResNetForImageClassification(config).save_pretrained(path)
        ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    out.append(str(path))
    return out


# ----------------------------------------------------------------------------------------------- memory probe


def _status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class _Sampler(threading.Thread):
    """Peaks of this process's anonymous memory and of the resident set of this process with its children."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_anon = self.peak_total_rss = self.peak_total_anon = 0
        self.stop = threading.Event()

    def _children(self) -> list[int]:
        try:
            return [int(p) for p in open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()]
        except OSError:
            return []

    def run(self):
        while not self.stop.wait(0.05):
            me = _status()
            kids = [_status(p) for p in self._children()]
            self.peak_anon = max(self.peak_anon, me.get("RssAnon", 0))
            total_rss = me.get("VmRSS", 0) + sum(k.get("VmRSS", 0) for k in kids)
            total_anon = me.get("RssAnon", 0) + sum(k.get("RssAnon", 0) for k in kids)
            self.peak_total_rss = max(self.peak_total_rss, total_rss)
            self.peak_total_anon = max(self.peak_total_anon, total_anon)


def probe(args) -> dict:
    """One run in this (fresh) process: teacher pass + `steps` student steps over `n` unlabeled images."""
    from hf_mrl import ModelPool, MRLConfig, ReuseArguments, ReuseTrainer
    from hf_mrl.data.target import load_target

    torch.set_num_threads(args.threads)
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    data, _ = load_target(args.data, unlabeled_split=f"unlabeled[:{args.n}]", image_size=args.student_size)
    pool = ModelPool(args.teachers.split(","), LABELS, cache_dir=args.cache_dir, precision=args.precision)
    pool.to(args.device)
    config = MRLConfig(max_steps=args.steps, seed=0)
    run = ReuseArguments(guard_folds=0, supervised_baseline=False, progress=False, dataloader_num_workers=args.workers)
    trainer = ReuseTrainer(pool, data, config, run)
    t0 = time.perf_counter()
    trainer.compute_teacher_outputs()
    teacher_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t0
    total_s = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    me = _status()
    return {
        "n": args.n,
        "teacher_pass_s": teacher_s,
        "student_step_s": train_s / args.steps,  # includes the final test predictions
        "run_s": total_s,
        "peak_rss_mb": me["VmHWM"] / 2**20,
        "peak_anon_mb": sampler.peak_anon / 2**20,
        "peak_rss_with_workers_mb": sampler.peak_total_rss / 2**20,
        "peak_anon_with_workers_mb": sampler.peak_total_anon / 2**20,
        "rss_file_at_end_mb": me.get("RssFile", 0) / 2**20,
        "student_accuracy": result.metrics["student_accuracy"],
    }


# ----------------------------------------------------------------------------------------------- throughput


def throughput(data_dir: str, teachers: list[str], n: int, workers: int, rounds: int, device: str, precision: str):
    """Images per second of `ModelPool.probs` (cold cache) and of a plain loop over the same DataLoader."""
    import tempfile

    from hf_mrl import ModelPool
    from hf_mrl.data.target import load_target

    data, _ = load_target(data_dir, unlabeled_split=f"unlabeled[:{n}]")
    images = data.unlabeled_images
    reference = ModelPool(teachers, LABELS, precision=precision).to(device)
    groups: dict[str, list] = {}
    for t in reference.teachers:
        groups.setdefault(t.transform_key, []).append(t)

    def transforms(imgs):
        return {key: ts[0].transform(imgs) for key, ts in groups.items()}

    def plain() -> float:
        t0 = time.perf_counter()
        for _, inputs in images.batches(transforms, batch_size=reference.batch_size, num_workers=workers):
            for key, ts in groups.items():
                for t in ts:
                    t.logits_of_inputs(inputs[key], precision)
        return time.perf_counter() - t0

    def pool_probs() -> float:
        with tempfile.TemporaryDirectory() as cache:
            pool = ModelPool(reference.teachers, LABELS, cache_dir=cache, precision=precision)
            fresh = images.subset(np.arange(len(images)))  # its keys are not computed yet: part of the cost
            t0 = time.perf_counter()
            pool.probs(fresh, num_workers=workers)
            return time.perf_counter() - t0

    plain()  # warm-up: first batches, page cache
    times = {"plain": [], "pool": []}
    for r in range(rounds):
        for name, fn in (
            (("plain", plain), ("pool", pool_probs)) if r % 2 == 0 else (("pool", pool_probs), ("plain", plain))
        ):
            times[name].append(fn())
    plain_s, pool_s = statistics.median(times["plain"]), statistics.median(times["pool"])
    return {
        "images": n,
        "teachers": len(teachers),
        "preprocessing_groups": len(groups),
        "plain_loop_s": times["plain"],
        "pool_probs_s": times["pool"],
        "plain_images_per_s": n / plain_s,
        "pool_images_per_s": n / pool_s,
        "ratio": plain_s / pool_s,
    }


# ----------------------------------------------------------------------------------------------- main


def _fresh_process(args, n: int, teachers: list[str], cache_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--_probe", "--data", str(args.data_dir), "--n", str(n)]
    cmd += ["--teachers", ",".join(teachers), "--cache_dir", cache_dir, "--steps", str(args.steps)]
    cmd += ["--workers", str(args.workers), "--threads", str(args.threads), "--student_size", str(args.student_size)]
    cmd += ["--device", args.device, "--precision", args.precision]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"probe n={n} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{QUICK['sizes']} images at {QUICK['image_size']} px")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="small,large unlabeled sizes")
    p.add_argument("--image_size", type=int)
    p.add_argument("--steps", type=int, help="student steps after the teacher pass")
    p.add_argument("--student_size", type=int, default=32, help="the student's input side (32: the default student)")
    p.add_argument(
        "--memory_teacher_size",
        type=int,
        help="input side of the memory runs' teachers (they read the originals through their processors; default 64 "
        "on CPU, to keep 100,000 images affordable; --image_size on a GPU)",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    p.add_argument("--rounds", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--data_dir", help="where the generated dataset and teachers live (default: $HF_MRL_CACHE/...)")
    p.add_argument("--out", help="JSON result (default benchmarks/results/data_scale[-quick].json)")
    p.add_argument("--skip_memory", action="store_true")
    # the probe process
    p.add_argument("--_probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--teachers", help=argparse.SUPPRESS)
    p.add_argument("--cache_dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._probe:
        print(json.dumps(probe(args)))
        return
    preset = QUICK if args.quick else FULL
    for key in ("sizes", "image_size", "steps", "rounds", "memory_teacher_size"):
        if getattr(args, key) is None:
            setattr(
                args, key, preset[key] if key != "memory_teacher_size" or args.device == "cpu" else args.image_size
            )
    from hf_mrl.utils import cache_root

    root = Path(args.data_dir or cache_root() / f"data_scale_{args.image_size}px")
    root.mkdir(parents=True, exist_ok=True)
    args.data_dir = build_data(root / f"data-{max(args.sizes)}", max(args.sizes), args.image_size)
    teachers = build_teachers(root / "teachers", args.image_size)
    memory_teachers = build_teachers(root / "teachers", args.memory_teacher_size)
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain"], capture_output=True, text=True).stdout
    result = {
        "commit": commit.strip() + ("-dirty" if dirty.strip() else ""),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else argv,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "load_avg_before": os.getloadavg(),
        "settings": {
            k: getattr(args, k)
            for k in ("sizes", "image_size", "steps", "student_size", "memory_teacher_size", "workers", "threads")
        },
    }
    tp_n = min(args.sizes[0], preset["throughput_images"])
    torch.set_num_threads(args.threads)
    result["throughput"] = throughput(
        str(args.data_dir), teachers, tp_n, args.workers, args.rounds, args.device, args.precision
    )
    print(
        f"throughput: pool {result['throughput']['pool_images_per_s']:.1f} img/s, plain loop "
        f"{result['throughput']['plain_images_per_s']:.1f} img/s, ratio {result['throughput']['ratio']:.3f}",
        flush=True,
    )
    if not args.skip_memory:
        import tempfile

        runs = []
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as cache:
                runs.append(_fresh_process(args, n, memory_teachers, cache))
            print(json.dumps(runs[-1]), flush=True)
        small, large = runs[0], runs[-1]
        result["memory"] = {
            "runs": runs,
            "ratio_peak_rss": large["peak_rss_mb"] / small["peak_rss_mb"],
            "ratio_peak_anon": large["peak_anon_mb"] / small["peak_anon_mb"],
            "ratio_peak_rss_with_workers": large["peak_rss_with_workers_mb"] / small["peak_rss_with_workers_mb"],
            "ratio_peak_anon_with_workers": large["peak_anon_with_workers_mb"] / small["peak_anon_with_workers_mb"],
        }
    result["load_avg_after"] = os.getloadavg()
    out = Path(args.out or HERE / "results" / f"data_scale{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    t = r["throughput"]
    lines = [
        f"# Lazy data path at {r['settings']['image_size']} px",
        "",
        f"Commit {r.get('commit', 'unknown')}. Command: "
        f"`python benchmarks/{r['command'] if isinstance(r['command'], str) else 'data_scale.py'}`; "
        f"load average before {r['load_avg_before'][0]:.1f}, after {r['load_avg_after'][0]:.1f} "
        f"({r['machine']['cpus']} CPUs).",
        "",
        f"Teacher pass, {t['images']} images, {t['teachers']} teachers in {t['preprocessing_groups']} preprocessing "
        f"groups: `ModelPool.probs` {t['pool_images_per_s']:.1f} images/s against a plain loop "
        f"{t['plain_images_per_s']:.1f} images/s: **ratio {t['ratio']:.3f}** (median of {len(t['plain_loop_s'])} "
        "interleaved rounds each).",
        "",
        f"Memory runs: teachers at {r['settings'].get('memory_teacher_size')} px reading the "
        f"{r['settings']['image_size']} px originals, student at {r['settings']['student_size']} px, "
        f"{r['settings']['steps']} MRL steps, {r['settings']['workers']} DataLoader workers.",
    ]
    if "memory" in r:
        m = r["memory"]
        lines += [
            "",
            "| unlabeled images | teacher pass s | student s/step | run s | peak RSS MB | peak anon MB | peak RSS + workers MB "
            "| peak anon + workers MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for x in m["runs"]:
            lines.append(
                f"| {x['n']:,} | {x['teacher_pass_s']:.0f} | {x.get('student_step_s', float('nan')):.3f} | "
                f"{x['run_s']:.0f} | {x['peak_rss_mb']:.0f} | "
                f"{x['peak_anon_mb']:.0f} | {x['peak_rss_with_workers_mb']:.0f} | {x['peak_anon_with_workers_mb']:.0f} |"
            )
        lines.append(
            f"| **ratio** | | | | **{m['ratio_peak_rss']:.2f}** | **{m['ratio_peak_anon']:.2f}** | "
            f"{m['ratio_peak_rss_with_workers']:.2f} | {m['ratio_peak_anon_with_workers']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
