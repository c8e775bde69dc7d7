"""The student: a timm image classifier, saved in timm's own Hub format so timm alone can load it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["DEFAULT_STUDENT", "create_student", "save_student", "load_student", "student_preprocess"]

# A ResNet-10 with narrow stages (~0.3M parameters): quick on 2 CPU cores, and unlike the teachers.
DEFAULT_STUDENT = {"architecture": "resnet10t", "model_args": {"channels": [16, 32, 64, 128], "stem_width": 16}}
_MEAN, _STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def create_student(
    label_names: list[str],
    image_size: int = 32,
    architecture: str = DEFAULT_STUDENT["architecture"],
    model_args: dict | None = None,
) -> torch.nn.Module:
    """A freshly initialised timm classifier for the target classes.

    Args:
        label_names: target class names; stored in the saved config so the student is self-describing.
        image_size: input side; recorded as the pretrained config's input size.
        architecture: any timm architecture name.
        model_args: keyword arguments of the timm entrypoint (kept in config.json for reloading).
    """
    import timm

    if model_args is None:
        model_args = DEFAULT_STUDENT["model_args"] if architecture == DEFAULT_STUDENT["architecture"] else {}
    try:
        model = timm.create_model(architecture, num_classes=len(label_names), **model_args)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"timm cannot build student {architecture!r} with {model_args}: {err}") from err
    # Drop timm's ImageNet provenance (tag, license, origin): this is a new model with its own training.
    inherited = {
        k: v for k, v in model.pretrained_cfg.items() if k not in ("tag", "license", "origin_url", "hf_hub_id")
    }
    model.pretrained_cfg = {
        **inherited,
        "input_size": (3, image_size, image_size),
        "test_input_size": (3, image_size, image_size),
        "crop_pct": 1.0,
        "test_crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": _MEAN,
        "std": _STD,
        "label_names": list(label_names),
    }
    model.hf_mrl_model_args = dict(model_args)
    return model


def student_preprocess(model: torch.nn.Module):
    """The student's own eval transform as batched tensor ops (uint8 (B, 3, H, W) -> float)."""
    from .pool import _timm_preprocess

    return _timm_preprocess(model.pretrained_cfg)


def save_student(model: torch.nn.Module, save_directory: str | os.PathLike, card: str | None = None) -> Path:
    """Write config.json + model.safetensors (+ README.md) the way timm's `push_to_hf_hub` does."""
    import timm

    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    label_names = model.pretrained_cfg.get("label_names")
    timm.models.save_for_hf(
        model,
        str(save_directory),
        model_config={"label_names": label_names},
        model_args=getattr(model, "hf_mrl_model_args", None),
        safe_serialization=True,
    )
    if card is not None:
        (save_directory / "README.md").write_text(card)
    return save_directory


def load_student(path_or_repo: str) -> torch.nn.Module:
    """Load a saved student with timm alone (a local folder or a Hub id)."""
    import timm

    prefix = "local-dir:" if os.path.isdir(path_or_repo) else "hf-hub:"
    return timm.create_model(prefix + str(path_or_repo), pretrained=True).eval()
