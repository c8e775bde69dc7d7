"""Teacher outputs cached on disk, per sample, memory-mapped.

Two kinds of entries, both safetensors files written atomically (a temp file, then a rename), so concurrent
processes and an interrupted run never leave a half-written entry behind:

- **rows** (teacher logits): `cache_dir/<teacher key>/rows-<id>.safetensors`, each holding `keys` (M, 2) int64
  (a 128-bit content hash of each input sample) and `logits` (M, C) float32. A lookup hashes each input sample and
  serves every sample some earlier run has seen, whatever set, subset or order it came in: a new seed (another
  labeled / unlabeled split of the same data), a subset, or a resumed run pays only for samples never seen.
  Entries are read through `numpy.memmap`, so a cache larger than memory costs only the rows a lookup touches, and
  committed in shards as they are computed (every few thousand rows or seconds), so a killed teacher pass keeps what
  it computed and a 10^6-sample set never needs to fit in memory twice.
- **sets** (encoder features): one tensor per (key, input-set fingerprint), `get` / `put`.

Every entry carries sha256 checksums of what it holds (rows: of the keys, checked on open, and of the logits,
checked the first time a lookup reads the shard; sets: of the tensor). An entry that is truncated, has a garbled
header, fails its checksum, holds non-finite values or is not a regular file is reported, deleted when it is a
file, and its rows recomputed. Temp files left by a killed writer are removed by the next look.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import struct
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from hf_mrl.data.images import row_keys
from hf_mrl.utils import atomic_write_bytes, check_json_depth, disk_full_error, is_disk_full, remove_stale_temp

__all__ = ["LogitCache", "fingerprint", "row_keys"]

logger = logging.getLogger(__name__)

_ROWS_FORMAT = "hf_mrl-rows-2"
_OLD_FORMATS = ("hf_mrl-rows-1",)
_SHARD_ROWS = 4096
_SHARD_BYTES = 32 << 20
_SHARD_SECONDS = 10.0
_DTYPES = {"F32": np.float32, "I64": np.int64}


def fingerprint(images: torch.Tensor) -> str:
    """Content hash of an input tensor: the same images in the same order give the same key."""
    h = hashlib.sha256(str((tuple(images.shape), str(images.dtype))).encode())
    if not isinstance(images, torch.Tensor):  # an ImageSet: its originals' keys (the shape says its decode size)
        h.update(np.ascontiguousarray(images.keys()).data)
        return h.hexdigest()[:32]
    h.update(np.ascontiguousarray(images.numpy()).reshape(-1).view(np.uint8).data)  # no bytes copy
    return h.hexdigest()[:32]


class _Shard:
    """One rows entry: keys (M, 2) int64 and values (M, C) float32, memory-mapped or in memory.

    On disk the metadata holds a sha256 of the keys' bytes and one of the values' bytes. The keys are checked on
    open (they are read whole to build the index); the values the first time a lookup reads from the shard, so a
    cache larger than memory is still read only where it is used.
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray, path: Path | None = None, digest: str | None = None):
        self.keys, self.values, self.path, self.digest = keys, values, path, digest
        self.verified = path is None

    @classmethod
    def open(cls, path: Path) -> _Shard:
        """Memory-map a shard, validating its structure and keys first (raises ValueError when it is unusable)."""
        # O_NONBLOCK + fstat: a FIFO or device named like an entry is refused without blocking on it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            size = info.st_size
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("truncated header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 1 << 24):
                raise ValueError("bad header length")
            text = f.read(n).decode("utf-8")
            check_json_depth(text, 4, "a cache entry's header")
            header = json.loads(text)
            meta = header.get("__metadata__", {})
            if meta.get("format") != _ROWS_FORMAT:
                raise ValueError(
                    "written by an older hf_mrl, without checksums"
                    if meta.get("format") in _OLD_FORMATS
                    else "not a rows entry"
                )
            arrays = {}
            for name, ncols in (("keys", 2), ("logits", None)):
                entry = header[name]
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(s) for s in entry["shape"])
                start, end = (int(o) for o in entry["data_offsets"])
                if (
                    len(shape) != 2
                    or (ncols and shape[1] != ncols)
                    or end - start != np.prod(shape) * dtype().itemsize
                ):
                    raise ValueError(f"inconsistent {name} entry")
                if 8 + n + end > size:
                    raise ValueError("truncated data")
                arrays[name] = (
                    np.memmap(f, dtype=dtype, mode="r", offset=8 + n + start, shape=shape)
                    if shape[0]
                    else np.empty(shape, dtype)
                )
        if len(arrays["keys"]) != len(arrays["logits"]):
            raise ValueError("keys and logits differ in length")
        if _digest(arrays["keys"]) != meta.get("keys_sha256"):
            raise ValueError("the keys do not match their checksum")
        return cls(arrays["keys"], arrays["logits"], path, meta.get("logits_sha256"))

    def verify(self) -> bool:
        """Whether the values match their checksum (computed once per shard and process)."""
        if not self.verified:
            self.verified = _digest(self.values) == self.digest
            if not self.verified:
                return False
        return True


def _digest(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    for i in range(0, len(flat), 1 << 24):  # 16 MB at a time: a large memory map is not read into memory whole
        h.update(flat[i : i + (1 << 24)].data)
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return _digest(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())


class _RowStore:
    """All shards of one teacher key, with a sorted index over their keys (rebuilt when shards are added)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.shards: list[_Shard] = []
        self.known: set[str] = set()  # file names already opened or rejected
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def refresh(self) -> None:
        """Open shards written since the last look (by this or another process); drop temp files of dead writers."""
        if self.folder is None or not self.folder.is_dir():
            return
        remove_stale_temp(self.folder)
        for path in sorted(self.folder.glob("rows-*.safetensors")):
            if path.name in self.known:
                continue
            self.known.add(path.name)
            try:
                self.add(_Shard.open(path))
            except (OSError, ValueError, KeyError, TypeError) as err:
                self._discard(path, err)

    def _discard(self, path: Path, why) -> None:
        """A damaged entry is deleted (when it is a regular file) so that the next run does not meet it again."""
        logger.warning("Cache entry %s is unusable (%s): its rows are recomputed.", path, why)
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.remove(path)

    def add(self, shard: _Shard) -> None:
        if len(shard.keys):
            self.shards.append(shard)
            self._index = None

    def _build_index(self):
        if self._index is None:
            keys = np.concatenate([s.keys for s in self.shards]) if self.shards else np.empty((0, 2), np.int64)
            order = np.argsort(keys[:, 0], kind="stable")
            starts = np.cumsum([0] + [len(s.keys) for s in self.shards])
            self._index = (keys[order, 0], keys[order, 1], order, starts)
        return self._index

    def lookup(self, keys: np.ndarray, num_values: int | None) -> tuple[np.ndarray | None, np.ndarray]:
        """Values (N, C) float32 (rows of misses left 0) and the hit mask (N,)."""
        while True:
            try:
                return self._lookup(keys, num_values)
            except _Damaged as damaged:  # drop it and look again: its rows become misses
                self.shards.remove(damaged.shard)
                self._index = None
                self._discard(damaged.shard.path, "its logits do not match their checksum")

    def _lookup(self, keys: np.ndarray, num_values: int | None) -> tuple[np.ndarray | None, np.ndarray]:
        hit = np.zeros(len(keys), dtype=bool)
        if not self.shards:
            return None, hit
        first, second, order, starts = self._build_index()
        pos = np.searchsorted(first, keys[:, 0])
        pos_c = np.minimum(pos, len(first) - 1)
        hit = (pos < len(first)) & (first[pos_c] == keys[:, 0]) & (second[pos_c] == keys[:, 1])
        width = self.shards[0].values.shape[1]
        if num_values is not None and width != num_values:
            return None, np.zeros(len(keys), dtype=bool)
        values = np.zeros((len(keys), width), dtype=np.float32)
        rows = order[pos_c[hit]]  # global row ids of the hits
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        where = np.flatnonzero(hit)
        for s in np.unique(shard_of):
            if not self.shards[s].verify():
                raise _Damaged(self.shards[s])
            sel = shard_of == s
            local = rows[sel] - starts[s]
            sort = np.argsort(local, kind="stable")  # read the memory map in file order
            values[where[sel][sort]] = self.shards[s].values[local[sort]]
        finite = np.isfinite(values[hit]).all(axis=1)
        if not finite.all():
            logger.warning("%d cached rows are not finite: recomputing them.", int((~finite).sum()))
            hit[where[~finite]] = False
        return values, hit


class _Damaged(Exception):
    def __init__(self, shard: _Shard):
        self.shard = shard


class _RowWriter:
    """Takes (M, C) rows for `keys` in order and commits them as they come, in shards of bounded size and age.

    A shard is written whole (in memory first, at most `_SHARD_BYTES`, then an atomic rename) once it holds
    `_SHARD_ROWS` rows, `_SHARD_BYTES` of values or `_SHARD_SECONDS` of work, so a killed teacher pass keeps all
    but its last few seconds, and an interrupted one (an exception) keeps everything it computed.
    """

    def __init__(self, store: _RowStore, folder: Path | None, keys: np.ndarray, meta: dict):
        self.store, self.folder, self.keys, self.meta = store, folder, keys, meta
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.written = 0  # rows received
        self.committed = 0  # rows in shards
        self.started = time.monotonic()

    def write(self, values: torch.Tensor | np.ndarray) -> None:
        arr = np.ascontiguousarray(torch.as_tensor(values).float().numpy(), dtype="<f4")
        if self.written + len(arr) > len(self.keys):
            raise RuntimeError(f"Cache writer got {self.written + len(arr)} rows for {len(self.keys)} keys.")
        self.pending.append(arr)
        self.pending_rows += len(arr)
        self.written += len(arr)
        width = max(arr.shape[1], 1) if arr.ndim == 2 else 1
        if (
            self.pending_rows >= min(_SHARD_ROWS, max(1, _SHARD_BYTES // (4 * width)))
            or time.monotonic() - self.started >= _SHARD_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Commit the rows received so far as one shard."""
        if not self.pending_rows:
            return
        values = np.concatenate(self.pending)
        keys = np.ascontiguousarray(self.keys[self.committed : self.committed + len(values)], dtype="<i8")
        self.pending, self.pending_rows = [], 0
        if self.folder is None:
            self.store.add(_Shard(keys.copy(), values))
        else:
            final = self.folder / f"rows-{uuid.uuid4().hex}.safetensors"
            meta = {**self.meta, "keys_sha256": _digest(keys), "logits_sha256": _digest(values)}
            blob = save({"keys": torch.from_numpy(keys), "logits": torch.from_numpy(values)}, _metadata(meta))
            try:
                atomic_write_bytes(final, blob, sync=True)
            except OSError as err:
                if is_disk_full(err):
                    raise disk_full_error(self.folder, "teacher outputs to the cache", len(blob)) from err
                raise
            self.store.known.add(final.name)
            self.store.add(_Shard.open(final))
        self.committed += len(values)
        self.started = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self.written != len(self.keys):
            raise RuntimeError(f"Cache writer got {self.written} rows for {len(self.keys)} keys.")

    def __enter__(self) -> _RowWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            with contextlib.suppress(Exception):  # rows already computed are kept; the first error is the one raised
                self.flush()
            return
        self.close()


def _metadata(meta: dict) -> dict:
    return {"format": _ROWS_FORMAT, **{k: str(v) for k, v in meta.items()}}


class LogitCache:
    """Per-sample teacher logits (`lookup` / `writer`) and per-set tensors (`get` / `put`), in memory or on disk.

    Args:
        cache_dir: where entries persist across runs and processes; in memory only when None.

    >>> cache = LogitCache()
    >>> keys = row_keys(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    >>> with cache.writer("teacher", keys) as w:
    ...     w.write(torch.ones(2, 5))
    >>> values, hit = cache.lookup("teacher", keys)
    >>> values.shape, hit.tolist()
    (torch.Size([2, 5]), [True, True])
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[tuple[str, str], torch.Tensor] = {}
        self._rows: dict[str, _RowStore] = {}
        self.hits = 0  # samples (rows) or sets served from the cache
        self.misses = 0

    # -- rows ----------------------------------------------------------------------------------------------
    def _store(self, teacher_key: str) -> _RowStore:
        if teacher_key not in self._rows:
            folder = self.cache_dir / teacher_key if self.cache_dir is not None else None
            self._rows[teacher_key] = _RowStore(folder)
        store = self._rows[teacher_key]
        store.refresh()
        return store

    def lookup(
        self, teacher_key: str, keys: np.ndarray, num_values: int | None = None
    ) -> tuple[torch.Tensor | None, np.ndarray]:
        """Cached rows for per-sample `keys` (N, 2): values (N, C) (zeros where missed) or None, and the hit mask.

        `num_values`, when given, is the expected row width: entries of another width are not served.
        """
        values, hit = self._store(teacher_key).lookup(keys, num_values)
        self.hits += int(hit.sum())
        self.misses += int((~hit).sum())
        return (torch.from_numpy(values) if values is not None else None), hit

    def contains(self, teacher_key: str, keys: np.ndarray, num_values: int | None = None) -> tuple[None, np.ndarray]:
        """The hit mask of `keys`, not counted as hits or misses (for writers deciding what is left to store)."""
        return None, self._store(teacher_key).lookup(keys, num_values)[1]

    def writer(self, teacher_key: str, keys: np.ndarray, **meta) -> _RowWriter:
        """A context manager taking the rows for `keys` in order (`write(chunk)`), committed on exit."""
        store = self._store(teacher_key)
        folder = self.cache_dir / teacher_key if self.cache_dir is not None else None
        return _RowWriter(store, folder, np.asarray(keys, dtype=np.int64), {"teacher": teacher_key, **meta})

    # -- sets ----------------------------------------------------------------------------------------------
    def _path(self, teacher_key: str, fp: str) -> Path:
        return self.cache_dir / teacher_key / f"{fp}.safetensors"

    def get(self, teacher_key: str, fp: str) -> torch.Tensor | None:
        key = (teacher_key, fp)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self._path(*key) if self.cache_dir is not None else None
        if path is not None and path.is_file():  # is_file: a FIFO named like an entry is never opened
            value = None
            try:
                with safe_open(path, "pt") as f:
                    expected = (f.metadata() or {}).get("sha256")
                    value = f.get_tensor("logits")
                if expected != _tensor_digest(value):
                    raise ValueError("its values do not match their checksum")
            except Exception as err:  # a damaged entry is recomputed, not trusted
                logger.warning("Cache entry %s is unusable (%s): it is recomputed.", path, err)
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
        logits = logits.contiguous()
        meta = {"format": "hf_mrl-set-2", "sha256": _tensor_digest(logits)}
        atomic_write_bytes(self._path(teacher_key, fp), save({"logits": logits}, meta))
