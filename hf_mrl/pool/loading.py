"""Loading a teacher's files: resolve (Hub or local), detect the library, check the weights (safetensors, finite), build the model and its processor."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hf_mrl.paths import missing_folder_message
from hf_mrl.pool.ids import _PICKLE_WEIGHTS, _WEIGHTS, TeacherLoadError, _is_local, parse_teacher_id
from hf_mrl.pool.labels import imagenet_descriptions
from hf_mrl.utils import read_json

logger = logging.getLogger(__name__)


# Files a teacher needs from a Hub repo; weights other than safetensors are only fetched with allow_pickle.
_HUB_PATTERNS = ("*.json", "*.safetensors", "*.md")


# Marker files of formats the pool cannot use, to say what a repo is instead of "unknown".
_OTHER_FORMATS = {
    "adapter_config.json": "a PEFT adapter",
    "model_index.json": "a diffusers pipeline",
    "open_clip_config.json": "an OpenCLIP model",
    "config_sentence_transformers.json": "a sentence-transformers model",
    "modules.json": "a sentence-transformers model",
    "params.json": "a raw (non-transformers) LLM checkpoint",
}


def _resolve(
    name: str,
    revision: str | None,
    token: str | bool | None,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    what: str = "Teacher",
) -> tuple[Path, str | None]:
    """Local folder of a teacher and its resolved commit (None for a local path).

    Hub ids go through huggingface_hub's cache (`snapshot_download`), so a repo fetched once online is found again
    with HF_HUB_OFFLINE=1, by branch, tag, or the commit recorded in `Teacher.id`. Python files are only fetched
    with `trust_remote_code`, pickle weights only with `allow_pickle`.
    """
    shown = f"{name}@{revision}" if revision else name

    def fail(reason: str, message: str) -> TeacherLoadError:
        return TeacherLoadError(shown, reason, message, what=what)

    if os.path.isdir(name):
        if revision is not None:
            raise fail("not_found", "is a local folder; a revision only applies to Hub ids.")
        return Path(name), None
    if _is_local(name):
        raise fail("not_found", "is a file, not a checkpoint folder or a Hub id.")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    missing = missing_folder_message(name)
    if missing:  # a typo in a local path: say so, not "not in the Hub cache"
        raise fail("not_found", f"was not found: {missing}.")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise fail(
            "not_found", "was not found: no such local folder, and not a Hub repo id (`org/name[@revision]`)."
        ) from None
    patterns = [*_HUB_PATTERNS, *(_PICKLE_WEIGHTS if allow_pickle else ()), *(("*.py",) if trust_remote_code else ())]
    try:
        folder = snapshot_download(name, revision=revision, token=token, allow_patterns=patterns)
    except GatedRepoError as err:
        raise fail(
            "gated",
            "is gated on the Hub: request access on its page, then log in (`hf auth login` or HF_TOKEN).",
        ) from err
    except RevisionNotFoundError as err:
        raise fail(
            "revision_not_found", f"was not found: the Hub repo {name!r} has no revision {revision!r}."
        ) from err
    except RepositoryNotFoundError as err:
        raise fail(
            "not_found",
            "was not found: no such local folder, and no Hub repository by that id that you can access "
            "(check the id; a private repo needs a token).",
        ) from err
    except LocalEntryNotFoundError as err:
        if constants.HF_HUB_OFFLINE:
            raise fail(
                "offline",
                f"is not in the Hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1: run once online to cache "
                "it (a revision is found offline only if that same revision was fetched online).",
            ) from err
        raise fail(
            "unreachable",
            f"is not in the Hub cache and the Hub ({constants.ENDPOINT}) cannot be reached: {err.__cause__ or err}",
        ) from err
    except HfHubHTTPError as err:
        raise fail("hub_error", f"could not be fetched from the Hub: {err}") from err
    return Path(folder), Path(folder).name


def _remote_pickle_weights(name: str, commit: str, token: str | bool | None) -> list[str]:
    """Pickle weight files of a Hub repo at `commit` (not downloaded unless allowed); [] when unknown."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return []
    try:
        files = HfApi().list_repo_files(name, revision=commit, token=token)
    except Exception:  # only used to word an error better
        return []
    return [f for f in files if f in _PICKLE_WEIGHTS]


def _detect_library(folder: Path, shown: str, what: str = "Teacher") -> tuple[str, dict]:
    """`timm` or `transformers` and the parsed config.json, from the checkpoint's files; raise for anything else."""

    def fail(message: str) -> TeacherLoadError:
        return TeacherLoadError(shown, "unknown_format", message, what=what)

    config_file = folder / "config.json"
    config: dict | None = None
    if config_file.is_file():
        try:
            config = read_json(config_file, what="its config.json")
        except ValueError as err:  # invalid JSON or not UTF-8 text
            raise fail(f"has a config.json that is not valid JSON ({err}).") from err
        if not isinstance(config, dict):
            raise fail("has a config.json that is not a JSON object.")
    if config is not None and "architecture" in config and "pretrained_cfg" in config:
        return "timm", config
    if config is not None and ("model_type" in config or "architectures" in config):
        return "transformers", config
    for marker, kind in _OTHER_FORMATS.items():
        if (folder / marker).is_file():
            raise fail(
                f"looks like {kind} ({marker}), not a transformers or timm checkpoint: unknown format for the pool.",
            )
    if config is None:  # its file names are not shown: the folder may be anything a pool line points at
        raise fail("has no config.json: not a transformers or timm checkpoint (config.json and its weights).")
    raise fail(
        "has a config.json that is neither timm's (`architecture` + `pretrained_cfg`) nor transformers' "
        "(`model_type`): unknown format.",
    )


def _timm_preprocess(cfg: dict):
    """The eval transform of timm (resize by crop_pct, centre crop, normalise) as batched tensor ops."""
    size = tuple(cfg.get("input_size", (3, 224, 224))[-2:])
    crop_pct = cfg.get("crop_pct") or 1.0
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, -1, 1, 1)
    scaled = tuple(int(s / crop_pct) for s in size)

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        if hasattr(images, "resized"):  # an ImageSet: decode its originals at the side wanted here
            images = images.resized(scaled[0])[:]
        x = images.float() / 255.0
        if tuple(x.shape[-2:]) != scaled:
            x = F.interpolate(x, size=scaled, mode="bilinear", antialias=True, align_corners=False)
        top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
        x = x[..., top : top + size[0], left : left + size[1]]
        return (x - mean) / std

    return preprocess


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a teacher-inference precision ("fp32": None, no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; choose one of {sorted(PRECISIONS)}.")
    return PRECISIONS[precision]


def _checked_checkpoint(
    shown: str,
    token: str | bool | None,
    allow_pickle: bool,
    trust_remote_code: bool,
    what: str = "Teacher",
) -> tuple[Path, str | None, str, dict, list[Path]]:
    """Resolve a checkpoint and apply the loading rules shared by teachers and encoders, before any library
    loads it: no repository code unless trusted, safetensors unless pickle is allowed, weights readable.

    Returns the folder, the resolved commit (None for a local folder), the library, config.json and the weights.
    """
    name, revision = parse_teacher_id(shown)
    folder, commit = _resolve(
        name, revision, token, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, what=what
    )
    library, config = _detect_library(folder, shown, what=what)
    if config.get("auto_map") and not trust_remote_code:
        raise TeacherLoadError(
            shown,
            "remote_code",
            "ships its own modelling code (`auto_map` in config.json), which would run on this machine: it is "
            "only loaded with trust_remote_code=True (`--trust_remote_code`). Review the repository first.",
            what=what,
        )
    weights = _weight_files(folder)
    if not weights:
        pickles = [p for p in _PICKLE_WEIGHTS if (folder / p).is_file()]
        if not pickles and commit is not None and not allow_pickle:
            pickles = _remote_pickle_weights(name, commit, token)
        if pickles and not allow_pickle:
            raise TeacherLoadError(
                shown,
                "unsafe_weights",
                f"only has pickle weights ({pickles[0]}), which can run arbitrary code when loaded. "
                "Convert it to safetensors, or pass allow_pickle=True (`--allow_pickle`) if you trust it.",
                what=what,
            )
        if not pickles:
            raise TeacherLoadError(shown, "no_weights", f"has no weights: expected {_WEIGHTS}.", what=what)
        weights = [folder / p for p in pickles]
    _check_safetensors(weights, shown, what=what)
    return folder, commit, library, config, weights


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of a checkpoint: one file, or the shards named by its index."""
    if (folder / _WEIGHTS).is_file():
        return [folder / _WEIGHTS]
    index = folder / f"{_WEIGHTS}.index.json"
    if index.is_file():
        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return []
        return [index, *(folder / s for s in shards)] if all((folder / s).is_file() for s in shards) else []
    return []


def _check_safetensors(weights: Sequence[Path], shown: str, what: str = "Teacher") -> None:
    """Read the header of each safetensors file: a truncated or corrupted file fails here, naming the file."""
    from safetensors import safe_open

    for path in weights:
        if path.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as err:  # SafetensorError is no built-in subclass; any failure means an unusable file
            raise TeacherLoadError(
                shown,
                "corrupted_weights",
                f"has a corrupted {path.name} ({err}): the file is truncated or not safetensors. Download it again "
                "(delete it from the Hub cache or pass force_download) or re-save the checkpoint.",
                what=what,
            ) from None


def _check_finite(model: torch.nn.Module, shown: str, what: str = "Teacher") -> None:
    """NaN or inf in the weights would poison every output: refuse the checkpoint, naming the first bad tensor."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TeacherLoadError(
                shown,
                "corrupted_weights",
                f"has NaN or infinite values in its weights ({name}): the checkpoint is corrupted or diverged.",
                what=what,
            )


def _files_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _load_timm(folder: Path, config: dict, shown: str):
    import timm

    if config.get("num_classes") == 0:
        raise TeacherLoadError(
            shown, "no_classification_head", "is a timm backbone without a classification head (num_classes=0)."
        )
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as err:  # timm raises many types for a broken checkpoint
        raise TeacherLoadError(shown, "load_failed", f"could not be loaded by timm ({err}).") from err
    labels = config.get("label_names") or config.get("pretrained_cfg", {}).get("label_names")
    if isinstance(labels, dict):  # timm allows {index: name}
        try:
            labels = [labels[k] for k in sorted(labels, key=int)]
        except (TypeError, ValueError):
            labels = None
    if not labels:  # an ImageNet head without names in its config: timm knows the classes of its ImageNet subsets
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        labels = ImageNetInfo(subset).label_names() if subset else None
    if not labels:
        raise TeacherLoadError(
            shown, "no_labels", "(timm) has no `label_names` in config.json: its outputs cannot be mapped."
        )
    if model.num_classes != len(labels):
        raise TeacherLoadError(shown, "no_labels", f"has {model.num_classes} outputs but {len(labels)} label names.")
    return model, list(labels), _timm_preprocess(model.pretrained_cfg), *timm_transform(model)


def timm_transform(model) -> tuple:
    """timm's own eval transform of `model` on decoded originals (PIL -> normalised tensor), and its identity."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    transform = create_transform(**cfg)
    return _PerImage(transform), "timm:" + json.dumps(cfg, sort_keys=True, default=str)


class _PerImage:
    """A per-image transform applied to a list of images and stacked (picklable for DataLoader workers)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, images: list) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in images])


class _Processor:
    """A transformers image processor on a list of images (picklable for DataLoader workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images: list) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


class _FromUint8:
    """A teacher without a processor of its own: its batched uint8 preprocessing on same-size originals."""

    def __init__(self, preprocess, name: str):
        self.preprocess, self.name = preprocess, name

    def __call__(self, images: list) -> torch.Tensor:
        sizes = {img.size for img in images}
        if len(sizes) > 1:
            raise ValueError(
                f"Teacher {self.name!r} has no processor of its own and the images differ in size ({sorted(sizes)[:3]}"
                "...): build it with Teacher(..., transform=fn) taking a list of PIL images, or load a checkpoint."
            )
        x = torch.from_numpy(np.stack([np.asarray(img) for img in images])).permute(0, 3, 1, 2)
        return self.preprocess(x.contiguous())


def _timm_descriptions(model, config: dict, labels: list[str]) -> list[str] | None:
    """timm's label descriptions (`label_descriptions` {label: description} in its config), else ImageNet's."""
    found = config.get("label_descriptions") or model.pretrained_cfg.get("label_descriptions")
    if isinstance(found, dict) and found:
        return [str(found.get(n, "")) for n in labels]
    return imagenet_descriptions(labels)


def _load_transformers(folder: Path, config: dict, shown: str, allow_pickle: bool, trust_remote_code: bool):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    architectures = config.get("architectures") or []
    if not config.get("id2label") or not any("ForImageClassification" in a for a in architectures):
        raise TeacherLoadError(
            shown,
            "no_classification_head",
            f"is not an image classifier (architectures={architectures or None}): the pool needs checkpoints "
            "with an image-classification head (`*ForImageClassification`, or a timm classifier).",
        )
    try:
        model = AutoModelForImageClassification.from_pretrained(
            folder, use_safetensors=None if allow_pickle else True, trust_remote_code=trust_remote_code
        )
    except Exception as err:
        raise TeacherLoadError(shown, "load_failed", f"could not be loaded by transformers ({err}).") from err
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    processor_file = folder / "preprocessor_config.json"
    if processor_file.is_file():
        processor_config = read_json(processor_file, what="its preprocessor_config.json")
        if isinstance(processor_config, dict) and "auto_map" in processor_config and not trust_remote_code:
            raise TeacherLoadError(
                shown,
                "remote_code",
                "has an image processor that runs its repository's own code (`auto_map` in preprocessor_config.json)"
                ": pass --trust_remote_code (trust_remote_code=True) if you trust it.",
            )
        try:
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as err:
            raise TeacherLoadError(
                shown, "load_failed", f"has an image processor transformers could not load ({err})."
            ) from err

        def preprocess(images: torch.Tensor) -> torch.Tensor:
            return processor(images=images, return_tensors="pt")["pixel_values"]

        return model, labels, preprocess, _Processor(processor), "transformers:" + processor.to_json_string()
    logger.warning("Teacher %s has no preprocessor_config.json: feeding pixels scaled to [0, 1].", shown)
    return model, labels, None, None, None
