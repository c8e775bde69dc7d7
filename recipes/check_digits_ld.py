"""Calibration check for Digits-LD: a small CNN per domain, trained on the domain's source part, tested on every
domain's target-test part. The diagonal should be high and the off-diagonal low (no teacher covers every domain).

Usage:
    python recipes/check_digits_ld.py [--epochs 8] [--norm image|global] [--samples /tmp/digits_ld_samples.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from hf_mrl.data import DOMAINS, dataset_to_tensors, load_digits_ld, load_domain, load_source


def small_cnn(num_classes: int = 10) -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 32),
        *block(32, 64),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def preprocess(x: torch.Tensor, norm: str) -> torch.Tensor:
    x = x.float() / 255.0
    if norm == "image":  # per-image standardisation: removes each image's brightness and contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return (x - mean) / std
    return (x - 0.5) / 0.5


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, shift: int) -> nn.Module:
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            xb = x[idx]
            if shift:  # random translation, a standard light augmentation for digits
                dx, dy = torch.randint(-shift, shift + 1, (2,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = torch.cat([model(xb).argmax(1) for xb in x.split(512)])
    return (pred == y).float().mean().item()


def save_samples(path: str, per_domain: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(DOMAINS), per_domain, figsize=(per_domain * 1.0, len(DOMAINS) * 1.1))
    for r, code in enumerate(DOMAINS):
        ds = load_domain(code)
        rows = np.random.default_rng(0).choice(len(ds), per_domain, replace=False)
        for c, i in enumerate(rows):
            ex = ds[int(i)]
            axes[r, c].imshow(ex["image"], interpolation="nearest")
            axes[r, c].set_title(f"{code}:{ex['label']}", fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--norm", choices=["image", "global"], default="image")
    parser.add_argument("--shift", type=int, default=2, help="max random translation in pixels (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", default="/tmp/digits_ld_samples.png", help="PNG grid of samples ('' to skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    for code in DOMAINS:
        t = time.perf_counter()
        load_domain(code)
        print(f"load_domain({code!r}): {time.perf_counter() - t:.1f}s")
    if args.samples:
        save_samples(args.samples)
        print(f"samples -> {args.samples}")

    tests = {}
    for code in DOMAINS:
        x, y, _ = dataset_to_tensors(load_digits_ld(code, labeled_per_class=1)["test"])
        tests[code] = (preprocess(x, args.norm), y)
    matrix = np.zeros((len(DOMAINS), len(DOMAINS)))
    for r, src in enumerate(DOMAINS):
        t = time.perf_counter()
        x, y, _ = dataset_to_tensors(load_source(src)["train"])
        model = train(preprocess(x, args.norm), y, args.epochs, args.seed, args.shift)
        for c, tgt in enumerate(DOMAINS):
            matrix[r, c] = accuracy(model, *tests[tgt])
        print(f"teacher {src}: trained on {len(x)} images in {time.perf_counter() - t:.1f}s")

    print(f"\naccuracy (rows: teacher trained on source part; cols: target-test part), norm={args.norm}")
    print("      " + "".join(f"{c:>8}" for c in DOMAINS))
    for r, src in enumerate(DOMAINS):
        print(f"{src:>6}" + "".join(f"{matrix[r, c]:8.3f}" for c in range(len(DOMAINS))))
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
