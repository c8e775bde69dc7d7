"""A pool of frozen teachers, used only through their class probabilities on target inputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cache import LogitCache, row_keys
from .endpoint import CallBudget, EndpointOptions, EndpointTeacher, check_endpoint_line, is_endpoint
from .labels import (
    LabelMapping,
    close_matches,
    imagenet_descriptions,
    label_keys,
    load_label_map,
    map_labels,
    normalize_label,
)
from .paths import missing_folder_message
from .utils import read_json

__all__ = ["ModelPool", "Teacher", "TeacherLoadError", "parse_pool_file", "parse_teacher_id"]

logger = logging.getLogger(__name__)

_WEIGHTS = "model.safetensors"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.bin", "open_clip_pytorch_model.bin")


def parse_teacher_id(entry: str) -> tuple[str, str | None]:
    """Split `repo_id[@revision]` (or a local path) into its name and revision.

    >>> parse_teacher_id("org/name@v1.0")
    ('org/name', 'v1.0')
    """
    entry = entry.strip()
    if not entry:
        raise ValueError("Empty teacher id.")
    if _is_local(entry):
        return entry, None
    name, sep, revision = entry.rpartition("@")
    if not sep:
        return entry, None
    if not name or not revision:
        raise ValueError(f"Malformed teacher id {entry!r}: expected `repo_id@revision` with both parts non-empty.")
    return name, revision


def _is_local(path: str | os.PathLike) -> bool:
    """Whether `path` exists on this machine; False for names no file system accepts (too long, NUL bytes)."""
    try:
        return os.path.exists(path)
    except (OSError, ValueError):
        return False


def _looks_like_hub_id(name: str) -> bool:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def _identity(source: str) -> str:
    """What makes two teacher sources the same teacher: the real path of a local folder (`t`, `t/.` and `../x/t`
    are one), the id of a Hub teacher."""
    name, revision = parse_teacher_id(source) if not os.path.isdir(source) else (source, None)
    return os.path.realpath(name) if revision is None and os.path.isdir(name) else source


def _check_no_duplicates(sources: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for source in sources:
        try:
            key = _identity(source)
        except ValueError:  # a malformed id: Teacher.load says what is wrong with it
            key = source
        if key in seen:
            same = "" if seen[key] == source else f" (as {seen[key]!r})"
            raise ValueError(f"Duplicate teachers in the pool: {source!r} is listed twice{same}.")
        seen[key] = source


def parse_pool_file(path: str | os.PathLike) -> list[str]:
    """Read a pool file: one teacher a line (`repo_id[@revision]`, a local path, or `endpoint:URL` for a teacher
    behind an inference endpoint), `#` starts a comment.

    Relative local paths are resolved against the pool file's folder. Every problem is a `ValueError` (or
    `FileNotFoundError`) naming the file and line: no teacher, an entry with spaces, a malformed `@revision`, an
    entry that is neither an existing path nor a Hub id, the same teacher twice.

    >>> parse_pool_file("hub-ids.txt")  # doctest: +SKIP
    ['org/mnist-classifier@3f2a1c9', 'org/svhn-classifier', '/abs/path/my-local-teacher']
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Pool file {str(path)!r} is a folder: pass a text file with one teacher id a line.")
    if not path.is_file():
        raise FileNotFoundError(f"Pool file {str(path)!r} does not exist.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors write one) is not part of line 1
    except UnicodeDecodeError as err:
        raise ValueError(
            f"Pool file {str(path)!r} is not a UTF-8 text file ({err.reason} at byte {err.start}): "
            "write one `repo_id[@revision]` or path a line."
        ) from None
    entries: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        if any(c.isspace() or not c.isprintable() for c in line):
            raise ValueError(f"{where}: malformed entry {raw.strip()!r}: one teacher id per line, no spaces.")
        if is_endpoint(line):
            check_endpoint_line(line, where)
            if line in seen:
                raise ValueError(f"{where}: duplicate teacher {line!r} (first on line {seen[line]}).")
            seen[line] = lineno
            entries.append(line)
            continue
        local = path.parent / line
        if not os.path.isabs(line) and _is_local(local):
            line = str(local.resolve())
        elif missing_folder_message(line.split("@", 1)[0], path.parent):  # a typo in a path, not a Hub id
            raise ValueError(f"{where}: {missing_folder_message(line.split('@', 1)[0], path.parent)}.")
        try:
            name, _ = parse_teacher_id(line)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if not _is_local(name) and not _looks_like_hub_id(name):
            raise ValueError(
                f"{where}: {raw.strip()!r} is neither an existing folder nor a Hub id `org/name[@revision]` "
                f"(relative paths are read from {str(path.parent)!r})."
            )
        if line in seen:
            raise ValueError(f"{where}: duplicate teacher {line!r} (first on line {seen[line]}).")
        seen[line] = lineno
        entries.append(line)
    if not entries:
        raise ValueError(f"Pool file {str(path)!r} lists no teacher: add one `repo_id[@revision]` or path a line.")
    return entries


class TeacherLoadError(ValueError):
    """A teacher could not be loaded. `teacher` is the id as given; `reason` says why, one of `REASONS`."""

    REASONS = (
        "not_found",  # neither a local folder nor a Hub repository the user can see
        "revision_not_found",
        "gated",
        "offline",  # HF_HUB_OFFLINE=1 and not in the cache
        "unreachable",  # the Hub cannot be reached and not in the cache
        "hub_error",
        "unknown_format",  # not a transformers or timm checkpoint
        "no_classification_head",
        "no_labels",
        "no_weights",
        "unsafe_weights",  # pickle only
        "corrupted_weights",  # unreadable safetensors, or NaN / inf values in the weights
        "remote_code",  # needs its repository's own code, and trust_remote_code is off
        "load_failed",
    )

    def __init__(self, teacher: str, reason: str, message: str, what: str = "Teacher"):
        super().__init__(f"{what} {teacher!r} {message}")
        self.teacher, self.reason = teacher, reason


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


class Teacher:
    """One frozen classifier: eval mode, no grad, logits only.

    Build with `Teacher.load(source)` from a Hub id (`org/name[@revision]`) or a local folder holding a
    transformers or timm checkpoint, or wrap an in-memory module with `Teacher(module, label_names, ...)`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        label_names: Sequence[str],
        preprocess=None,
        name: str = "teacher",
        revision: str | None = None,
        library: str = "torch",
        weights_hash: str | None = None,
        label_descriptions: Sequence[str] | None = None,
        transform=None,
        transform_key: str | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"A teacher must be a torch.nn.Module or loaded with Teacher.load; got {type(model)}.")
        self.model = model.eval().requires_grad_(False)
        self.label_names = [str(n) for n in label_names]
        # Longer names per output (timm's ImageNet descriptions: `tabby, tabby cat` for `n02123045`), matched too.
        self.label_descriptions = None if label_descriptions is None else [str(d) for d in label_descriptions]
        self.preprocess = preprocess or (lambda images: images.float() / 255.0)
        self.name = name
        self.revision = revision
        self.library = library
        self.weights_hash = weights_hash
        self.samples_seen = 0  # teacher forward passes, counted per sample
        # Its own processor on decoded originals (a list of PIL images -> a batch): what lazy datasets go through.
        # Teachers with the same `transform_key` share one transformed batch.
        self.transform = transform or _FromUint8(self.preprocess, name)
        self.transform_key = transform_key if transform is not None else f"uint8:{name}:{id(self)}"

    @property
    def id(self) -> str:
        """`name@commit` for Hub teachers, the path for local ones: enough to rebuild it exactly."""
        return f"{self.name}@{self.revision}" if self.revision else self.name

    @property
    def cache_key(self) -> str:
        return hashlib.sha256(f"{self.id}|{self.weights_hash}".encode()).hexdigest()[:24]

    @classmethod
    def load(
        cls,
        source: str,
        *,
        token: str | bool | None = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
    ) -> Teacher:
        """Load a transformers or timm image classifier from a Hub id or local folder.

        Args:
            source: `org/name`, `org/name@revision`, or a local folder.
            token: Hub token for private repositories (never logged).
            allow_pickle: accept a checkpoint that only has pickle weights (`pytorch_model.bin`);
                pickle can run arbitrary code, so this is off by default.
            trust_remote_code: let transformers run the repository's own modelling code; a checkpoint that needs
                it (`auto_map` in config.json) is refused without it, before any of its code is imported.
        """
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"A teacher source must be a Hub id or a path; got {type(source).__name__}.")
        shown = str(source).strip()
        name, _ = parse_teacher_id(shown)
        folder, commit, library, config, weights = _checked_checkpoint(
            shown, token, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        )
        if library == "timm":
            model, labels, preprocess, transform, transform_key = _load_timm(folder, config, shown)
            descriptions = _timm_descriptions(model, config, labels)
        else:
            loaded = _load_transformers(folder, config, shown, allow_pickle, trust_remote_code)
            model, labels, preprocess, transform, transform_key = loaded
            descriptions = imagenet_descriptions(labels)
        _check_finite(model, shown)
        logger.info(
            "Loaded %s teacher %s (%d labels)", library, name if commit is None else f"{name}@{commit}", len(labels)
        )
        # The cache key covers everything that shapes the logits: weights and the (pre)processing configs.
        configs = [folder / f for f in ("config.json", "preprocessor_config.json") if (folder / f).is_file()]
        return cls(
            model,
            labels,
            preprocess,
            name=name,
            revision=commit,
            library=library,
            weights_hash=_files_hash(list(weights) + configs),
            label_descriptions=descriptions,
            transform=transform,
            transform_key=transform_key,
        )

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """uint8 images (B, 3, H, W) -> float32 logits (B, C_teacher) on the CPU.

        Runs under `torch.inference_mode`, in channels-last memory format where the model accepts it (faster
        convolutions and pooling, the same values), and, for `precision` "bf16" or "fp16", under `torch.autocast`
        on the model's device: CUDA, or the CPU, where it pays off on processors with bf16 instructions only.
        """
        return self.logits_of_inputs(self.preprocess(images), precision)

    @torch.inference_mode()
    def logits_of_inputs(self, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """Preprocessed model inputs (what `transform` or `preprocess` return) -> float32 logits on the CPU."""
        dtype = autocast_dtype(precision)
        device = next(self.model.parameters()).device
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = self._forward(x)
        out = getattr(out, "logits", out)
        self.samples_seen += x.shape[0]
        if not torch.isfinite(out).all():
            raise ValueError(f"Teacher {self.id!r} produced NaN or infinite logits; its weights may be corrupted.")
        return out.float().cpu()

    def _forward(self, x: torch.Tensor):
        """The model on a batch, channels-last when it accepts it (decided on the first batch)."""
        fmt = getattr(self, "_memory_format", None)
        if fmt is None and not any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules()):
            fmt = self._memory_format = torch.contiguous_format  # no convolution: nothing to gain
        if fmt is None and x.ndim == 4:
            try:
                out = self.model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
                self._memory_format = torch.channels_last
                return out
            except RuntimeError:  # a model that views its activations as NCHW
                self.model.to(memory_format=torch.contiguous_format)
                self._memory_format = torch.contiguous_format
        if fmt is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


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


def _map_pool(
    teachers: Sequence[Teacher], sources: Sequence, label_names: list[str], label_map: dict | None
) -> list[LabelMapping]:
    """Map every teacher's labels onto the target's, with the label map's shared and per-teacher entries."""
    shared = {k: v for k, v in (label_map or {}).items() if not isinstance(v, dict)}
    own: dict[int, dict[str, list[str]]] = {}
    for key, entries in (label_map or {}).items():
        if not isinstance(entries, dict):
            continue
        hits = [k for k, (t, src) in enumerate(zip(teachers, sources, strict=True)) if _names_teacher(key, t, src)]
        if not hits:
            ids = [t.id for t in teachers]
            close = close_matches(key, ids + [t.name for t in teachers])
            raise ValueError(
                f"The label map has entries for teacher {key!r}, which is not in the pool"
                + (f"; close matches: {close}" if close else "")
                + f". The pool's teachers are {ids}: key a teacher's entries by its id as in the pool file."
            )
        for k in hits:
            own[k] = {**own.get(k, {}), **entries}
    known = set().union(*(label_keys(t.label_names, t.label_descriptions) for t in teachers)) if shared else set()
    # an endpoint's labels are only known from its answers: a shared name may be one of them
    endpoint = any(isinstance(t, EndpointTeacher) for t in teachers)
    for target, names in {} if endpoint else shared.items():  # a shared name must mean something to some teacher
        for name in names:
            if normalize_label(name) not in known:
                vocabulary = [n for t in teachers for n in [*t.label_names, *(t.label_descriptions or [])] if n]
                close = close_matches(name, vocabulary)
                raise ValueError(
                    f"The label map names {name!r} for target class {target!r}, but no teacher in the pool has such "
                    "a label" + (f"; close matches: {close}" if close else "") + ". Write teacher labels as the "
                    "teachers name them (their id2label / timm label names or descriptions)."
                )
    mappings = []
    for k, t in enumerate(teachers):
        if isinstance(t, EndpointTeacher):  # its outputs are already over the target classes (it maps each answer)
            mappings.append(LabelMapping(list(range(len(label_names))), list(label_names), label_names))
            continue
        mine = own.get(k, {})
        overridden = {normalize_label(target) for target in mine}
        mappings.append(
            map_labels(
                t.label_names,
                label_names,
                teacher_name=f"Teacher {t.id!r}",
                descriptions=t.label_descriptions,
                label_map=mine,
                shared_label_map={g: v for g, v in shared.items() if normalize_label(g) not in overridden},
            )
        )
    return mappings


def _names_teacher(key: str, teacher: Teacher, source) -> bool:
    """Whether a label-map key names this teacher: its id as given in the pool, its name, `name@commit`, its path."""
    if key in {teacher.id, teacher.name} or (isinstance(source, str) and key == source):
        return True
    return _is_local(key) and _is_local(teacher.name) and os.path.realpath(key) == os.path.realpath(teacher.name)


def _describe_mapping(mapping: LabelMapping, limit: int = 20) -> str:
    items = list(mapping.to_dict().items())
    text = "; ".join(f"{target} <- {names if names else 'none'}" for target, names in items[:limit])
    return text + (f"; ... ({len(items) - limit} more)" if len(items) > limit else "")


def _warn_uncovered(teachers: Sequence[Teacher], mappings: Sequence[LabelMapping], label_names: list[str]) -> None:
    """Teachers with partial label spaces are fine; a target class that no teacher has deserves a warning."""
    for t, m in zip(teachers, mappings, strict=True):
        if m.num_covered < len(label_names):
            missing = [n for n, c in zip(label_names, m.coverage, strict=True) if not c]
            logger.info("Teacher %s lacks %d target class(es): %s", t.id, len(missing), missing[:10])
    uncovered = [n for c, n in enumerate(label_names) if not any(m.coverage[c] for m in mappings)]
    if uncovered:
        logger.warning(
            "No teacher in the pool predicts target class(es) %s: the reuser gives them probability 0, so the "
            "student learns them from their labeled samples only. Add a teacher that knows them for better results.",
            uncovered[:20],
        )


class _GroupTransforms:
    """Decoded originals -> {preprocessing key: the batch as those teachers take it} (runs in DataLoader workers)."""

    def __init__(self, transforms: dict):
        self.transforms = transforms

    def __call__(self, images: list) -> dict[str, torch.Tensor]:
        return {key: fn(images) for key, fn in self.transforms.items()}


def _gather_rows(local: torch.Tensor, need: np.ndarray, missing: np.ndarray, accelerator) -> torch.Tensor:
    """Every process computed teacher k on `need[rank::world]` where `missing`: all of it, in the order of `need`."""
    from accelerate.utils import gather

    world = accelerator.num_processes
    shares = [need[r::world][missing[need[r::world]]] for r in range(world)]
    per = max(len(x) for x in shares)
    padded = torch.zeros(per, local.shape[1])
    padded[: len(local)] = local
    everyone = gather(padded.to(accelerator.device)).cpu().view(world, per, -1)
    order = np.concatenate(shares)
    values = torch.cat([everyone[r, : len(x)] for r, x in enumerate(shares)])
    return values[torch.from_numpy(np.argsort(order, kind="stable"))]


class ModelPool:
    """K frozen teachers whose probabilities over the target classes are computed once and cached.

    Args:
        teachers: `Teacher` objects, Hub ids (`org/name[@revision]`) or local folders.
        label_names: the target task's class names; each teacher's labels are mapped onto them.
        cache_dir: where teacher logits persist across runs, seeds and processes, memory-mapped (keyed by teacher
            commit, weights hash and precision, and by a content hash of each input sample); in memory only when None.
        batch_size: teacher inference batch size.
        precision: teacher inference precision, "fp32", "bf16" or "fp16" (autocast on the teachers' device);
            part of the cache key, so logits of different precisions never mix.
        label_map: how teacher labels map onto the target's where names do not say it: a JSON file or a dict
            `{target label: [teacher labels]}` for every teacher, and/or `{teacher id: {target label: [teacher
            labels]}}` for one (the id as in the pool, its name, or `name@commit`). Several teacher labels for one
            target class add up their probabilities; an empty list says a teacher has none of that class. Teacher
            labels may be written as a label, a timm description or one of their comma-separated synonyms. Classes
            the map does not name are matched by name. `pool.label_mapping` gives the mapping used.

    >>> pool = ModelPool.from_file("hub-ids.txt", label_names=[str(d) for d in range(10)])  # doctest: +SKIP
    >>> H = pool.probs(images)  # (N, K, C), each row a distribution  # doctest: +SKIP
    """

    def __init__(
        self,
        teachers: Sequence[Teacher | str],
        label_names: Sequence[str],
        *,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
        precision: str = "fp32",
        label_map: str | os.PathLike | Mapping | None = None,
        endpoint: EndpointOptions | None = None,
        **load_kwargs,
    ):
        autocast_dtype(precision)  # raises ValueError for an unknown precision
        if isinstance(teachers, (str, os.PathLike)) or not len(teachers):
            raise ValueError(
                "A ModelPool needs a non-empty list of teachers (use ModelPool.from_file for a pool file)."
            )
        self.label_names = [str(n) for n in label_names]
        # The map as given, as plain data: saved with a reuser, it rebuilds the same pool. Read (and checked)
        # before any teacher loads, so a broken file fails at once.
        self.label_map = load_label_map(label_map)
        _check_no_duplicates([t.id if isinstance(t, Teacher) else str(t).strip() for t in teachers])
        self.endpoint_options = endpoint or EndpointOptions()
        self.budget = CallBudget(self.endpoint_options.max_calls)  # shared by the endpoint teachers

        def load(t):
            if isinstance(t, (Teacher, EndpointTeacher)):
                return t
            if is_endpoint(t):
                return EndpointTeacher(
                    t,
                    self.label_names,
                    label_map=self.label_map,
                    cache_dir=cache_dir,
                    options=self.endpoint_options,
                    budget=self.budget,
                    token=load_kwargs.get("token"),
                )
            return Teacher.load(t, **load_kwargs)

        self.teachers = [load(t) for t in teachers]
        _check_no_duplicates([t.id for t in self.teachers])
        sources = [t if isinstance(t, Teacher) else str(t).strip() for t in teachers]
        self.mappings: list[LabelMapping] = _map_pool(self.teachers, sources, self.label_names, self.label_map)
        for t, m in zip(self.teachers, self.mappings, strict=True):
            logger.info("Teacher %s label mapping (target <- teacher): %s", t.id, _describe_mapping(m))
        _warn_uncovered(self.teachers, self.mappings, self.label_names)
        self.cache = LogitCache(cache_dir)
        # Recorded in the reuser's config and cards; an encoder embedding is loaded under the same options.
        self.trust_remote_code = bool(load_kwargs.get("trust_remote_code", False))
        self.allow_pickle = bool(load_kwargs.get("allow_pickle", False))
        self.batch_size = batch_size
        self.precision = precision

    @classmethod
    def from_file(cls, path: str | os.PathLike, label_names: Sequence[str], **kwargs) -> ModelPool:
        return cls(parse_pool_file(path), label_names, **kwargs)

    def __len__(self) -> int:
        return len(self.teachers)

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.teachers]

    @property
    def label_mapping(self) -> dict[str, dict[str, list[str]]]:
        """The label mapping used, as plain data for metrics.json and cards: `{teacher id: {target label: [teacher
        labels]}}`, every target class listed (`[]`: the teacher lacks it). Passed back as `label_map`, it rebuilds
        the same mapping."""
        return {t.id: m.to_dict() for t, m in zip(self.teachers, self.mappings, strict=True)}

    @property
    def coverage(self) -> torch.Tensor:
        """(K, C) bool: which target classes each teacher can predict."""
        return torch.tensor([m.coverage for m in self.mappings])

    def to(self, device) -> ModelPool:
        for t in self.teachers:
            if not isinstance(t, EndpointTeacher):
                t.model.to(device)
        return self

    @property
    def endpoints(self) -> list[EndpointTeacher]:
        return [t for t in self.teachers if isinstance(t, EndpointTeacher)]

    def endpoint_stats(self) -> dict | None:
        """Calls made, answered, served from the cache and failed, and the answers' observed mass per endpoint
        teacher (metrics.json, the card); None for a pool without endpoint teachers."""
        if not self.endpoints:
            return None
        teachers = {
            t.id: {
                "top_k": t.options.top_k,
                "observed_mass": float(np.mean(t.observed_mass)) if t.observed_mass else None,
            }
            for t in self.endpoints
        }
        return {**self.budget.to_dict(), "teachers": teachers}

    def _endpoint_probs(self, k: int, images, keys, progress: bool, accelerator) -> torch.Tensor:
        """Endpoint teacher k on every image (one process calls, the others receive its answers)."""
        from .images import ImageSet

        teacher = self.teachers[k]
        world = accelerator.num_processes if accelerator is not None else 1
        out = torch.zeros(len(images), len(self.label_names))
        if world == 1 or accelerator.is_main_process:
            step = 1024  # originals are read a chunk at a time
            for start in range(0, len(images), step):
                pos = np.arange(start, min(start + step, len(images)))
                items = images._items(pos) if isinstance(images, ImageSet) else [images[int(i)] for i in pos]
                out[start : start + len(pos)] = teacher.probs(keys[pos], items, progress)[0]
        if world > 1:
            from accelerate.utils import broadcast

            out = broadcast(out.to(accelerator.device), from_process=0).cpu()
        return out

    def probs(self, images, progress: bool = False, accelerator=None, num_workers: int = 0) -> torch.Tensor:
        """Teacher probabilities over the target classes for uint8 images (N, 3, H, W) or an `ImageSet` -> (N, K, C).

        Each teacher runs at most once per distinct input sample: its logits are cached per sample (in memory and,
        with `cache_dir`, on disk), so another run, seed, subset or order of the same samples runs no teacher.

        An `ImageSet` (a lazy dataset split) is read once per batch by a DataLoader with `num_workers` processes:
        each image is decoded at its own size and goes through each teacher's own processor (teachers with the same
        preprocessing share it); its cache key is its original bytes, so the student's input size does not matter.

        Args:
            images: uint8 (N, 3, H, W), or an `hf_mrl.images.ImageSet`.
            progress: show a progress bar per teacher.
            accelerator: an `accelerate.Accelerator` (or `PartialState`) to shard the work: with several processes,
                each runs the teachers on 1/world of the samples no cache holds, and every process gets all the
                results. Every process must then call `probs` with the same images (it is a collective call).
            num_workers: DataLoader processes decoding an `ImageSet`.
        """
        from .images import ImageSet

        if isinstance(images, ImageSet):
            return self._probs_of_originals(images, progress, accelerator, num_workers)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"Expected uint8 images of shape (N, 3, H, W); got {images.dtype} {tuple(images.shape)}.")
        keys = row_keys(images)
        out = torch.empty(len(images), len(self), len(self.label_names))  # (N, K, C)
        for k in range(len(self)):
            if isinstance(self.teachers[k], EndpointTeacher):
                out[:, k] = self._endpoint_probs(k, images, keys, progress, accelerator)
            else:
                out[:, k] = self._teacher_probs(k, images, keys, progress, accelerator)
        return out

    def _probs_of_originals(self, images, progress: bool, accelerator, num_workers: int) -> torch.Tensor:
        """`probs` of an `ImageSet`: one decoding pass over the rows some teacher's cache lacks, shared by teachers."""
        keys = images.keys(num_workers)
        world = accelerator.num_processes if accelerator is not None else 1
        rank = accelerator.process_index if accelerator is not None else 0
        logits, missing = [], []
        for teacher in self.teachers:
            if isinstance(teacher, EndpointTeacher):  # answered below, not run here
                logits.append(None)
                missing.append(np.zeros(len(images), dtype=bool))
                continue
            found, hit = self.cache.lookup(self._cache_key(teacher), keys, len(teacher.label_names))
            if world > 1:  # every process must agree on the rows to compute
                from accelerate.utils import reduce

                miss = torch.from_numpy((~hit).astype("uint8")).to(accelerator.device)
                hit = reduce(miss, reduction="sum").cpu().numpy() == 0
            logits.append(found if found is not None else torch.zeros(len(images), len(teacher.label_names)))
            missing.append(~hit)
        need = np.flatnonzero(np.any(missing, axis=0)) if len(images) else np.zeros(0, np.int64)
        if len(need):
            mine = need[rank::world]
            wanted = [m[mine] for m in missing]
            with contextlib.ExitStack() as stack:  # rows reach the cache as they are computed, even if killed
                writers = [
                    stack.enter_context(self.cache.writer(self._cache_key(t), keys[mine[w]], teacher=t.id))
                    if w.any()
                    else None
                    for t, w in zip(self.teachers, wanted, strict=True)
                ]
                local = self._run_originals(images, mine, wanted, progress, num_workers, writers)
            for k, teacher in enumerate(self.teachers):
                rows = need[missing[k][need]]  # this teacher's new rows, in order
                if not len(rows):
                    continue
                new = local[k] if world == 1 else _gather_rows(local[k], need, missing[k], accelerator)
                logits[k][torch.from_numpy(rows)] = new
                if world > 1:
                    self._write_others(teacher, keys[rows], new, accelerator)
            if world > 1:
                accelerator.wait_for_everyone()  # the entries are on disk before anyone looks again
        out = torch.empty(len(images), len(self), len(self.label_names))
        for k, mapping in enumerate(self.mappings):
            if isinstance(self.teachers[k], EndpointTeacher):
                out[:, k] = self._endpoint_probs(k, images, keys, progress, accelerator)
            else:
                out[:, k] = mapping.probs(logits[k])
        return out

    def _run_originals(self, images, rows, wanted, progress: bool, num_workers: int, writers) -> list[torch.Tensor]:
        """Every teacher on the originals at `rows` whose `wanted[k]` mask is set: logits per teacher, in row order,
        each batch also going to `writers[k]`."""
        groups: dict[str, list[int]] = {}
        for k, teacher in enumerate(self.teachers):
            if wanted[k].any():
                groups.setdefault(teacher.transform_key, []).append(k)
        transforms = _GroupTransforms({key: self.teachers[ks[0]].transform for key, ks in groups.items()})
        parts: list[list[torch.Tensor]] = [[torch.empty(0, len(t.label_names))] for t in self.teachers]
        done = 0
        batches = images.batches(
            transforms, rows, batch_size=self.batch_size, num_workers=num_workers, progress=progress, desc="teachers"
        )
        for chunk, inputs in batches:
            for key, ks in groups.items():
                for k in ks:
                    mask = torch.from_numpy(wanted[k][done : done + len(chunk)])
                    if mask.any():
                        x = inputs[key] if bool(mask.all()) else inputs[key][mask]
                        part = self.teachers[k].logits_of_inputs(x, self.precision)
                        writers[k].write(part)
                        parts[k].append(part)
            done += len(chunk)
        return [torch.cat(p) for p in parts]

    def _cache_key(self, teacher: Teacher) -> str:
        return teacher.cache_key if self.precision == "fp32" else f"{teacher.cache_key}-{self.precision}"

    def _teacher_probs(self, k: int, images: torch.Tensor, keys, progress: bool, accelerator=None) -> torch.Tensor:
        teacher, mapping = self.teachers[k], self.mappings[k]
        width = len(teacher.label_names)
        logits, hit = self.cache.lookup(self._cache_key(teacher), keys, width)
        world = accelerator.num_processes if accelerator is not None else 1
        if world > 1:  # every process must agree on the rows to compute
            from accelerate.utils import reduce

            miss = torch.from_numpy((~hit).astype("uint8")).to(accelerator.device)
            hit = reduce(miss, reduction="sum").cpu().numpy() == 0
        missing = (~hit).nonzero()[0]
        if len(missing):
            if world > 1:
                new = self._compute_sharded(k, images, keys, missing, progress, accelerator)
            else:
                new = self._compute(k, images, keys, missing, progress)
            if logits is None:
                logits = torch.zeros(len(images), width)
            logits[torch.from_numpy(missing)] = new
        return mapping.probs(logits)

    def _run(self, k: int, images: torch.Tensor, rows, progress: bool, write=None) -> torch.Tensor:
        """Teacher k on images[rows] in batches -> logits (len(rows), C_teacher); each batch also goes to `write`."""
        from tqdm.auto import tqdm

        teacher = self.teachers[k]
        chunks = range(0, len(rows), self.batch_size)
        parts = [torch.empty(0, len(teacher.label_names))]
        for i in tqdm(chunks, desc=f"teacher {k + 1}/{len(self)}", disable=not progress, leave=False):
            part = teacher.logits(images[torch.from_numpy(rows[i : i + self.batch_size])], self.precision)
            if write is not None:
                write(part)
            parts.append(part)
        return torch.cat(parts)

    def _compute(self, k: int, images: torch.Tensor, keys, missing, progress: bool) -> torch.Tensor:
        teacher = self.teachers[k]
        with self.cache.writer(self._cache_key(teacher), keys[missing], teacher=teacher.id) as writer:
            return self._run(k, images, missing, progress, writer.write)

    def _compute_sharded(self, k: int, images: torch.Tensor, keys, missing, progress: bool, accelerator):
        """Each process runs 1/world of `missing`; all get every row; one process per machine writes the cache."""
        from accelerate.utils import gather

        rank, world = accelerator.process_index, accelerator.num_processes
        teacher = self.teachers[k]
        width, per = len(teacher.label_names), -(-len(missing) // world)
        mine = missing[rank::world]
        with self.cache.writer(self._cache_key(teacher), keys[mine], teacher=teacher.id) as writer:
            local = self._run(k, images, mine, progress and accelerator.is_local_main_process, writer.write)
        padded = torch.zeros(per, width)
        padded[: len(local)] = local
        everyone = gather(padded.to(accelerator.device)).cpu().view(world, per, width)
        new = torch.empty(len(missing), width)
        for r in range(world):
            new[r::world] = everyone[r, : len(range(r, len(missing), world))]
        self._write_others(teacher, keys[missing], new, accelerator)
        accelerator.wait_for_everyone()  # the entry is on disk before anyone looks again
        return new

    def _write_others(self, teacher: Teacher, keys, values: torch.Tensor, accelerator) -> None:
        """After a gather: the rows other processes computed, into this machine's cache (once per machine)."""
        if not (accelerator.is_local_main_process or self.cache.cache_dir is None):
            return
        _, hit = self.cache.contains(self._cache_key(teacher), keys, values.shape[1])
        if (~hit).any():
            with self.cache.writer(self._cache_key(teacher), keys[~hit], teacher=teacher.id) as writer:
                writer.write(values[torch.from_numpy(~hit)])
