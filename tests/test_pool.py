"""The teacher pool: pool files, loading transformers / timm teachers, preprocessing, probabilities, caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_images, make_timm_teacher, make_transformers_teacher
from safetensors.torch import load_file

from hf_mrl import ModelPool, Teacher
from hf_mrl.pool.model_pool import parse_pool_file, parse_teacher_id

TARGET = ["a", "b", "c"]
TRANSFORMERS_LABELS = ["c", "extra", "a", "b"]  # permuted, with one class the target lacks
TIMM_LABELS = ["a", "c"]  # covers part of the target


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("teachers")
    tr = make_transformers_teacher(root / "tr", TRANSFORMERS_LABELS, seed=0)
    tm = make_timm_teacher(root / "tm", TIMM_LABELS, seed=1)
    return str(tr), str(tm)


# ----------------------------------------------------------------------------------------------- pool files


def test_parse_pool_file_skips_comments_and_blank_lines_and_resolves_relative_paths(tmp_path):
    (tmp_path / "models" / "local").mkdir(parents=True)
    pool = tmp_path / "hub-ids.txt"
    lines = ["# my pool", "", "org/model-a   # a trailing comment", "   org/model-b@v1.0", "models/local", "\t"]
    pool.write_text("\n".join([*lines, "# org/commented-out", ""]))
    entries = parse_pool_file(pool)
    assert entries == ["org/model-a", "org/model-b@v1.0", str((tmp_path / "models" / "local").resolve())]


def test_parse_pool_file_relative_path_is_resolved_against_the_file_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "teacher").mkdir(parents=True)
    pool = tmp_path / "cfg" / "pool.txt"
    pool.write_text("teacher\n")
    monkeypatch.chdir(tmp_path)  # `teacher` does not exist relative to the cwd
    assert parse_pool_file(pool) == [str((tmp_path / "cfg" / "teacher").resolve())]


def test_parse_pool_file_duplicates_name_both_lines(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("org/a\n# comment\norg/b\norg/a\n")
    with pytest.raises(ValueError, match="duplicate") as info:
        parse_pool_file(pool)
    message = str(info.value)
    assert ":4:" in message and "line 1" in message and "org/a" in message


def test_parse_pool_file_duplicate_local_paths_written_differently(tmp_path):
    (tmp_path / "t").mkdir()
    pool = tmp_path / "pool.txt"
    pool.write_text(f"t\n{(tmp_path / 't').resolve()}\n")
    with pytest.raises(ValueError, match="duplicate"):
        parse_pool_file(pool)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # another\n"])
def test_parse_pool_file_without_entries_is_refused(tmp_path, text):
    pool = tmp_path / "pool.txt"
    pool.write_text(text)
    with pytest.raises(ValueError, match="lists no teacher"):
        parse_pool_file(pool)


def test_parse_pool_file_entry_with_whitespace_is_refused(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("org/a\norg/b org/c\n")
    with pytest.raises(ValueError, match=r":2:.*malformed"):
        parse_pool_file(pool)


def test_parse_pool_file_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        parse_pool_file(tmp_path / "nope.txt")


def test_parse_teacher_id_with_and_without_revision():
    assert parse_teacher_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_teacher_id("org/name@0123abcd") == ("org/name", "0123abcd")
    assert parse_teacher_id("  org/name  ") == ("org/name", None)
    for bad in ("org/name@", "@main", ""):
        with pytest.raises(ValueError):
            parse_teacher_id(bad)


def test_parse_teacher_id_keeps_an_existing_local_path_with_at_sign(tmp_path):
    folder = tmp_path / "model@v2"
    folder.mkdir()
    assert parse_teacher_id(str(folder)) == (str(folder), None)


# ----------------------------------------------------------------------------------------------- loading and probs


def test_pool_probs_over_transformers_and_timm_teachers(teacher_dirs):
    pool = ModelPool(list(teacher_dirs), TARGET)
    assert [t.library for t in pool.teachers] == ["transformers", "timm"]
    assert pool.ids == list(teacher_dirs)
    assert pool.teachers[0].label_names == TRANSFORMERS_LABELS
    assert pool.teachers[1].label_names == TIMM_LABELS
    assert pool.coverage.tolist() == [[True, True, True], [True, False, True]]

    images = make_images(7, size=16, seed=3)
    probs = pool.probs(images)
    assert probs.shape == (7, 2, 3)
    assert probs.dtype == torch.float32
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(7, 2))
    assert (probs[:, 1, 1] == 0).all()  # the timm teacher lacks class "b"

    # Class order follows the target names, not the teacher's output order.
    logits = pool.teachers[0].logits(images)
    expected = torch.softmax(logits[:, [2, 3, 0]], dim=-1)  # a, b, c in the teacher's outputs
    torch.testing.assert_close(probs[:, 0], expected)


def _capture_inputs(module: torch.nn.Module, store: list):
    def hook(_module, args, kwargs):
        store.append((args[0] if args else kwargs["pixel_values"]).detach().clone())

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def test_each_teacher_gets_its_own_preprocessing(teacher_dirs):
    pool = ModelPool(list(teacher_dirs), TARGET)
    # Uniform images at 32x32: after any resize each stays uniform, so the expected values are exact.
    values = torch.tensor([0, 51, 128, 255], dtype=torch.uint8)
    images = values.view(4, 1, 1, 1).expand(4, 3, 32, 32).contiguous()
    seen_tr, seen_tm = [], []
    handles = [_capture_inputs(pool.teachers[0].model, seen_tr), _capture_inputs(pool.teachers[1].model, seen_tm)]
    try:
        pool.probs(images)
    finally:
        for h in handles:
            h.remove()
    (x_tr,), (x_tm,) = seen_tr, seen_tm
    assert x_tr.shape == (4, 3, 16, 16) and x_tm.shape == (4, 3, 16, 16)
    v = values.float().view(4, 1, 1, 1) / 255.0
    # ViTImageProcessor: rescale 1/255 then normalise with mean 0.5, std 0.5.
    torch.testing.assert_close(x_tr, ((v - 0.5) / 0.5).expand(4, 3, 16, 16), atol=1e-5, rtol=0)
    # timm pretrained config of the helper: mean 0.5, std 0.25.
    torch.testing.assert_close(x_tm, ((v - 0.5) / 0.25).expand(4, 3, 16, 16), atol=1e-5, rtol=0)


def test_probs_rejects_float_images(teacher_dirs):
    pool = ModelPool([teacher_dirs[1]], TARGET)
    with pytest.raises(TypeError, match="uint8"):
        pool.probs(torch.rand(2, 3, 16, 16))


# ----------------------------------------------------------------------------------------------- caching


def test_each_teacher_runs_once_per_sample_in_memory(teacher_dirs):
    pool = ModelPool(list(teacher_dirs), TARGET, batch_size=4)
    images = make_images(10, seed=5)
    first = pool.probs(images)
    second = pool.probs(images.clone())  # same content, another tensor
    assert [t.samples_seen for t in pool.teachers] == [10, 10]
    torch.testing.assert_close(first, second, rtol=0, atol=0)

    other = images.clone()
    other[0, 0, 0, 0] ^= 1  # one pixel changed: that sample alone is new
    pool.probs(other)
    assert [t.samples_seen for t in pool.teachers] == [11, 11]
    # The cache is per sample: a subset, or another order, of samples already seen runs no teacher.
    torch.testing.assert_close(pool.probs(images[[4, 0, 2]]), first[[4, 0, 2]], rtol=0, atol=0)
    assert [t.samples_seen for t in pool.teachers] == [11, 11]


def test_disk_cache_is_reused_by_a_new_pool(teacher_dirs, tmp_path):
    images = make_images(9, seed=6)
    pool = ModelPool(list(teacher_dirs), TARGET, cache_dir=tmp_path / "cache", batch_size=4)
    probs = pool.probs(images)
    assert [t.samples_seen for t in pool.teachers] == [9, 9]
    entries = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(entries) == 2
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert {tuple(load_file(e)["logits"].shape) for e in entries} == {(9, 4), (9, 2)}

    fresh = ModelPool(list(teacher_dirs), TARGET, cache_dir=tmp_path / "cache")
    again = fresh.probs(images)
    assert [t.samples_seen for t in fresh.teachers] == [0, 0]
    torch.testing.assert_close(again, probs, rtol=0, atol=0)

    fresh.probs(make_images(9, seed=7))  # another input set is a miss
    assert [t.samples_seen for t in fresh.teachers] == [9, 9]


def test_corrupted_cache_entry_is_recomputed(teacher_dirs, tmp_path):
    images = make_images(4, seed=8)
    probs = ModelPool([teacher_dirs[1]], TARGET, cache_dir=tmp_path).probs(images)
    (entry,) = tmp_path.rglob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    fresh = ModelPool([teacher_dirs[1]], TARGET, cache_dir=tmp_path)
    torch.testing.assert_close(fresh.probs(images), probs)
    assert fresh.teachers[0].samples_seen == 4


def test_cache_key_changes_with_the_teacher_weights(teacher_dirs, tmp_path):
    """Same folder, new weights: the cached logits of the old weights must not be served."""
    import shutil

    folder = tmp_path / "teacher"
    shutil.copytree(teacher_dirs[1], folder)
    images = make_images(3, seed=9)
    old = ModelPool([str(folder)], TARGET, cache_dir=tmp_path / "cache").probs(images)
    make_timm_teacher(folder, TIMM_LABELS, seed=123)
    pool = ModelPool([str(folder)], TARGET, cache_dir=tmp_path / "cache")
    new = pool.probs(images)
    assert pool.teachers[0].samples_seen == 3
    assert not torch.allclose(old, new)


def test_cache_key_changes_with_the_teacher_preprocessing(teacher_dirs, tmp_path):
    import shutil

    folder = tmp_path / "teacher"
    shutil.copytree(teacher_dirs[1], folder)
    images = make_images(3, seed=10)
    old = ModelPool([str(folder)], TARGET, cache_dir=tmp_path / "cache").probs(images)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    (folder / "config.json").write_text(json.dumps(config))
    pool = ModelPool([str(folder)], TARGET, cache_dir=tmp_path / "cache")
    new = pool.probs(images)
    assert not torch.allclose(old, new)
    assert pool.teachers[0].samples_seen == 3


# ----------------------------------------------------------------------------------------------- refusals


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
    folder = make_transformers_teacher(tmp_path / "pkl", TRANSFORMERS_LABELS, seed=2)
    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="pickle"):
        Teacher.load(str(folder))
    with pytest.raises(ValueError, match="pickle"):
        ModelPool([str(folder)], TARGET)
    teacher = Teacher.load(str(folder), allow_pickle=True)
    assert teacher.library == "transformers"
    assert teacher.logits(make_images(2)).shape == (2, 4)


def test_non_classifier_config_is_refused(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    folder = tmp_path / "backbone"
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(folder)
    with pytest.raises(ValueError, match="not an image classifier"):
        Teacher.load(str(folder))


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        Teacher.load(str(tmp_path / "empty"))


def test_timm_checkpoint_without_label_names_is_refused(tmp_path):
    folder = make_timm_teacher(tmp_path / "tm", TIMM_LABELS)
    config = json.loads((folder / "config.json").read_text())
    config.pop("label_names")
    config["pretrained_cfg"].pop("label_names", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="label_names"):
        Teacher.load(str(folder))


def test_revision_on_a_local_folder_is_refused(teacher_dirs):
    with pytest.raises(ValueError, match="revision"):
        Teacher.load(f"{teacher_dirs[1]}@main")


def test_teacher_needs_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        Teacher(lambda x: x, ["a"])
    with pytest.raises(TypeError):
        Teacher.load(123)


def test_nan_logits_name_the_teacher():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan")) * self.w

    pool = ModelPool([Teacher(Broken(), TARGET, name="org/broken-model")], TARGET)
    with pytest.raises(ValueError, match="org/broken-model"):
        pool.probs(make_images(2))


def test_teacher_sharing_no_label_is_named(teacher_dirs):
    with pytest.raises(ValueError, match=str(Path(teacher_dirs[1]).name)):
        ModelPool(list(teacher_dirs), ["dog", "cat"])


def test_pool_refuses_empty_and_duplicate_teachers(teacher_dirs):
    with pytest.raises(ValueError, match="non-empty"):
        ModelPool([], TARGET)
    with pytest.raises(ValueError, match="Duplicate"):
        ModelPool([teacher_dirs[1], teacher_dirs[1]], TARGET)
