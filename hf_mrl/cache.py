"""Teacher logits cached per (teacher, input set), in memory and optionally on disk."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["LogitCache", "fingerprint"]


def fingerprint(images: torch.Tensor) -> str:
    """Content hash of an input tensor: the same images in the same order give the same key."""
    h = hashlib.sha256(str((tuple(images.shape), str(images.dtype))).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


class LogitCache:
    """Maps (teacher key, input fingerprint) to a logits tensor.

    On disk, each entry is one safetensors file written atomically, so concurrent processes and an
    interrupted run never leave a half-written entry behind.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[tuple[str, str], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def _path(self, teacher_key: str, fp: str) -> Path:
        return self.cache_dir / teacher_key / f"{fp}.safetensors"

    def get(self, teacher_key: str, fp: str) -> torch.Tensor | None:
        key = (teacher_key, fp)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        if self.cache_dir is not None and self._path(*key).is_file():
            try:
                value = load_file(self._path(*key))["logits"]
            except Exception:  # a corrupted entry is recomputed, not trusted
                value = None
            if value is not None:
                self._memory[key] = value
                self.hits += 1
                return value
        self.misses += 1
        return None

    def put(self, teacher_key: str, fp: str, logits: torch.Tensor) -> None:
        self._memory[(teacher_key, fp)] = logits
        if self.cache_dir is None:
            return
        path = self._path(teacher_key, fp)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"logits": logits.contiguous()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
