"""Tiny, offline builders shared by the tests: teachers saved the way the Hub stores them, images, datasets.

Import with `from helpers import ...` (pytest puts `tests/` on `sys.path`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hf_mrl.utils import torch_threads

__all__ = [
    "CLASS_COLOURS",
    "make_images",
    "make_labeled_images",
    "make_target_dataset",
    "make_timm_teacher",
    "make_transformers_teacher",
    "load_recipe",
    "one_torch_thread",
]

# Distinct RGB colours, one per class (cycled past 8 classes).
CLASS_COLOURS = np.array(
    [
        [220, 40, 40],
        [40, 200, 40],
        [40, 60, 220],
        [220, 200, 40],
        [200, 40, 200],
        [40, 200, 200],
        [240, 240, 240],
        [30, 30, 30],
    ],
    dtype=np.float32,
)


def load_recipe(name: str):
    """`recipes/NAME.py` or `benchmarks/NAME.py` imported as a module (registered in sys.modules: dataclasses look
    their module up there)."""
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[1]
    path = root / "recipes" / f"{name}.py"
    if not path.is_file():
        path = root / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def one_torch_thread():
    """Run torch on one intra-op thread: tiny models are faster so, and far faster on a busy 2-core machine."""
    return torch_threads(1)


def make_transformers_teacher(directory: str | os.PathLike, label_names: Sequence[str], seed: int = 0) -> Path:
    """A tiny transformers ResNet image classifier (+ a 16x16 ViTImageProcessor) saved in `directory`."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    directory = Path(directory)
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 8],
        depths=[1, 1],
        layer_type="basic",
        id2label={i: str(n) for i, n in enumerate(label_names)},
        label2id={str(n): i for i, n in enumerate(label_names)},
    )
    model = ResNetForImageClassification(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(directory)
    return directory


def make_timm_teacher(directory: str | os.PathLike, label_names: Sequence[str], seed: int = 0) -> Path:
    """A tiny timm `test_resnet` classifier with a 16x16 pretrained config, saved as timm pushes to the Hub."""
    import timm

    directory = Path(directory)
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(label_names)).eval()
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, 16, 16),
        "crop_pct": 1.0,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "label_names": [str(n) for n in label_names],
    }
    timm.models.save_for_hf(
        model, str(directory), model_config={"label_names": [str(n) for n in label_names]}, safe_serialization=True
    )
    return directory


def make_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random uint8 images (n, 3, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def make_labeled_images(labels: Sequence[int], size: int = 16, seed: int = 0, domain: Sequence[int] | None = None):
    """uint8 images (n, 3, size, size): each class a distinct colour plus noise; domain 1 is darker."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    base = CLASS_COLOURS[labels % len(CLASS_COLOURS)][:, :, None, None]  # (n, 3, 1, 1)
    if domain is not None:
        base = base * np.where(np.asarray(domain) == 1, 0.6, 1.0)[:, None, None, None]
    noise = rng.normal(0.0, 25.0, size=(len(labels), 3, size, size))
    return torch.from_numpy(np.clip(base + noise, 0, 255).astype(np.uint8))


def make_target_dataset(
    path: str | os.PathLike,
    n_labeled_per_class: int = 2,
    n_unlabeled: int = 24,
    n_test: int = 12,
    label_names: Sequence[str] = ("a", "b", "c"),
    size: int = 16,
    seed: int = 0,
) -> Path:
    """Write a `datasets.DatasetDict` (labeled / unlabeled / test; image, label, domain) with `save_to_disk`."""
    import datasets

    rng = np.random.default_rng(seed)
    c = len(label_names)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(label_names)),
            "domain": datasets.ClassLabel(names=["d0", "d1"]),
        }
    )
    sizes = {"labeled": n_labeled_per_class * c, "unlabeled": n_unlabeled, "test": n_test}
    splits = {}
    for i, (split, n) in enumerate(sizes.items()):
        if split == "labeled":
            labels = np.repeat(np.arange(c), n_labeled_per_class)
        else:
            labels = np.arange(n) % c  # every class present
            rng.shuffle(labels)
        domains = rng.integers(0, 2, size=n)
        images = make_labeled_images(labels, size=size, seed=seed * 10 + i, domain=domains)
        arrays = images.permute(0, 2, 3, 1).numpy()
        splits[split] = datasets.Dataset.from_dict(
            {"image": list(arrays), "label": labels.tolist(), "domain": domains.tolist()}, features=features
        )
    path = Path(path)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path
