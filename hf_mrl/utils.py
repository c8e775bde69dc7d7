"""Small helpers shared by the library, its recipes and its tests: one for each recurring chore."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["atomic_dir", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "cache_root", "torch_threads"]


def cache_root() -> Path:
    """Where hf_mrl keeps what it builds and caches: `$HF_MRL_CACHE`, by default `~/.cache/hf_mrl`."""
    return Path(os.environ.get("HF_MRL_CACHE") or Path.home() / ".cache" / "hf_mrl").expanduser()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` intra-op threads inside the block, then restore the previous count.

    Results can depend on the thread count (reduction order), and on a busy 2-core machine two OpenMP threads
    competing with another process made a tiny training step ~100x slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a file whole or not at all: readers (other processes, a rerun after a crash) never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` of `text` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _finite(obj):
    """NaN and infinities as None: JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, data, indent: int = 2) -> Path:
    """`atomic_write_text` of `data` as JSON, NaN written as null."""
    return atomic_write_text(path, json.dumps(_finite(data), indent=indent))


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling temp folder to fill; on success swap it in for `final`, on error remove it.

    A crash while writing leaves `final` as it was; a crash between the two renames leaves the previous folder in
    `.NAME.old`, which the next call puts back first. A model, a teacher or a dataset is never half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; caches and outputs may be shared
    try:
        yield tmp
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
