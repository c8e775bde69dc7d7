"""One frozen teacher, used only through its outputs: loaded once, eval mode, no grad, its own processor."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import torch

from hf_mrl.pool.ids import parse_teacher_id
from hf_mrl.pool.labels import imagenet_descriptions
from hf_mrl.pool.loading import (
    _check_finite,
    _checked_checkpoint,
    _files_hash,
    _FromUint8,
    _load_timm,
    _load_transformers,
    _timm_descriptions,
    autocast_dtype,
)

logger = logging.getLogger(__name__)


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
