"""Small helpers shared by the library, its recipes and its tests: one for each recurring chore."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = [
    "DiskFullError",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_root",
    "check_json_depth",
    "disk_full_error",
    "is_disk_full",
    "read_json",
    "remove_stale_temp",
    "torch_threads",
]


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


class DiskFullError(OSError):
    """No space left while writing; the message names the folder and the space it needs."""


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` (an OSError, or a library's error that wraps one in its message) means the disk is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err).lower()
    return "no space left" in text or "disk quota exceeded" in text or "enospc" in text


def disk_full_error(folder: str | os.PathLike, what: str, needed: int | None = None) -> DiskFullError:
    """A `DiskFullError` that says which folder is full, how much is free, and (when known) how much is needed."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    need = f"; it needs about {_size(needed)}" if needed else ""
    return DiskFullError(
        errno.ENOSPC,
        f"No space left on the disk of {folder} while writing {what} ({_size(free)} free{need}). Nothing "
        "half-written was kept: free some space and run again.",
    )


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_json_depth(text: str, max_depth: int = 64, what: str = "JSON") -> None:
    """Raise ValueError when `text` nests arrays or objects deeper than `max_depth`.

    `json.loads` recurses once per level and raises RecursionError (uncaught, late) on a crafted file; this scan
    does not recurse and runs before any long work.
    """
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"{what} nests deeper than {max_depth} levels: not a file hf_mrl writes or reads.")
        elif ch in "]}":
            depth -= 1


def read_json(path: str | os.PathLike, max_depth: int = 64, what: str | None = None):
    """Parse a JSON file after checking its nesting depth: a crafted file is a ValueError naming it, at once.

    Also a `ValueError` (never a RecursionError or UnicodeDecodeError) for invalid JSON or text that is not UTF-8;
    a UTF-8 byte-order mark is accepted.
    """
    what = what or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} is not UTF-8 text ({err.reason} at byte {err.start}).") from None
    check_json_depth(text, max_depth, what)
    return json.loads(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(name: str) -> str:
    # host and pid in the name let `remove_stale_temp` tell a dead writer's leftover from a live writer's file
    return f".{name}.{_HOST}.{os.getpid()}."


_HOST = socket.gethostname().replace(".", "-")[:32] or "host"
_STALE_AFTER = 3600.0


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync: bool = False) -> Path:
    """Write a file whole or not at all: readers (other processes, a rerun after a crash) never see half of it.

    With `sync`, the data reach the disk before the rename (an entry others rely on survives a power cut).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; outputs follow the user's umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def remove_stale_temp(folder: str | os.PathLike) -> int:
    """Remove temp files `atomic_write_bytes` left in `folder` when its writer was killed; returns how many.

    A file is stale when its writer (named in the file name) is a dead process on this host, or, for a writer on
    another host sharing the folder, when it has not changed for an hour. A live writer's file is never touched.
    """
    removed = 0
    for path in Path(folder).glob(".*.tmp"):
        parts = path.name.rsplit(".", 4)  # .NAME . HOST . PID . RANDOM . tmp
        if len(parts) != 5 or not parts[2].isdigit():
            continue
        host, pid = parts[1], int(parts[2])
        try:
            if host == _HOST:
                if _alive(pid):
                    continue
            elif time.time() - path.lstat().st_mtime < _STALE_AFTER:
                continue
            if not path.is_symlink() and path.is_file():
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; outputs follow the user's umask
    try:
        yield tmp
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def kmeans(
    x: torch.Tensor, k: int, seed: int = 0, iters: int = 50, init: str = "k-means++", centres_too: bool = False
):
    """Seeded k-means of rows (n, p) -> cluster index (n,) (and the centres with `centres_too`).

    `init`: "k-means++" (spread-out seeds; the guard's latent clusters) or "random" (k distinct rows; pool
    selection's clusters). A cluster that empties keeps its centre; iteration stops when no assignment changes.
    """
    n = len(x)
    k = max(1, min(k, n))
    gen = torch.Generator().manual_seed(seed)
    if init == "random":
        centres = x[torch.randperm(n, generator=gen)[:k]].clone()
    elif init == "k-means++":
        chosen = [x[torch.randint(n, (1,), generator=gen)].squeeze(0)]
        for _ in range(1, k):
            d2 = torch.cdist(x, torch.stack(chosen)).min(1).values ** 2
            if float(d2.sum()) <= 0:
                break
            chosen.append(x[torch.multinomial(d2 / d2.sum(), 1, generator=gen)].squeeze(0))
        centres = torch.stack(chosen)
    else:
        raise ValueError(f"init must be 'k-means++' or 'random'; got {init!r}.")
    assign = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        centres = torch.stack(
            [x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(len(centres))]
        )
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return (assign, centres) if centres_too else assign
