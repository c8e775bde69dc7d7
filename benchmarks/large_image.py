"""One very large image among small ones: peak memory and time per step against the same data without it.

    python benchmarks/large_image.py [--n 300] [--side 10000] [--steps 20]

Each case runs in a fresh process on a `save_to_disk` dataset (memory-mapped, as real runs read it): one teacher
pass over the originals (each resized to 224 px, as a teacher's processor does) and `--steps` student steps that
decode a 64-image batch at 32 px, the large image in every batch (the worst case: a small labeled set holding it).
Prints peak RSS and seconds per step of both cases and their ratios (the issue asks for 1.5x at most).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _write(folder: Path, n: int, side: int | None) -> None:
    import io

    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        items.append({"bytes": buf.getvalue(), "path": None})
    if side:
        big = np.zeros((side, side, 3), np.uint8)
        big[..., 0] = np.linspace(0, 255, side, dtype=np.uint8)[None, :]
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="PNG", compress_level=1)
        del big
        items[0] = {"bytes": buf.getvalue(), "path": None}
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": items}, features=features).save_to_disk(str(folder))


def _child(folder: str, steps: int) -> dict:
    import datasets

    from hf_mrl.data.images import ImageSet, to_uint8

    images = ImageSet(datasets.load_from_disk(folder), "image", 32, "bench")
    start = time.perf_counter()
    for i in range(0, len(images), 64):  # the teacher pass: originals through a 224 px processor
        [to_uint8(img, 224) for img in images.originals(np.arange(i, min(i + 64, len(images))))]
    teacher_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        batch = np.concatenate([[0], rng.choice(np.arange(1, len(images)), 63, replace=False)])
        images[batch]
    step_s = (time.perf_counter() - start) / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"teacher_pass_s": teacher_s, "step_s": step_s, "peak_rss_mb": peak_mb}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--side", type=int, default=10000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        print(json.dumps(_child(args._child, args.steps)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, side in (("small only", None), (f"with one {args.side}x{args.side}", args.side)):
            folder = Path(tmp) / name.replace(" ", "_")
            _write(folder, args.n, side)
            cmd = [sys.executable, __file__, "--_child", str(folder), "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    base, big = results.values()
    print(f"{'case':24s} {'peak RSS MB':>12s} {'s/step':>9s} {'teacher pass s':>15s}")
    for name, r in results.items():
        print(f"{name:24s} {r['peak_rss_mb']:12.0f} {r['step_s']:9.4f} {r['teacher_pass_s']:15.2f}")
    print(
        f"ratios: peak RSS {big['peak_rss_mb'] / base['peak_rss_mb']:.2f}x, time per step "
        f"{big['step_s'] / base['step_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
