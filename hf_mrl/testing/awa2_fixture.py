"""A tiny AwA2 folder in the published layout, for tests and for trying the loader without the 13 GB download."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["FIXTURE_CLASSES", "FIXTURE_PREDICATES", "make_awa2_fixture"]

# Real AwA2 class names (with its '+' for spaces) and predicates: the paper's seven among two others, so a loader
# that ignores the predicate order or the case of the names picks the wrong column.
FIXTURE_CLASSES = ("antelope", "grizzly+bear", "dalmatian", "dolphin", "spider+monkey", "mole")
FIXTURE_PREDICATES = ("black", "smart", "slow", "white", "bulbous", "solitary", "nestspot", "lean", "spots")


def make_awa2_fixture(
    root: str | os.PathLike,
    classes: Sequence[str] = FIXTURE_CLASSES,
    predicates: Sequence[str] = FIXTURE_PREDICATES,
    images_per_class: int = 6,
    size: int = 24,
    seed: int = 0,
) -> Path:
    """Write `classes.txt`, `predicates.txt`, `predicate-matrix-binary.txt` and `JPEGImages/<class>/*.jpg`.

    Each predicate column is a seeded permutation of half zeros and half ones over the classes (so every attribute
    has both values); each class's images are one colour plus noise, so a model can tell the classes apart.

    Args:
        root: folder to create (its parents too).
        classes: class names, one image folder each.
        predicates: predicate names, one matrix column each.
        images_per_class: JPEGs per class.
        size: image side in pixels.
        seed: seeds the matrix and the images.

    Returns:
        `root`, as a `Path`.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(classes, start=1)))
    (root / "predicates.txt").write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(predicates, start=1)))
    half = np.arange(len(classes)) % 2  # (C,) balanced 0/1
    matrix = np.stack([rng.permutation(half) for _ in predicates], axis=1)  # (C, P)
    (root / "predicate-matrix-binary.txt").write_text("".join(" ".join(map(str, row)) + "\n" for row in matrix))
    for name in classes:
        folder = root / "JPEGImages" / name
        folder.mkdir(exist_ok=True)
        colour = rng.integers(30, 226, size=3)
        for i in range(images_per_class):
            pixels = np.clip(colour + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
            # AwA2's own names: <class>_<5-digit number>.jpg
            Image.fromarray(pixels).save(folder / f"{name}_{10001 + i}.jpg", quality=90)
    return root
