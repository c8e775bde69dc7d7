"""Smoke test of the MultiRes-LD builder (benchmarks/multires/build.py) on a tiny size: splits, native sizes, columns,
determinism, and a teacher that hf_mrl loads at its native input size. Synthetic glyphs stand in for Digits-LD so the
test builds nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "multires"))
import build  # noqa: E402

TINY = {"source_train": 10, "source_validation": 10, "target_train": 20, "target_test": 10, "labeled_pool": 1}


def _fake_glyphs(code: str):
    rng = np.random.default_rng(ord(code))
    images = np.zeros((200, 32, 32, 3), dtype=np.uint8)
    images[:, 6:26, 10:22] = rng.integers(100, 255, size=(200, 20, 12, 1), dtype=np.uint8)
    labels = np.arange(200) % 10
    split = {name: np.arange(i * 50, (i + 1) * 50) for i, name in enumerate(build.SPLIT_NAMES)}
    return images, labels, split


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("multires")
    build.build_dataset(root, TINY, glyphs=_fake_glyphs)
    return root


def test_splits_sizes_and_columns(built):
    dd = datasets.load_from_disk(str(built / "data"))
    expected = {"labeled": 30, "unlabeled": 30, "test": 30}
    for domain in build.DOMAIN_NAMES:
        expected[f"source_{domain}_train"] = 10
        expected[f"source_{domain}_validation"] = 10
    assert {k: len(v) for k, v in dd.items()} == expected
    assert dd["test"].features["label"].names == build.LABELS
    assert dd["test"].features["domain"].names == build.DOMAIN_NAMES
    assert isinstance(dd["test"].features["image"], datasets.Image)
    for row in dd["test"]:
        side = build.NATIVE_SIZE[build.DOMAIN_NAMES[row["domain"]]]
        assert row["image"].size == (side, side) and row["image"].mode == "RGB"
    labeled = dd["labeled"]
    assert sorted(np.bincount(labeled["label"], minlength=10).tolist()) == [3] * 10  # one per class and domain
    assert set(dd["source_plate_train"]["domain"]) == {build.DOMAIN_NAMES.index("plate")}


def test_rendering_is_seeded():
    glyph = _fake_glyphs("M")[0][0]
    for domain in build.DOMAIN_NAMES:
        a, b = build.render(domain, glyph, 1, 5), build.render(domain, glyph, 1, 5)
        assert np.array_equal(a, b) and a.shape == (build.NATIVE_SIZE[domain],) * 2 + (3,)
        assert not np.array_equal(a, build.render(domain, glyph, 1, 6))


def test_teacher_saves_at_native_size(built, monkeypatch):
    from hf_mrl.pool.model_pool import Teacher

    monkeypatch.setitem(build.TEACHERS, "chalk", {**build.TEACHERS["chalk"], "epochs": 1})
    monkeypatch.setattr(build, "DOMAIN_NAMES", ["chalk"])
    pool = build.build_teachers(built)
    folder = built / "teachers" / "chalk"
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 96, 96]
    assert config["pretrained_cfg"]["crop_pct"] == 1.0
    assert config["label_names"] == build.LABELS
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
    assert pool.read_text().splitlines()[1:] == ["teachers/chalk"]
    teacher = Teacher.load(str(folder))
    assert teacher.logits(torch.zeros(2, 3, 96, 96, dtype=torch.uint8)).shape == (2, 10)
    # A second call reuses the trained teacher.
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    build.build_teachers(built)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
