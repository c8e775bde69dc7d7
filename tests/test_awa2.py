"""The AwA2 attribute loader on a tiny folder in the published layout, and one recipe run on what it builds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from helpers import make_timm_teacher, make_transformers_teacher

from hf_mrl.data import AWA2_ATTRIBUTES, attribute_label_names, load_awa2, load_awa2_attribute, read_awa2_metadata
from hf_mrl.data.target import check_dataset, target_from_datasets
from hf_mrl.testing import make_awa2_fixture
from hf_mrl.testing.awa2_fixture import FIXTURE_CLASSES


@pytest.fixture(scope="module")
def awa2(tmp_path_factory) -> Path:
    return make_awa2_fixture(tmp_path_factory.mktemp("awa2") / "Animals_with_Attributes2")


def _copy(awa2: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(awa2, root)
    return root


def test_labels_are_the_predicate_matrix_of_each_images_class(awa2):
    meta = read_awa2_metadata(awa2)
    assert meta.classes == FIXTURE_CLASSES and meta.matrix.shape == (6, 9)
    for attribute in AWA2_ATTRIBUTES:
        column = [p.lower() for p in meta.predicates].index(attribute.lower())
        task = load_awa2_attribute(awa2, attribute, labeled_per_class=2, seed=3)
        check_dataset(task)  # the recipe's own validation of a --dataset folder
        for split in ("labeled", "unlabeled", "test"):
            ds = task[split]
            assert ds.features["label"].names == [f"not {attribute.lower()}", attribute.lower()]
            assert isinstance(ds.features["image"], datasets.Image)
            paths = ds.cast_column("image", datasets.Image(decode=False))["image"]
            for path, label, cls in zip(paths, ds["label"], ds["class"], strict=True):
                name = meta.classes[cls]
                assert Path(path["path"]).parent.name == name  # the class column is the image's folder
                assert label == meta.matrix[cls, column]
        counts = np.bincount(task["labeled"]["label"], minlength=2)
        assert counts.tolist() == [2, 2]


def test_splits_are_disjoint_complete_and_seeded(awa2):
    def paths(task, split):
        return [p["path"] for p in task[split].cast_column("image", datasets.Image(decode=False))["image"]]

    a, b, c = (load_awa2_attribute(awa2, "spots", labeled_per_class=3, seed=s) for s in (0, 0, 1))
    parts = {s: set(paths(a, s)) for s in ("labeled", "unlabeled", "test")}
    assert not parts["labeled"] & parts["unlabeled"] and not parts["test"] & (parts["labeled"] | parts["unlabeled"])
    every = {str(p) for p in (awa2 / "JPEGImages").rglob("*.jpg")}
    assert set().union(*parts.values()) == every
    assert len(parts["test"]) == 6 * 2  # round(6 * 0.3) of each class
    assert paths(a, "labeled") == paths(b, "labeled")  # same seed, same subset
    assert paths(a, "labeled") != paths(c, "labeled")  # another seed draws another
    assert paths(a, "test") == paths(c, "test")  # the test split does not move with the seed
    both = load_awa2(awa2, ["Smart", "Lean"], labeled_per_class=1)
    assert list(both) == ["Smart", "Lean"] and both["Lean"]["labeled"].num_rows == 2


def test_a_class_subset_and_the_images_decode(awa2):
    task = load_awa2_attribute(awa2, "Slow", labeled_per_class=1, classes=FIXTURE_CLASSES[:4])
    used = {FIXTURE_CLASSES[i] for s in task.values() for i in s["class"]}
    assert used <= set(FIXTURE_CLASSES[:4])
    image = task["test"][0]["image"]
    assert image.size == (24, 24)
    data = target_from_datasets(task, image_size=16)
    assert tuple(data.test_images.shape[1:]) == (3, 16, 16) and data.label_names == ["not slow", "slow"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "predicates.txt").unlink(), r"Missing AwA2 file .*predicates\.txt\. Expected the published"),
        (lambda r: (r / "classes.txt").unlink(), r"Missing AwA2 file .*classes\.txt"),
        (lambda r: (r / "predicate-matrix-binary.txt").unlink(), r"Missing AwA2 file .*predicate-matrix-binary"),
        (lambda r: shutil.rmtree(r / "JPEGImages"), r"Missing AwA2 folder .*JPEGImages"),
        (lambda r: shutil.rmtree(r / "JPEGImages" / "dolphin"), r"Class 'dolphin' .*has no image folder .*dolphin"),
        (
            lambda r: (r / "predicate-matrix-binary.txt").write_text("0 1\n" * 6),
            r"has 6 rows of \[2\] values; expected 6 rows .* of 9 values",
        ),
        (
            lambda r: (r / "predicate-matrix-binary.txt").write_text("0.5 " * 9 + "\n" + "0 " * 9 + "\n" * 5),
            r"has 2 rows",
        ),
        (
            lambda r: (r / "predicate-matrix-binary.txt").write_text(("0.5 " * 9 + "\n") * 6),
            r"must hold only 0 and 1",
        ),
    ],
)
def test_a_broken_folder_names_the_file_and_the_layout(awa2, tmp_path, damage, message):
    root = _copy(awa2, tmp_path)
    damage(root)
    with pytest.raises(ValueError, match=message):
        load_awa2_attribute(root, "Smart")


def test_bad_arguments_are_refused_with_what_is_known(awa2, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown AwA2 attribute 'furry'; the paper's are .*'Smart'.* lists: black"):
        load_awa2_attribute(awa2, "furry")
    with pytest.raises(ValueError, match=r"Unknown AwA2 classes \['unicorn'\]; choose from .*antelope"):
        load_awa2_attribute(awa2, "Smart", classes=["antelope", "unicorn"])
    with pytest.raises(ValueError, match=r"labeled_per_class=13 is more than attribute 'Smart' allows: .* has 12"):
        load_awa2_attribute(awa2, "Smart", labeled_per_class=13)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\); got 1.5"):
        load_awa2_attribute(awa2, "Smart", test_fraction=1.5)
    with pytest.raises(ValueError, match="AwA2 folder .*nowhere does not exist"):
        load_awa2_attribute(tmp_path / "nowhere", "Smart")
    with pytest.raises(TypeError, match="got int"):
        load_awa2_attribute(awa2, 3)
    assert attribute_label_names("Nestspot") == ["not nestspot", "nestspot"]


def test_the_recipe_trains_end_to_end_on_an_attribute_task(awa2, recipe, tmp_path):
    data = tmp_path / "awa2-smart"
    copy = _copy(awa2, tmp_path)
    load_awa2_attribute(copy, "Smart", labeled_per_class=2).save_to_disk(str(data))
    shutil.rmtree(copy)  # the saved folder holds the images themselves, not paths into the AwA2 folder
    names = attribute_label_names("Smart")
    t1 = make_transformers_teacher(tmp_path / "teacher-hf", names, seed=0)
    t2 = make_timm_teacher(tmp_path / "teacher-timm", names, seed=1)
    pool = tmp_path / "pool.txt"
    pool.write_text(f"{t1}\n{t2}\n")
    out = tmp_path / "run"
    argv = ["--pool", str(pool), "--dataset", str(data), "--output_dir", str(out), "--max_steps", "2"]
    argv += ["--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16", "--guard_folds", "0"]
    recipe.main(argv + ["--cache_dir", str(tmp_path / "cache"), "--no_progress"])

    for part in ("reuser", "student"):
        assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (out / part).iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_labeled"] == 4 and metrics["num_test"] == 12 and metrics["num_unlabeled"] == 20
    assert 0.0 <= metrics["student_accuracy"] <= 1.0 and 0.0 <= metrics["reuser_accuracy"] <= 1.0
    assert len(metrics["teacher_accuracy"]) == 2
    # The binary label names travel into the reuser's config, the student's labels and the cards.
    assert json.loads((out / "reuser" / "config.json").read_text())["label_names"] == names
    assert "not smart" in (out / "student" / "config.json").read_text()
