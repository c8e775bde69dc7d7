"""The per-sample, memory-mapped teacher-logit cache: hits and misses, reuse across pools and seeds, corrupted
entries, atomic writes, precision keys, and teacher inference sharded over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_images
from safetensors.torch import load_file

import hf_mrl.pool.cache as cache_module
from hf_mrl import ModelPool, Teacher
from hf_mrl.pool.cache import LogitCache, fingerprint, row_keys

LABELS = ["a", "b", "c"]


def _teacher(seed: int = 0, name: str = "t0") -> Teacher:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model.append(torch.nn.Linear(4, len(LABELS)))
    return Teacher(model, LABELS, name=name, weights_hash=f"w{seed}")


def _pool(cache_dir=None, seeds=(0, 1), **kwargs) -> ModelPool:
    return ModelPool([_teacher(s, f"t{s}") for s in seeds], LABELS, cache_dir=cache_dir, batch_size=4, **kwargs)


def _seen(pool: ModelPool) -> list[int]:
    return [t.samples_seen for t in pool.teachers]


def _entries(root: Path) -> list[Path]:
    return sorted(root.rglob("rows-*.safetensors"))


# ----------------------------------------------------------------------------------------------- keys


def test_row_keys_depend_on_content_only():
    images = make_images(6, seed=0)
    keys = row_keys(images)
    assert keys.shape == (6, 2) and keys.dtype == np.int64
    assert len({tuple(k) for k in keys}) == 6
    np.testing.assert_array_equal(row_keys(images.clone()[[3, 1]]), keys[[3, 1]])
    changed = images.clone()
    changed[2, 1, 0, 0] ^= 1
    assert (row_keys(changed) != keys).any(axis=1).tolist() == [False, False, True, False, False, False]
    assert fingerprint(images) == fingerprint(images.clone())


# ----------------------------------------------------------------------------------------------- hits and misses


def test_hit_and_miss_counts_and_values(tmp_path):
    images = make_images(10, seed=1)
    pool = _pool(tmp_path)
    first = pool.probs(images)
    assert _seen(pool) == [10, 10]
    assert pool.cache.misses == 20 and pool.cache.hits == 0
    again = pool.probs(images)
    assert _seen(pool) == [10, 10] and pool.cache.hits == 20
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    # Half old, half new samples: only the new half runs.
    mixed = torch.cat([images[:5], make_images(5, seed=2)])
    torch.testing.assert_close(pool.probs(mixed)[:5], first[:5], rtol=0, atol=0)
    assert _seen(pool) == [15, 15]


def test_disk_entries_are_memory_mapped_safetensors(tmp_path):
    pool = _pool(tmp_path)
    pool.probs(make_images(9, seed=3))
    entries = _entries(tmp_path)
    assert len(entries) == 2  # one per teacher
    for entry in entries:
        tensors = load_file(entry)  # readable by any safetensors reader
        assert tensors["keys"].shape == (9, 2) and tensors["logits"].shape == (9, 3)
    fresh = LogitCache(tmp_path)
    key = pool._cache_key(pool.teachers[0])
    values, hit = fresh.lookup(key, row_keys(make_images(9, seed=3)))
    assert hit.all() and values.shape == (9, 3)
    assert all(isinstance(s.values, np.memmap) for s in fresh._rows[key].shards)


def test_reuse_across_pool_instances_and_seeds(tmp_path):
    """Another run, another seed (another labeled / unlabeled split of the same samples): no teacher runs."""
    data = make_images(24, seed=4)
    pool = _pool(tmp_path)
    perm0 = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    labeled, unlabeled = data[perm0[:6]], data[perm0[6:]]
    ref = {"l": pool.probs(labeled), "u": pool.probs(unlabeled)}
    assert _seen(pool) == [24, 24]

    perm1 = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    fresh = _pool(tmp_path)  # a new run: new pool, new teacher objects, same cache folder
    probs = fresh.probs(data[perm1])
    assert _seen(fresh) == [0, 0]
    inverse = torch.argsort(perm0)
    torch.testing.assert_close(probs, torch.cat([ref["l"], ref["u"]])[inverse][perm1], rtol=0, atol=0)


def test_teacher_weights_and_precision_are_part_of_the_key(tmp_path):
    images = make_images(4, seed=5)
    _pool(tmp_path, seeds=(0,)).probs(images)
    other_weights = _pool(tmp_path, seeds=(7,))
    other_weights.teachers[0].name = "t0"  # same id, other weights hash
    other_weights.probs(images)
    assert _seen(other_weights) == [4]
    bf16 = _pool(tmp_path, seeds=(0,), precision="bf16")
    out = bf16.probs(images)
    assert _seen(bf16) == [4]  # bf16 logits are another entry, never mixed with fp32 ones
    assert torch.allclose(out.sum(-1), torch.ones(4, 1))
    with pytest.raises(ValueError, match="precision"):
        _pool(precision="fp8")


# ----------------------------------------------------------------------------------------------- corruption


def _flip_exponents(entry: Path, rows: int) -> None:
    """Flip an exponent bit of the first `rows` logits in place: the values stay finite but change by 2^k."""
    raw = bytearray(entry.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    start = 8 + n + header["logits"]["data_offsets"][0]
    width = header["logits"]["shape"][1]
    for i in range(rows * width):
        raw[start + 4 * i + 3] ^= 0x01  # lowest exponent bit of a little-endian float32
    entry.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "nan", "flipped", "keys"])
def test_damaged_entry_is_reported_deleted_and_recomputed(tmp_path, damage, caplog):
    images = make_images(6, seed=6)
    ref = _pool(tmp_path, seeds=(0,)).probs(images)
    (entry,) = _entries(tmp_path)
    raw = entry.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    if damage == "garbage":
        entry.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        entry.write_bytes(raw[: len(raw) - 10])
    elif damage == "nan":  # a valid file whose logits were overwritten with NaN
        tensors = load_file(entry)
        tensors["logits"][2] = float("nan")
        data = raw[8 + n :]
        logits = tensors["logits"].numpy().astype("<f4").tobytes()
        entry.write_bytes(raw[: 8 + n] + data[: len(data) - len(logits)] + logits)
    elif damage == "flipped":
        _flip_exponents(entry, 6)
        assert np.isfinite(load_file(entry)["logits"].numpy()).all()  # no finiteness check could see it
    else:  # one bit of one key: that row would be served for another image
        header = json.loads(raw[8 : 8 + n])
        at = 8 + n + header["keys"]["data_offsets"][0]
        entry.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :])
    fresh = _pool(tmp_path, seeds=(0,))
    with caplog.at_level("WARNING", logger="hf_mrl.pool.cache"):
        torch.testing.assert_close(fresh.probs(images), ref, rtol=0, atol=0)
    assert _seen(fresh) == [6]
    assert "recomputed" in caplog.text and entry.name in caplog.text
    assert entry not in _entries(tmp_path)  # deleted: the next run does not meet it again
    assert len(_entries(tmp_path)) == 1  # the recomputed rows


def test_encoder_feature_entries_carry_a_checksum(tmp_path, caplog):
    cache = LogitCache(tmp_path)
    feats = torch.randn(5, 4)
    cache.put("enc", "fp", feats)
    torch.testing.assert_close(LogitCache(tmp_path).get("enc", "fp"), feats, rtol=0, atol=0)
    (entry,) = tmp_path.rglob("fp.safetensors")
    raw = bytearray(entry.read_bytes())
    raw[-1] ^= 0x01
    entry.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="hf_mrl.pool.cache"):
        assert LogitCache(tmp_path).get("enc", "fp") is None
    assert "checksum" in caplog.text


def test_a_fifo_named_like_an_entry_is_skipped(tmp_path):
    images = make_images(4, seed=12)
    pool = _pool(tmp_path, seeds=(0,))
    folder = tmp_path / pool._cache_key(pool.teachers[0])
    folder.mkdir(parents=True)
    os.mkfifo(folder / "rows-0000.safetensors")  # opening it for reading would block forever
    probs = pool.probs(images)
    assert _seen(pool) == [4] and probs.shape == (4, 1, 3)
    assert (folder / "rows-0000.safetensors").exists()  # not ours to delete: only regular files are removed


def test_an_older_entry_without_checksums_is_recomputed(tmp_path, caplog):
    images = make_images(4, seed=13)
    _pool(tmp_path, seeds=(0,)).probs(images)
    (entry,) = _entries(tmp_path)
    raw = entry.read_bytes()
    entry.write_bytes(raw.replace(b"hf_mrl-rows-2", b"hf_mrl-rows-1"))
    fresh = _pool(tmp_path, seeds=(0,))
    with caplog.at_level("WARNING", logger="hf_mrl.pool.cache"):
        fresh.probs(images)
    assert _seen(fresh) == [4] and "older hf_mrl" in caplog.text


# ----------------------------------------------------------------------------------------------- atomic writes


def test_an_interrupted_write_keeps_the_rows_it_received(tmp_path):
    cache = LogitCache(tmp_path)
    keys = row_keys(make_images(8, seed=7))
    rows = torch.randn(4, 3)
    with pytest.raises(KeyboardInterrupt):
        with cache.writer("t", keys) as writer:
            writer.write(rows)
            raise KeyboardInterrupt  # interrupted between two chunks
    assert not list(tmp_path.rglob("*.tmp"))
    values, hit = LogitCache(tmp_path).lookup("t", keys)
    assert hit.tolist() == [True] * 4 + [False] * 4
    torch.testing.assert_close(values[:4], rows, rtol=0, atol=0)


def test_writer_commits_shards_as_it_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "_SHARD_ROWS", 4)
    cache = LogitCache(tmp_path)
    keys = row_keys(make_images(10, seed=8))
    rows = torch.randn(10, 5)
    readable = []
    with cache.writer("t", keys) as writer:
        for i in range(0, 10, 3):
            writer.write(rows[i : i + 3])
            readable.append(int(LogitCache(tmp_path).lookup("t", keys)[1].sum()))  # as another process sees it
    assert readable == [0, 6, 6, 10]  # a shard is committed once it holds 4 rows or more
    values, hit = LogitCache(tmp_path).lookup("t", keys)
    assert hit.all() and len(_entries(tmp_path)) == 2
    torch.testing.assert_close(values, rows, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="rows"):
        with cache.writer("u", keys) as writer:
            writer.write(rows[:4])
    with pytest.raises(RuntimeError, match="rows"):
        with cache.writer("u", keys[:2]) as writer:
            writer.write(rows[:3])
    assert not list(tmp_path.rglob("*.tmp"))


def test_temp_files_of_dead_writers_are_removed(tmp_path):
    from hf_mrl import utils

    pool = _pool(tmp_path, seeds=(0,))
    folder = tmp_path / pool._cache_key(pool.teachers[0])
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder / f".rows-x.safetensors.{utils._HOST}.{dead.stdout.strip()}.abcd1234.tmp"
    live = folder / f".rows-y.safetensors.{utils._HOST}.{os.getpid()}.abcd1234.tmp"
    foreign = folder / ".rows-z.safetensors.otherhost.1.abcd1234.tmp"  # another machine: only when an hour old
    for path in (stale, live, foreign):
        path.write_bytes(b"partial")
    pool.probs(make_images(3, seed=14))
    assert not stale.exists() and live.exists() and foreign.exists()
    old = os.stat(foreign).st_mtime - 7200
    os.utime(foreign, (old, old))
    _pool(tmp_path, seeds=(0,)).probs(make_images(3, seed=14))
    assert not foreign.exists() and live.exists()


def test_entries_written_by_another_process_are_found(tmp_path):
    images = make_images(5, seed=9)
    reader = _pool(tmp_path, seeds=(0,))
    assert reader.cache.lookup(reader._cache_key(reader.teachers[0]), row_keys(images))[1].sum() == 0
    _pool(tmp_path, seeds=(0,)).probs(images)  # another "process" fills the cache meanwhile
    reader.probs(images)
    assert _seen(reader) == [0]


# ----------------------------------------------------------------------------------------------- processes

SHARDED = textwrap.dedent(
    """
    import json, sys, torch
    from accelerate import PartialState
    sys.path.insert(0, {tests!r})
    from test_cache import _pool
    from helpers import make_images
    state = PartialState(cpu=True)
    images = make_images(21, seed=11)
    pool = _pool({cache!r})
    probs = pool.probs(images, accelerator=state)
    first = [t.samples_seen for t in pool.teachers]
    again = _pool({cache!r}).probs(images, accelerator=state)
    ref = _pool().probs(images)  # one process, no cache
    result = {{"rank": state.process_index, "first": first, "same": bool(torch.equal(again, probs)),
              "close": bool(torch.allclose(probs, ref, atol=1e-6))}}
    with open({out!r} + f"/rank{{state.process_index}}.json", "w") as f:  # not stdout: the processes interleave
        json.dump(result, f)
    """
)


@pytest.mark.slow
def test_teacher_inference_is_sharded_over_processes(tmp_path):
    script = tmp_path / "sharded.py"
    tests = str(Path(__file__).parent)
    script.write_text(SHARDED.format(tests=tests, cache=str(tmp_path / "cache"), out=str(tmp_path)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert len(results) == 2
    assert sorted(r["first"][0] for r in results) == [10, 11]  # each process ran its half
    assert all(r["same"] and r["close"] for r in results)
    # each process stores the rows it computed (as it computes them), so every row is written once, read by both
    entries = _entries(tmp_path / "cache")
    assert len(entries) == 4 and sum(len(load_file(e)["keys"]) for e in entries) == 2 * 21
