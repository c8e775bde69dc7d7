"""A pool of frozen teachers, used only through their class probabilities on target inputs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .cache import LogitCache, fingerprint
from .labels import LabelMapping, map_labels

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
    if os.path.exists(entry):
        return entry, None
    name, sep, revision = entry.rpartition("@")
    if not sep:
        return entry, None
    if not name or not revision:
        raise ValueError(f"Malformed teacher id {entry!r}: expected `repo_id@revision` with both parts non-empty.")
    return name, revision


def parse_pool_file(path: str | os.PathLike) -> list[str]:
    """Read a pool file: one teacher a line (`repo_id[@revision]` or a local path), `#` starts a comment.

    Relative local paths are resolved against the pool file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Pool file {str(path)!r} does not exist.")
    entries: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if any(c.isspace() for c in line):
            raise ValueError(f"{path}:{lineno}: malformed entry {raw.strip()!r}: one teacher id per line, no spaces.")
        local = path.parent / line
        if not os.path.isabs(line) and local.exists():
            line = str(local.resolve())
        parse_teacher_id(line)
        if line in seen:
            raise ValueError(f"{path}:{lineno}: duplicate teacher {line!r} (first on line {seen[line]}).")
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
        "load_failed",
    )

    def __init__(self, teacher: str, reason: str, message: str):
        super().__init__(f"Teacher {teacher!r} {message}")
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
    name: str, revision: str | None, token: str | bool | None, *, allow_pickle: bool = False
) -> tuple[Path, str | None]:
    """Local folder of a teacher and its resolved commit (None for a local path).

    Hub ids go through huggingface_hub's cache (`snapshot_download`), so a repo fetched once online is found again
    with HF_HUB_OFFLINE=1, by branch, tag, or the commit recorded in `Teacher.id`.
    """
    shown = f"{name}@{revision}" if revision else name
    if os.path.isdir(name):
        if revision is not None:
            raise TeacherLoadError(shown, "not_found", "is a local folder; a revision only applies to Hub ids.")
        return Path(name), None
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

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise TeacherLoadError(
            shown, "not_found", "was not found: no such local folder, and not a Hub repo id (`org/name[@revision]`)."
        ) from None
    patterns = [*_HUB_PATTERNS, *(_PICKLE_WEIGHTS if allow_pickle else ())]
    try:
        folder = snapshot_download(name, revision=revision, token=token, allow_patterns=patterns)
    except GatedRepoError as err:
        raise TeacherLoadError(
            shown,
            "gated",
            "is gated on the Hub: request access on its page, then log in (`hf auth login` or HF_TOKEN).",
        ) from err
    except RevisionNotFoundError as err:
        raise TeacherLoadError(
            shown, "revision_not_found", f"was not found: the Hub repo {name!r} has no revision {revision!r}."
        ) from err
    except RepositoryNotFoundError as err:
        raise TeacherLoadError(
            shown,
            "not_found",
            "was not found: no such local folder, and no Hub repository by that id that you can access "
            "(check the id; a private repo needs a token).",
        ) from err
    except LocalEntryNotFoundError as err:
        if constants.HF_HUB_OFFLINE:
            raise TeacherLoadError(
                shown,
                "offline",
                f"is not in the Hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1: run once online to cache "
                "it (a revision is found offline only if that same revision was fetched online).",
            ) from err
        raise TeacherLoadError(
            shown,
            "unreachable",
            f"is not in the Hub cache and the Hub ({constants.ENDPOINT}) cannot be reached: {err.__cause__ or err}",
        ) from err
    except HfHubHTTPError as err:
        raise TeacherLoadError(shown, "hub_error", f"could not be fetched from the Hub: {err}") from err
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


def _detect_library(folder: Path, shown: str) -> tuple[str, dict]:
    """`timm` or `transformers` and the parsed config.json, from the checkpoint's files; raise for anything else."""
    config_file = folder / "config.json"
    config: dict | None = None
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise TeacherLoadError(
                shown, "unknown_format", f"has a config.json that is not valid JSON ({err})."
            ) from err
        if not isinstance(config, dict):
            raise TeacherLoadError(shown, "unknown_format", "has a config.json that is not a JSON object.")
    if config is not None and "architecture" in config and "pretrained_cfg" in config:
        return "timm", config
    if config is not None and ("model_type" in config or "architectures" in config):
        return "transformers", config
    for marker, what in _OTHER_FORMATS.items():
        if (folder / marker).is_file():
            raise TeacherLoadError(
                shown,
                "unknown_format",
                f"looks like {what} ({marker}), not a transformers or timm checkpoint: unknown format for the pool.",
            )
    if config is None:
        files = sorted(p.name for p in folder.iterdir())[:12]
        raise TeacherLoadError(
            shown, "unknown_format", f"has no config.json (files: {files}): not a transformers or timm checkpoint."
        )
    raise TeacherLoadError(
        shown,
        "unknown_format",
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
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"A teacher must be a torch.nn.Module or loaded with Teacher.load; got {type(model)}.")
        self.model = model.eval().requires_grad_(False)
        self.label_names = [str(n) for n in label_names]
        self.preprocess = preprocess or (lambda images: images.float() / 255.0)
        self.name = name
        self.revision = revision
        self.library = library
        self.weights_hash = weights_hash
        self.samples_seen = 0  # teacher forward passes, counted per sample

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
            trust_remote_code: let transformers run the repository's own modelling code.
        """
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"A teacher source must be a Hub id or a path; got {type(source).__name__}.")
        shown = str(source).strip()
        name, revision = parse_teacher_id(shown)
        folder, commit = _resolve(name, revision, token, allow_pickle=allow_pickle)
        library, config = _detect_library(folder, shown)
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
                    "Convert it to safetensors, or pass allow_pickle=True if you trust it.",
                )
            if not pickles:
                raise TeacherLoadError(shown, "no_weights", f"has no weights: expected {_WEIGHTS}.")
            weights = [folder / p for p in pickles]
        if library == "timm":
            model, labels, preprocess = _load_timm(folder, config, shown)
        else:
            model, labels, preprocess = _load_transformers(folder, config, shown, allow_pickle, trust_remote_code)
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
        )

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) -> logits (B, C_teacher)."""
        device = next(self.model.parameters()).device
        out = self.model(self.preprocess(images).to(device))
        out = getattr(out, "logits", out)
        self.samples_seen += images.shape[0]
        if not torch.isfinite(out).all():
            raise ValueError(f"Teacher {self.id!r} produced NaN or infinite logits; its weights may be corrupted.")
        return out.float().cpu()


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of a checkpoint: one file, or the shards named by its index."""
    if (folder / _WEIGHTS).is_file():
        return [folder / _WEIGHTS]
    index = folder / f"{_WEIGHTS}.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return []
        return [index, *(folder / s for s in shards)] if all((folder / s).is_file() for s in shards) else []
    return []


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
    if not labels:
        raise TeacherLoadError(
            shown, "no_labels", "(timm) has no `label_names` in config.json: its outputs cannot be mapped."
        )
    if model.num_classes != len(labels):
        raise TeacherLoadError(shown, "no_labels", f"has {model.num_classes} outputs but {len(labels)} label names.")
    return model, list(labels), _timm_preprocess(model.pretrained_cfg)


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
    if (folder / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)

        def preprocess(images: torch.Tensor) -> torch.Tensor:
            return processor(images=images, return_tensors="pt")["pixel_values"]
    else:
        logger.warning("Teacher %s has no preprocessor_config.json: feeding pixels scaled to [0, 1].", shown)
        preprocess = None
    return model, labels, preprocess


class ModelPool:
    """K frozen teachers whose probabilities over the target classes are computed once and cached.

    Args:
        teachers: `Teacher` objects, Hub ids (`org/name[@revision]`) or local folders.
        label_names: the target task's class names; each teacher's labels are mapped onto them.
        cache_dir: where teacher probabilities persist across runs (keyed by teacher commit and weights
            hash and by an input fingerprint); in memory only when None.
        batch_size: teacher inference batch size.

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
        **load_kwargs,
    ):
        if isinstance(teachers, (str, os.PathLike)) or not len(teachers):
            raise ValueError(
                "A ModelPool needs a non-empty list of teachers (use ModelPool.from_file for a pool file)."
            )
        self.label_names = [str(n) for n in label_names]
        self.teachers = [t if isinstance(t, Teacher) else Teacher.load(t, **load_kwargs) for t in teachers]
        ids = [t.id for t in self.teachers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Duplicate teachers in the pool: {ids}.")
        self.mappings: list[LabelMapping] = [
            map_labels(t.label_names, self.label_names, teacher_name=f"Teacher {t.id!r}") for t in self.teachers
        ]
        self.cache = LogitCache(cache_dir)
        self.batch_size = batch_size

    @classmethod
    def from_file(cls, path: str | os.PathLike, label_names: Sequence[str], **kwargs) -> ModelPool:
        return cls(parse_pool_file(path), label_names, **kwargs)

    def __len__(self) -> int:
        return len(self.teachers)

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.teachers]

    @property
    def coverage(self) -> torch.Tensor:
        """(K, C) bool: which target classes each teacher can predict."""
        return torch.tensor([m.coverage for m in self.mappings])

    def to(self, device) -> ModelPool:
        for t in self.teachers:
            t.model.to(device)
        return self

    def probs(self, images: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Teacher probabilities over the target classes for uint8 images (N, 3, H, W) -> (N, K, C).

        Each teacher runs at most once per distinct input set: results are cached in memory and, with
        `cache_dir`, on disk.
        """
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"Expected uint8 images of shape (N, 3, H, W); got {images.dtype} {tuple(images.shape)}.")
        fp = fingerprint(images)
        return torch.stack([self._teacher_probs(k, images, fp, progress) for k in range(len(self))], dim=1)

    def _teacher_probs(self, k: int, images: torch.Tensor, fp: str, progress: bool) -> torch.Tensor:
        teacher, mapping = self.teachers[k], self.mappings[k]
        logits = self.cache.get(teacher.cache_key, fp)
        if logits is None:
            from tqdm.auto import tqdm

            chunks = range(0, images.shape[0], self.batch_size)
            bar = tqdm(chunks, desc=f"teacher {k + 1}/{len(self)}", disable=not progress, leave=False)
            logits = torch.cat([teacher.logits(images[i : i + self.batch_size]) for i in bar])
            self.cache.put(teacher.cache_key, fp, logits)
        return mapping.probs(logits)
