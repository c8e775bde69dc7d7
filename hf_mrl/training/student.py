"""The student: a timm or transformers image classifier for the target labels, saved so that others load it alone.

A timm student is saved in timm's Hub format, with a config.json that transformers also reads (its `TimmWrapper`
model type): it loads with `timm.create_model("hf-hub:...")` / `local-dir:`, with
`transformers.AutoModelForImageClassification` and with `transformers.pipeline("image-classification")`, whose label
names are the target's. A transformers student is saved with `save_pretrained` plus an image processor matching the
student's own preprocessing.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

from hf_mrl.utils import atomic_write_json, read_json

__all__ = [
    "DEFAULT_STUDENT",
    "TransformersStudent",
    "create_student",
    "fast_cpu_pooling",
    "load_student",
    "save_student",
    "student_preprocess",
]

# A ResNet-10 with narrow stages (~0.3M parameters): quick on 2 CPU cores, and unlike the teachers.
DEFAULT_STUDENT = {"architecture": "resnet10t", "model_args": {"channels": [16, 32, 64, 128], "stem_width": 16}}
DEFAULT_IMAGE_SIZE = 32  # the default student's input side when no image_size is given
_FRESH_MEAN, _FRESH_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # a student trained from scratch: pixels in [-1, 1]
# pretrained_cfg entries that describe where someone else's weights came from, not this student.
_PROVENANCE = (
    "tag",
    "license",
    "origin_url",
    "hf_hub_id",
    "hf_hub_filename",
    "url",
    "file",
    "state_dict",
    "source",
    "label_descriptions",
    "label_offset",
    "description",
    "paper_name",
    "paper_ids",
    "notes",
)


# timm.create_model arguments that say where to load weights from, not how to build the model: never saved.
_LOAD_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "pretrained_strict")


class TransformersStudent(torch.nn.Module):
    """A transformers image classifier used as a student: `forward(pixels)` returns logits (B, C), like timm.

    Args:
        model: a `*ForImageClassification` model whose `config.id2label` are the target labels.
        pretrained_cfg: timm-style preprocessing (`input_size`, `mean`, `std`, `crop_pct`, `interpolation`) plus
            `label_names` and `architecture`; `student_preprocess` reads it as for a timm student.
    """

    def __init__(self, model: torch.nn.Module, pretrained_cfg: dict):
        super().__init__()
        self.model = model
        self.pretrained_cfg = dict(pretrained_cfg)
        # ViT-like models only accept another input size with their position embeddings interpolated.
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    @property
    def num_classes(self) -> int:
        return self.model.config.num_labels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        return self.model(pixel_values=pixel_values, **kwargs).logits


def create_student(
    label_names: list[str],
    image_size: int | None = None,
    architecture: str = DEFAULT_STUDENT["architecture"],
    model_args: dict | None = None,
    pretrained: bool = False,
    *,
    token: str | bool | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """A classifier for the target classes: a fresh timm architecture, or any timm / transformers checkpoint.

    Args:
        label_names: target class names; stored in the saved config so the student is self-describing.
        image_size: input side. None: the pretrained config's input size (32 for the default student).
        architecture: a timm architecture (`resnet18`, `resnet50.a1_in1k`), a timm Hub id (`hf-hub:timm/...`), a
            local timm checkpoint folder (`local-dir:PATH`), or a transformers image-classification checkpoint (a
            Hub id `org/name[@revision]` or a folder). Checkpoints go through the pool's loading rules: safetensors
            only unless `allow_pickle`, no repository code unless `trust_remote_code`.
        model_args: keyword arguments of the timm entrypoint (kept in config.json for reloading); timm only. The
            default student's narrow widths apply when it is built from scratch without model_args.
        pretrained: start from the checkpoint's weights with a new, freshly initialised head for the target labels;
            its normalisation (and input size unless `image_size`) come from its pretrained config. Without it, the
            architecture starts from random weights (seeded by torch's global RNG) and inputs are scaled to [-1, 1].
        token: Hub token for a private checkpoint (never logged).
        allow_pickle: accept a checkpoint that only has pickle weights.
        trust_remote_code: let transformers run the checkpoint repository's own modelling code.

    The student always sees whole images (no crop, aspect not kept), resized bilinearly to its input size: what it
    is trained on, and what timm's and transformers' own transforms of the saved student do too.

    >>> student = create_student(["cat", "dog"], architecture="resnet18", pretrained=True)  # doctest: +SKIP
    >>> student.pretrained_cfg["input_size"], student.num_classes  # doctest: +SKIP
    ((3, 224, 224), 2)
    """
    if isinstance(label_names, (str, bytes)) or not label_names:
        raise TypeError(f"label_names must be a non-empty list of class names; got {label_names!r}.")
    label_names = [str(n) for n in label_names]
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None; got {image_size!r}.")
    if model_args is not None and not isinstance(model_args, dict):
        raise TypeError(f"model_args must be a dict of timm entrypoint arguments; got {type(model_args).__name__}.")
    library, source, shown = _resolve_source(architecture, token, allow_pickle, trust_remote_code)
    if library == "transformers":
        if model_args:
            raise ValueError(
                f"model_args {model_args} only apply to timm students; {shown!r} is a transformers checkpoint "
                "(change its config.json instead)."
            )
        model = _transformers_student(
            source, shown, label_names, image_size, pretrained, allow_pickle, trust_remote_code
        )
    else:
        if model_args is None:
            fresh_default = architecture == DEFAULT_STUDENT["architecture"] and not pretrained
            model_args = DEFAULT_STUDENT["model_args"] if fresh_default else {}
        if image_size is None and architecture == DEFAULT_STUDENT["architecture"] and not pretrained:
            image_size = DEFAULT_IMAGE_SIZE
        model = _timm_student(source, shown, label_names, image_size, pretrained, dict(model_args))
    # For the card's base_model (not saved): the checkpoint as given, or timm's Hub id for a bare timm name.
    model.hf_mrl_base_model = (getattr(model, "hf_mrl_base_model", None) or shown) if pretrained else None
    return model


def _resolve_source(architecture, token, allow_pickle: bool, trust_remote_code: bool) -> tuple[str, str, str]:
    """(library, what to build from, the id to show): a timm name, or a checkpoint folder and its library."""
    import timm

    from hf_mrl.pool.model_pool import _checked_checkpoint, _is_local, _looks_like_hub_id, parse_teacher_id

    if not isinstance(architecture, (str, os.PathLike)):
        raise TypeError(
            f"architecture must be a timm architecture, a Hub id or a folder (str); got {type(architecture).__name__}."
        )
    spec = str(architecture).strip()
    if spec.startswith("local-dir:"):
        checkpoint = spec[len("local-dir:") :]
        if not os.path.isdir(checkpoint):
            raise ValueError(f"Student {spec!r}: {checkpoint!r} is not a folder on this machine.")
    elif spec.startswith("hf-hub:"):
        checkpoint = spec[len("hf-hub:") :]
    elif timm.is_model(spec) and not _is_local(spec):
        return "timm", spec, spec
    else:
        checkpoint = spec
        name = parse_teacher_id(spec)[0]
        # A bare word is far more often a misspelt timm name than a namespace-less Hub repo: say so, offline.
        if not _is_local(name) and ("/" not in name or not _looks_like_hub_id(name)):
            import difflib

            close = difflib.get_close_matches(spec, timm.list_models(), n=3, cutoff=0.7)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"Student {spec!r} is neither a timm architecture (see `timm.list_models()`), nor a Hub id "
                f"(`org/name[@revision]`, `hf-hub:timm/...`), nor a checkpoint folder (`local-dir:PATH` or a path).{hint}"
            )
    folder, commit, library, _, _ = _checked_checkpoint(
        checkpoint, token, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, what="Student"
    )
    shown = f"{parse_teacher_id(checkpoint)[0]}@{commit}" if commit else str(folder)
    return library, str(folder), shown


def _student_cfg(inherited: dict, label_names, size: tuple[int, int], mean, std, architecture: str) -> dict:
    """The student's own pretrained_cfg: whole images at `size`, bilinear, its normalisation, the target labels."""
    cfg = {k: v for k, v in inherited.items() if k not in _PROVENANCE}
    return {
        **cfg,
        "architecture": architecture,
        "input_size": (3, *size),
        "test_input_size": (3, *size),
        "crop_pct": 1.0,
        "test_crop_pct": 1.0,
        "crop_mode": "squash",  # the whole image resized to the input size, as `student_preprocess` does
        "interpolation": "bilinear",
        "mean": tuple(mean),
        "std": tuple(std),
        "num_classes": len(label_names),
        "label_names": list(label_names),
    }


def _timm_student(source: str, shown: str, label_names, image_size, pretrained: bool, model_args: dict):
    import timm

    from hf_mrl.pool.model_pool import _check_finite

    is_dir = os.path.isdir(source)
    name = f"local-dir:{source}" if is_dir else source
    num_classes = len(label_names)

    def build(args: dict):
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **args)
        except (RuntimeError, TypeError, ValueError, OSError) as err:
            raise ValueError(f"timm cannot build student {shown!r} with {args}: {err}") from err

    model = build(model_args)
    source_cfg = dict(model.pretrained_cfg)
    size = tuple(source_cfg.get("input_size", (3, 224, 224))[-2:]) if image_size is None else (image_size,) * 2
    if source_cfg.get("fixed_input_size") and size != tuple(source_cfg["input_size"][-2:]):
        if "img_size" in model_args:
            raise ValueError(f"image_size={image_size} disagrees with model_args img_size={model_args['img_size']}.")
        # Position embeddings fix the input size: rebuild at the new size (timm resamples pretrained ones).
        model_args = {**model_args, "img_size": size}
        model = build(model_args)
    if pretrained:
        _check_finite(model, shown, what="Student")
        if source_cfg.get("num_classes") == num_classes:  # timm kept the checkpoint's head: the target needs its own
            model.reset_classifier(num_classes)
        mean, std = source_cfg.get("mean", _FRESH_MEAN), source_cfg.get("std", _FRESH_STD)
    else:
        mean, std = _FRESH_MEAN, _FRESH_STD
    architecture = source_cfg.get("architecture") or name.split(".")[0]
    model.pretrained_cfg = _student_cfg(source_cfg, label_names, size, mean, std, architecture)
    model.hf_mrl_model_args = {k: v for k, v in model_args.items() if k not in _LOAD_ARGS}
    if pretrained and not is_dir:
        local = source_cfg.get("file") or source_cfg.get("state_dict")  # weights from a local file, not the Hub
        model.hf_mrl_base_model = None if local else source_cfg.get("hf_hub_id")  # e.g. timm/resnet18.a1_in1k
    return model


def _processor_cfg(folder: Path, config, image_size, pretrained: bool) -> tuple[tuple[int, int], tuple, tuple]:
    """Input size and normalisation of a transformers checkpoint, from its preprocessor_config.json."""
    path = folder / "preprocessor_config.json"
    proc = read_json(path) if path.is_file() else {}
    size = None
    for key in ("crop_size", "size") if proc.get("do_center_crop") else ("size",):
        value = proc.get(key)
        if isinstance(value, int):
            size = (value, value)
        elif isinstance(value, dict) and "height" in value and "width" in value:
            size = (int(value["height"]), int(value["width"]))
        elif isinstance(value, dict) and "shortest_edge" in value:
            size = (int(value["shortest_edge"]),) * 2
        if size:
            break
    if size is None:
        side = getattr(config, "image_size", None)
        size = tuple(side) if isinstance(side, (list, tuple)) else (int(side or 224),) * 2
    if image_size is not None:
        size = (image_size, image_size)
    if pretrained and proc.get("do_normalize", True) and proc.get("image_mean") and proc.get("image_std"):
        return size, tuple(proc["image_mean"]), tuple(proc["image_std"])
    if pretrained and proc and not proc.get("do_normalize", True):
        return size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return size, _FRESH_MEAN, _FRESH_STD


def _transformers_student(
    folder: str, shown: str, label_names, image_size, pretrained: bool, allow_pickle: bool, trust_remote_code: bool
) -> TransformersStudent:
    from transformers import AutoConfig, AutoModelForImageClassification

    from hf_mrl.pool.model_pool import _check_finite

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        config.id2label = dict(enumerate(label_names))  # sets num_labels too
        config.label2id = {n: i for i, n in enumerate(label_names)}
        # A fresh model: new head for the target labels, and the backbone overwritten below when pretrained.
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)
        if pretrained:
            source = AutoModelForImageClassification.from_pretrained(
                folder, use_safetensors=None if allow_pickle else True, trust_remote_code=trust_remote_code
            )
            model.base_model.load_state_dict(source.base_model.state_dict())  # strict: every backbone weight
            del source
    except Exception as err:  # transformers raises many types for an unusable checkpoint
        raise ValueError(f"transformers cannot build student {shown!r}: {err}") from err
    if pretrained:
        _check_finite(model, shown, what="Student")
    size, mean, std = _processor_cfg(Path(folder), config, image_size, pretrained)
    architecture = (config.architectures or [type(model).__name__])[0]
    cfg = _student_cfg({}, label_names, size, mean, std, architecture)
    return TransformersStudent(model, cfg)


def student_preprocess(model: torch.nn.Module):
    """The student's own eval transform as batched tensor ops (uint8 (B, 3, H, W) -> float)."""
    from hf_mrl.pool.model_pool import _timm_preprocess

    return _timm_preprocess(getattr(model, "module", model).pretrained_cfg)


class _CpuMaxPool2d(torch.nn.MaxPool2d):
    """`nn.MaxPool2d` with the same outputs and gradients, bit for bit, and ~3x faster on CPU for NCHW inputs.

    PyTorch's NCHW CPU max-pool kernel is slow (16 ms on one thread for the default student's training batch, against
    2 ms in channels-last). The argmax is taken in channels-last, whose kernel scans each window in the same order with
    the same tie and NaN rule, and the output gathered from the input at it: the gather's backward scatter-adds the
    gradient in the order max-pool's backward does, and forward-mode AD and double backward come with it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or self.return_indices or not x.is_contiguous():
            return super().forward(x)
        with torch.no_grad():
            args = (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
            _, idx = torch.nn.functional.max_pool2d(
                x.detach().clone(memory_format=torch.channels_last), *args, return_indices=True
            )
        return x.flatten(2).gather(2, idx.contiguous().flatten(2)).view(idx.shape)


def fast_cpu_pooling(model: torch.nn.Module) -> torch.nn.Module:
    """Run the model's `nn.MaxPool2d` layers as `_CpuMaxPool2d` (same results; no parameters, so saving is unchanged)."""
    for module in model.modules():
        if type(module) is torch.nn.MaxPool2d:
            module.__class__ = _CpuMaxPool2d
    return model


def save_student(model: torch.nn.Module, save_directory: str | os.PathLike, card: str | None = None) -> Path:
    """Write the student so timm (timm students) and transformers (both kinds) load it without hf_mrl.

    A timm student: config.json + model.safetensors the way timm's `push_to_hf_hub` writes them, with `model_args`
    that transformers' `TimmWrapper` also accepts. A transformers student: `save_pretrained` plus a
    preprocessor_config.json doing what `student_preprocess` does. README.md holds `card` when given.
    """
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    if isinstance(model, TransformersStudent):
        _save_transformers(model, save_directory)
    else:
        _save_timm(model, save_directory)
    if card is not None:
        (save_directory / "README.md").write_text(card)
    return save_directory


def _save_timm(model: torch.nn.Module, save_directory: Path) -> None:
    import timm

    timm.models.save_for_hf(
        model,
        str(save_directory),
        model_config={"label_names": model.pretrained_cfg.get("label_names")},
        model_args=getattr(model, "hf_mrl_model_args", None),
        safe_serialization=True,
    )
    # timm records num_classes twice (root and model_args); transformers passes both to timm.create_model and fails
    # with "got multiple values for keyword argument 'num_classes'". timm reads the root value when it is absent.
    # Where the starting weights came from (a local file) is no argument of this model either.
    path = save_directory / "config.json"
    config = read_json(path)
    drop = [k for k in config.get("model_args", {}) if k in ("num_classes", *_LOAD_ARGS)]
    if drop:
        for key in drop:
            config["model_args"].pop(key)
        atomic_write_json(path, config)


def _save_transformers(model: TransformersStudent, save_directory: Path) -> None:
    from PIL import Image
    from transformers import ViTImageProcessor

    model.model.save_pretrained(save_directory)
    cfg = model.pretrained_cfg
    height, width = cfg["input_size"][-2:]
    ViTImageProcessor(  # resize to the input size, scale to [0, 1], normalise: what `student_preprocess` does
        do_resize=True,
        size={"height": height, "width": width},
        resample=Image.Resampling.BILINEAR,
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
    ).save_pretrained(save_directory)


def load_student(path_or_repo: str | os.PathLike, *, token: str | bool | None = None) -> torch.nn.Module:
    """Load a saved student (a folder or a Hub id `org/name[@revision]`): timm students with timm, others wrapped.

    Raises the pool's `TeacherLoadError` (a `ValueError`) naming the student when it cannot be found or read.
    """
    from hf_mrl.pool.model_pool import _checked_checkpoint

    folder, _, library, config, _ = _checked_checkpoint(
        str(path_or_repo), token, allow_pickle=False, trust_remote_code=False, what="Student"
    )
    if library == "timm":
        import timm

        return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    size, mean, std = _processor_cfg(Path(folder), model.config, None, pretrained=True)
    architecture = (model.config.architectures or [type(model).__name__])[0]
    return TransformersStudent(model, _student_cfg({}, labels, size, mean, std, architecture)).eval()
