"""The lazy data path: images stay in the dataset, teachers read originals through their own processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_target_dataset, make_timm_teacher, make_transformers_teacher

from hf_mrl import ImageSet, ModelPool, MRLConfig, ReuseArguments, ReuseTrainer, StudentTrainer
from hf_mrl.data.target import load_target

LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """48 px target images; teachers at 16 px (timm, transformers) and a second timm teacher sharing its config."""
    root = tmp_path_factory.mktemp("lazy")
    data = make_target_dataset(root / "data", n_labeled_per_class=2, n_unlabeled=30, n_test=12, size=48)
    teachers = [
        make_timm_teacher(root / "timm-a", LABELS, seed=1),
        make_timm_teacher(root / "timm-b", LABELS, seed=2),
        make_transformers_teacher(root / "hf", LABELS, seed=3),
    ]
    return {"data": str(data), "teachers": [str(t) for t in teachers]}


def _plain_probs(pool: ModelPool, originals: list) -> torch.Tensor:
    """Each teacher on the decoded originals through timm's / transformers' own preprocessing, then mapped."""
    from timm.data import create_transform, resolve_data_config
    from transformers import AutoImageProcessor

    out = []
    for teacher, mapping in zip(pool.teachers, pool.mappings, strict=True):
        if teacher.library == "timm":
            transform = create_transform(**resolve_data_config({}, model=teacher.model))
            x = torch.stack([transform(img) for img in originals])
        else:
            processor = AutoImageProcessor.from_pretrained(teacher.name)
            x = processor(images=originals, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = teacher.model(x)
        out.append(mapping.probs(getattr(logits, "logits", logits)))
    return torch.stack(out, dim=1)


def test_a_dataset_loads_lazily_and_indexes_like_the_old_tensor(task):
    data, _ = load_target(task["data"], image_size=8)
    assert isinstance(data.unlabeled_images, ImageSet) and data.lazy
    eager, _ = load_target(task["data"], image_size=8, lazy=False)
    assert isinstance(eager.unlabeled_images, torch.Tensor) and not eager.lazy
    idx = torch.tensor([5, 0, 29, 5])
    assert torch.equal(data.unlabeled_images[idx], eager.unlabeled_images[idx])
    assert data.unlabeled_images.shape == eager.unlabeled_images.shape == (30, 3, 8, 8)
    assert torch.equal(data.unlabeled_images.subset([3, 4])[1], eager.unlabeled_images[4])
    assert data.unlabeled_images.originals([0])[0].size == (48, 48)  # the original, not a thumbnail


def test_teachers_read_originals_through_their_own_processors(task):
    data, _ = load_target(task["data"], image_size=8)
    pool = ModelPool(task["teachers"], LABELS)
    lazy = pool.probs(data.test_images)
    expected = _plain_probs(pool, data.test_images.originals(range(len(data.test_images))))
    torch.testing.assert_close(lazy, expected, atol=1e-5, rtol=1e-4)
    # The old path: a 8 px thumbnail blown up by the teacher: other outputs.
    thumbnails, _ = load_target(task["data"], image_size=8, lazy=False)
    assert (pool.probs(thumbnails.test_images) - expected).abs().max() > 1e-3


def test_the_cache_is_keyed_by_original_bytes_and_the_decode_is_shared(task, tmp_path, monkeypatch):
    data, _ = load_target(task["data"], image_size=8)
    pool = ModelPool(task["teachers"], LABELS, cache_dir=tmp_path)
    calls = []
    for t in pool.teachers:
        monkeypatch.setattr(t, "transform", _Counting(t.transform, calls, t.transform_key))
    first = pool.probs(data.unlabeled_images)
    timm_keys = {t.transform_key for t in pool.teachers if t.library == "timm"}
    assert len(timm_keys) == 1  # two timm teachers with one data config: one transformed batch for both
    assert sorted(set(calls)) == sorted({t.transform_key for t in pool.teachers})
    assert len(calls) == 2 * len(range(0, 30, pool.batch_size))
    seen = [t.samples_seen for t in pool.teachers]
    assert seen == [30, 30, 30]
    # Another student size, another process's pool: nothing recomputed, the same outputs.
    again = ModelPool(task["teachers"], LABELS, cache_dir=tmp_path)
    torch.testing.assert_close(again.probs(data.unlabeled_images.resized(24)), first)
    assert [t.samples_seen for t in again.teachers] == [0, 0, 0]
    # A subset of the rows: still read from the cache.
    torch.testing.assert_close(again.probs(data.unlabeled_images.subset([7, 2])), first[[7, 2]])
    assert [t.samples_seen for t in again.teachers] == [0, 0, 0]


class _Counting:
    def __init__(self, fn, calls: list, key: str):
        self.fn, self.calls, self.key = fn, calls, key

    def __call__(self, images):
        self.calls.append(self.key)
        return self.fn(images)


def test_decoding_workers_give_the_same_training(task):
    data, _ = load_target(task["data"], image_size=16)
    config = MRLConfig(method="supervised", max_steps=6, batch_size=4, unlabeled_batch_size=8, seed=3)
    histories, weights = [], []
    for workers in (0, 1):
        trainer = StudentTrainer(config, data, num_workers=workers)
        student = trainer.train(progress=False)
        histories.append([h["loss"] for h in trainer.history])
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)
    torch.testing.assert_close(weights[0], weights[1])


def test_a_pretrained_size_student_reads_lazy_images_at_its_own_size(task):
    data, _ = load_target(task["data"], image_size=8)
    spec = {"image_size": 24}
    trainer = StudentTrainer(MRLConfig(method="supervised", max_steps=1, batch_size=4), data, student_spec=spec)
    assert trainer.input_size == 24 and trainer.data.labeled_images.size == 24
    gen, idx_l, _ = trainer.batch_indices(0)
    assert trainer.data.labeled_images[idx_l].shape[-1] == 24


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a singleton: another mixed precision needs a reset
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_teacher_inference_follows_the_accelerators_mixed_precision(task, fresh_accelerate_state):
    from accelerate import Accelerator

    data, _ = load_target(task["data"], image_size=8)
    pool = ModelPool(task["teachers"], LABELS)
    args = ReuseArguments(guard_folds=0, supervised_baseline=False, progress=False)
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    trainer = ReuseTrainer(pool, data, MRLConfig(max_steps=1), args, accelerator=accelerator)
    reuse = trainer.compute_teacher_outputs()
    assert pool.precision == "bf16"
    fp32 = ModelPool(task["teachers"], LABELS).probs(data.test_images)
    gap = (reuse.probs_t - fp32).abs().max().item()
    assert 0 < gap < 0.1  # bf16 outputs: close to fp32, not equal


def test_skip_bad_images_on_a_lazy_split_keeps_rows_aligned(tmp_path):
    import datasets

    path = make_target_dataset(tmp_path / "d", n_unlabeled=6, size=12)
    dd = datasets.load_from_disk(str(path))
    unl = dd["unlabeled"].cast_column("image", datasets.Image(decode=False))
    images = list(unl["image"])
    images[3] = {"bytes": b"not an image", "path": None}
    dd["unlabeled"] = datasets.Dataset.from_dict(
        {"image": images, "label": list(unl["label"]), "domain": list(unl["domain"])},
        features=dd["unlabeled"].features,
    )
    dd.save_to_disk(str(tmp_path / "bad"))
    data, desc = load_target(str(tmp_path / "bad"), image_size=12, skip_bad_images=True)
    assert desc.skipped_images == {"unlabeled": [3]}
    assert len(data.unlabeled_images) == 5 and data.unlabeled_images.rows.tolist() == [0, 1, 2, 4, 5]
    good, _ = load_target(str(path), image_size=12, lazy=False)
    keep = np.array([0, 1, 2, 4, 5])
    assert torch.equal(data.unlabeled_images[:], good.unlabeled_images[keep])


def test_an_encoder_embedding_is_pinned_to_its_commit_and_reads_originals(task, local_hub, tmp_path):
    """`encoder:org/name` resolves to the commit it loaded (saved with the reuser); on a lazy split its features come
    from the encoder's own processor on the originals, cached by each image's bytes."""
    from huggingface_hub import HfApi

    from hf_mrl import Embedding

    folder = make_timm_teacher(tmp_path / "enc", LABELS, seed=9)
    api = HfApi()
    api.create_repo("org/enc", exist_ok=True)
    commit = api.upload_folder(repo_id="org/enc", folder_path=folder).oid
    embedding = Embedding("encoder:org/enc", cache_dir=tmp_path / "cache").prepare()
    assert embedding.spec["model_id"] == f"org/enc@{commit}"
    api.upload_file(path_or_fileobj=b"x", path_in_repo="other.txt", repo_id="org/enc")  # main moves on
    assert Embedding(embedding.spec).prepare().pinned_id == f"org/enc@{commit}"

    data, _ = load_target(task["data"], image_size=8)
    feats = embedding(data.test_images, None)
    model, _, transform, _ = embedding._encoder
    originals = data.test_images.originals(range(len(data.test_images)))
    with torch.no_grad():
        expected = model(transform(originals))
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-4)
    # Cached by bytes: another size, another Embedding object, no encoder call.
    again = Embedding(embedding.spec, cache_dir=tmp_path / "cache").prepare()
    again._encoder = (_refuse, *again._encoder[1:])
    torch.testing.assert_close(again(data.test_images.resized(16), None), feats)


def _refuse(_):
    raise AssertionError("the encoder ran although its features are cached")


def test_decoding_workers_follow_a_strategy_that_routes_the_batches(task):
    """MRL with held-out outer labels draws its own inner batches: prefetched images must be those batches."""
    from hf_mrl import Embedding, compute_teacher_outputs

    data, _ = load_target(task["data"], image_size=16)
    pool = ModelPool(task["teachers"], LABELS)
    reuse = compute_teacher_outputs(pool, Embedding("teacher-outputs"), data)
    config = MRLConfig(
        max_steps=6, batch_size=4, unlabeled_batch_size=8, seed=1, outer_every=2, outer_labels="heldout", outer_folds=2
    )
    histories = []
    for workers in (0, 1):
        trainer = StudentTrainer(config, data, reuse, teacher_ids=pool.ids, num_workers=workers)
        trainer.train(progress=False)
        histories.append([h["ce_loss"] for h in trainer.history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


KILLED_PASS = """
import sys, time
sys.path.insert(0, {tests!r})
import torch
import hf_mrl.pool.cache as cache
from hf_mrl import ModelPool
from hf_mrl.data.target import load_target

cache._SHARD_SECONDS = 0.2  # commit every 0.2 s of work (10 s by default) so that the test need not wait long
data, _ = load_target({data!r}, image_size=8)
pool = ModelPool([{teacher!r}], {labels!r}, cache_dir={cache!r}, batch_size=2)
forward = pool.teachers[0].logits_of_inputs

def slow(x, precision="fp32"):
    out = forward(x, precision)
    with open({progress!r}, "a") as f:
        f.write(f"{{len(x)}}\\n")
    time.sleep(0.1)
    return out

pool.teachers[0].logits_of_inputs = slow
pool.probs(data.unlabeled_images, num_workers=0)
"""


def test_a_killed_teacher_pass_keeps_the_rows_it_computed(task, tmp_path):
    """SIGKILL in the middle of a lazy split's teacher pass: the rerun computes only the rows not yet committed."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    progress = tmp_path / "progress"
    script = tmp_path / "pass.py"
    script.write_text(
        KILLED_PASS.format(
            tests=str(Path(__file__).parent),
            data=task["data"],
            teacher=task["teachers"][0],
            labels=LABELS,
            cache=str(tmp_path / "cache"),
            progress=str(progress),
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and sum(map(int, progress.read_text().split())) >= 16:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the teacher pass ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    computed = sum(map(int, progress.read_text().split()))
    assert computed < 30

    data, _ = load_target(task["data"], image_size=8)
    pool = ModelPool([task["teachers"][0]], LABELS, cache_dir=tmp_path / "cache", batch_size=2)
    probs = pool.probs(data.unlabeled_images, num_workers=0)
    reused = 30 - pool.teachers[0].samples_seen
    assert reused >= 12, f"only {reused} of the {computed} rows computed before the kill were kept"
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    fresh = ModelPool([task["teachers"][0]], LABELS, batch_size=2)  # batch size changes float rounding
    torch.testing.assert_close(probs, fresh.probs(data.unlabeled_images, num_workers=0), rtol=0, atol=0)
