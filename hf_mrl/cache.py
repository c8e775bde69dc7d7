"""Teacher outputs cached on disk, per sample, memory-mapped.

Two kinds of entries, both safetensors files written atomically (a temp file, then a rename), so concurrent
processes and an interrupted run never leave a half-written entry behind:

- **rows** (teacher logits): `cache_dir/<teacher key>/rows-<id>.safetensors`, each holding `keys` (M, 2) int64
  (a 128-bit content hash of each input sample) and `logits` (M, C) float32. A lookup hashes each input sample and
  serves every sample some earlier run has seen, whatever set, subset or order it came in: a new seed (another
  labeled / unlabeled split of the same data), a subset, or a resumed run pays only for samples never seen.
  Entries are read through `numpy.memmap`, so a cache larger than memory costs only the rows a lookup touches, and
  written in chunks as they are computed, so a 10^6-sample set never needs to fit in memory twice.
- **sets** (encoder features): one tensor per (key, input-set fingerprint), `get` / `put`.

A shard that is truncated, has a garbled header or non-finite values is ignored (and its rows recomputed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from .utils import atomic_write_bytes

__all__ = ["LogitCache", "fingerprint", "row_keys"]

logger = logging.getLogger(__name__)

_ROWS_FORMAT = "hf_mrl-rows-1"
_DTYPES = {"F32": np.float32, "I64": np.int64}


def fingerprint(images: torch.Tensor) -> str:
    """Content hash of an input tensor: the same images in the same order give the same key."""
    h = hashlib.sha256(str((tuple(images.shape), str(images.dtype))).encode())
    if not isinstance(images, torch.Tensor):  # an ImageSet: its originals' keys (the shape says its decode size)
        h.update(np.ascontiguousarray(images.keys()).data)
        return h.hexdigest()[:32]
    h.update(np.ascontiguousarray(images.numpy()).reshape(-1).view(np.uint8).data)  # no bytes copy
    return h.hexdigest()[:32]


def row_keys(images: torch.Tensor) -> np.ndarray:
    """A 128-bit content key per sample (N, 2) int64: sha256 of each sample's shape, dtype and bytes."""
    arr = np.ascontiguousarray(images.detach().cpu().numpy())
    prefix = str((tuple(arr.shape[1:]), str(arr.dtype))).encode()
    flat = arr.reshape(len(arr), -1).view(np.uint8)
    out = np.empty((len(arr), 2), dtype=np.int64)
    buf = out.view(np.uint8).reshape(len(arr), 16)
    base = hashlib.sha256(prefix)
    for i, row in enumerate(flat):
        h = base.copy()
        h.update(row.data)
        buf[i] = np.frombuffer(h.digest()[:16], dtype=np.uint8)
    return out


class _Shard:
    """One rows entry: keys (M, 2) int64 and values (M, C) float32, memory-mapped or in memory."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, path: Path | None = None):
        self.keys, self.values, self.path = keys, values, path

    @classmethod
    def open(cls, path: Path) -> _Shard:
        """Memory-map a shard, validating its structure first (raises ValueError when it is unusable)."""
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("truncated header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 1 << 24):
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        if header.get("__metadata__", {}).get("format") != _ROWS_FORMAT:
            raise ValueError("not a rows entry")
        arrays = {}
        for name, ncols in (("keys", 2), ("logits", None)):
            info = header[name]
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
            if len(shape) != 2 or (ncols and shape[1] != ncols) or end - start != np.prod(shape) * dtype().itemsize:
                raise ValueError(f"inconsistent {name} entry")
            if 8 + n + end > size:
                raise ValueError("truncated data")
            arrays[name] = (
                np.memmap(path, dtype=dtype, mode="r", offset=8 + n + start, shape=shape)
                if shape[0]
                else np.empty(shape, dtype)
            )
        if len(arrays["keys"]) != len(arrays["logits"]):
            raise ValueError("keys and logits differ in length")
        return cls(arrays["keys"], arrays["logits"], path)


class _RowStore:
    """All shards of one teacher key, with a sorted index over their keys (rebuilt when shards are added)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.shards: list[_Shard] = []
        self.known: set[str] = set()  # file names already opened or rejected
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def refresh(self) -> None:
        """Open shards written since the last look (by this or another process)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("rows-*.safetensors")):
            if path.name in self.known:
                continue
            self.known.add(path.name)
            try:
                self.add(_Shard.open(path))
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("Ignoring unusable cache entry %s (%s): its rows will be recomputed.", path, err)

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
            sel = shard_of == s
            local = rows[sel] - starts[s]
            sort = np.argsort(local, kind="stable")  # read the memory map in file order
            values[where[sel][sort]] = self.shards[s].values[local[sort]]
        finite = np.isfinite(values[hit]).all(axis=1)
        if not finite.all():
            logger.warning("%d cached rows are not finite: recomputing them.", int((~finite).sum()))
            hit[where[~finite]] = False
        return values, hit


class _RowWriter:
    """Streams (M, C) float32 rows into a new shard: header and keys first, then chunks, then an atomic rename."""

    def __init__(self, store: _RowStore, folder: Path | None, keys: np.ndarray, meta: dict):
        self.store, self.folder, self.keys, self.meta = store, folder, keys, meta
        self.chunks: list[np.ndarray] = []  # in memory only (no cache_dir)
        self.file = self.tmp = None
        self.written = 0

    def _open(self, width: int) -> None:
        m = len(self.keys)
        header = {
            "__metadata__": {"format": _ROWS_FORMAT, **{k: str(v) for k, v in self.meta.items()}},
            "keys": {"dtype": "I64", "shape": [m, 2], "data_offsets": [0, 16 * m]},
            "logits": {"dtype": "F32", "shape": [m, width], "data_offsets": [16 * m, 16 * m + 4 * m * width]},
        }
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8 bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.folder, prefix=".rows-", suffix=".tmp")
        self.file = os.fdopen(fd, "wb")
        self.file.write(struct.pack("<Q", len(blob)) + blob)
        self.file.write(np.ascontiguousarray(self.keys, dtype="<i8").tobytes())

    def write(self, values: torch.Tensor | np.ndarray) -> None:
        arr = np.ascontiguousarray(torch.as_tensor(values).float().numpy(), dtype="<f4")
        if self.folder is None:
            self.chunks.append(arr)
        else:
            if self.file is None:
                self._open(arr.shape[1])
            self.file.write(arr.tobytes())
        self.written += len(arr)

    def close(self) -> None:
        if self.written != len(self.keys):
            raise RuntimeError(f"Cache writer got {self.written} rows for {len(self.keys)} keys.")
        if self.folder is None:
            values = np.concatenate(self.chunks) if self.chunks else np.empty((0, 0), np.float32)
            self.store.add(_Shard(self.keys.copy(), values))
            return
        if self.file is None:  # nothing to write
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        final = self.folder / f"rows-{uuid.uuid4().hex}.safetensors"
        os.replace(self.tmp, final)
        self.tmp = None
        self.store.known.add(final.name)
        self.store.add(_Shard.open(final))

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tmp is not None and os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self) -> _RowWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise


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
        atomic_write_bytes(self._path(teacher_key, fp), save({"logits": logits.contiguous()}))
