"""Build the Digits-LD teacher pool: one teacher per domain, each a Hub-format model repository.

The teachers deliberately span libraries (timm and transformers) and differ from the student's
architecture, as a real Hub pool would.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_mrl.utils import atomic_dir, atomic_write_text, cache_root, read_json, torch_threads

__all__ = [
    "TEACHER_SPECS",
    "build_digits_pool",
    "default_pool_dir",
    "make_timm_classifier",
    "make_transformers_classifier",
    "train_classifier",
]

logger = logging.getLogger(__name__)

_VERSION = 1
# Teachers train on this many torch threads whatever the caller's count: the weights depend on it (reduction
# order), and the committed Digits-LD tables were made with teachers built on two (a 2-core machine's default).
TEACHER_THREADS = 2
_LABELS = [str(i) for i in range(10)]
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# domain -> (library, architecture/config, epochs)
TEACHER_SPECS = {
    "M": {"library": "timm", "architecture": "test_resnet", "epochs": 8},
    "U": {"library": "transformers", "model_type": "convnext", "epochs": 30},
    "S": {"library": "transformers", "model_type": "resnet", "epochs": 12},
}


def default_pool_dir() -> Path:
    return cache_root() / f"digits_ld_pool_v{_VERSION}"


def make_timm_classifier(architecture: str, labels: list[str] = _LABELS):
    """A fresh 32 px timm classifier over `labels` and its preprocessing (uint8 tensors -> model inputs)."""
    import timm

    model = timm.create_model(architecture, num_classes=len(labels))
    mean, std = _IMAGENET
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, 32, 32),
        "test_input_size": (3, 32, 32),
        "crop_pct": 1.0,
        "test_crop_pct": 1.0,
        "mean": mean,
        "std": std,
        "label_names": list(labels),
    }
    from hf_mrl.pool.model_pool import _timm_preprocess

    return model, _timm_preprocess(model.pretrained_cfg)


def make_transformers_classifier(model_type: str, labels: list[str] = _LABELS):
    """A fresh 32 px transformers classifier (`resnet` or `convnext`) over `labels`, its processor and preprocessing."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTImageProcessor,
    )

    names = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    if model_type == "resnet":
        config = ResNetConfig(
            num_channels=3,
            embedding_size=24,
            hidden_sizes=[24, 48, 96],
            depths=[1, 1, 1],
            layer_type="basic",
            **names,
        )
        model = ResNetForImageClassification(config)
        mean, std = _IMAGENET
    else:
        config = ConvNextConfig(
            num_channels=3, patch_size=2, num_stages=3, hidden_sizes=[24, 48, 96], depths=[1, 1, 1], **names
        )
        model = ConvNextForImageClassification(config)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(mean), image_std=list(std))

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        return processor(images=images, return_tensors="pt")["pixel_values"]

    return model, processor, preprocess


def train_classifier(
    model: torch.nn.Module,
    preprocess,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> torch.nn.Module:
    """Plain supervised training with random translations; enough for a domain-expert teacher."""
    from hf_mrl.data.augment import translate as _translate

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            x = _translate(preprocess(images[idx]), gen)
            out = model(x)
            loss = F.cross_entropy(getattr(out, "logits", out), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model, preprocess, images, labels) -> float:
    out = torch.cat(
        [getattr(o, "logits", o) for o in (model(preprocess(images[i : i + 512])) for i in range(0, len(images), 512))]
    )
    return (out.argmax(-1) == labels).float().mean().item()


def _teacher_card(domain: str, spec: dict, val_acc: float) -> str:
    return (
        f"---\nlibrary_name: {spec['library']}\ntags:\n- image-classification\n- digits-ld\n- hf_mrl-teacher\n---\n\n"
        f"# Digits-LD teacher for domain {domain}\n\n"
        f"A small {spec['library']} digit classifier trained only on the source part of Digits-LD domain "
        f"`{domain}` (built by `recipes/build_pool.py`). Validation accuracy on that domain: {val_acc:.4f}.\n"
        "It is meant as one teacher of an hf_mrl pool; on other digit domains it is weak by design.\n"
    )


def _source_tensors(domain: str):
    from hf_mrl.data import dataset_to_tensors, load_source

    source = load_source(domain)
    return dataset_to_tensors(source["train"])[:2], dataset_to_tensors(source["validation"])[:2]


def _build_info(domain: str, seed: int, train_images: torch.Tensor) -> dict:
    """What a cached teacher must match to be reused: builder version, recipe, seed and its training data."""
    from hf_mrl.pool.cache import fingerprint

    return {
        "version": _VERSION,
        "domain": domain,
        "spec": TEACHER_SPECS[domain],
        "seed": seed,
        "data": fingerprint(train_images),
        "threads": TEACHER_THREADS,
    }


def _build_teacher(domain: str, out_dir: Path, seed: int) -> float:
    spec = TEACHER_SPECS[domain]
    (x_tr, y_tr), (x_va, y_va) = _source_tensors(domain)
    torch.manual_seed(seed)
    with atomic_dir(out_dir) as tmp:
        if spec["library"] == "timm":
            import timm

            model, preprocess = make_timm_classifier(spec["architecture"])
            train_classifier(model, preprocess, x_tr, y_tr, spec["epochs"], seed=seed)
            timm.models.save_for_hf(model, str(tmp), model_config={"label_names": _LABELS}, safe_serialization=True)
        else:
            model, processor, preprocess = make_transformers_classifier(spec["model_type"])
            train_classifier(model, preprocess, x_tr, y_tr, spec["epochs"], seed=seed)
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        acc = _accuracy(model, preprocess, x_va, y_va)
        (tmp / "README.md").write_text(_teacher_card(domain, spec, acc))
        info = {**_build_info(domain, seed, x_tr), "val_accuracy": acc}
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2))
    return acc


def build_digits_pool(output_dir: str | os.PathLike | None = None, domains: str = "MUS", seed: int = 0) -> Path:
    """Train (or reuse) one teacher per domain and write `hub-ids.txt` listing them; returns that file.

    A teacher folder with a matching `build_info.json` is reused, so a second run trains nothing.
    """
    out = Path(output_dir) if output_dir is not None else default_pool_dir()
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for domain in domains:
        if domain not in TEACHER_SPECS:
            raise ValueError(f"Unknown Digits-LD domain {domain!r}; choose from {''.join(TEACHER_SPECS)}.")
        folder = out / f"teacher-{domain}"
        info = folder / "build_info.json"
        expected = _build_info(domain, seed, _source_tensors(domain)[0][0])
        recorded = read_json(info) if info.is_file() else {}
        if all(recorded.get(k) == v for k, v in expected.items()):
            logger.info("Reusing teacher %s from %s", domain, folder)
        else:
            logger.info("Training the %s teacher for domain %s", TEACHER_SPECS[domain]["library"], domain)
            with torch_threads(TEACHER_THREADS):
                acc = _build_teacher(domain, folder, seed)
            logger.info("Teacher %s: validation accuracy %.4f", domain, acc)
        names.append(folder.name)
    title = "# Digits-LD teacher pool: one teacher per latent domain (paths relative to this file)"
    return atomic_write_text(out / "hub-ids.txt", "\n".join([title, *names]) + "\n")
