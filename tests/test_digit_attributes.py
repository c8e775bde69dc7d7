"""The offline attribute benchmark (`benchmarks/attributes/`): attribute definitions, tasks, teacher pools, driver."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "attributes"))

import attribute_pool  # noqa: E402
import digit_attributes as da  # noqa: E402

from hf_mrl.data import load_digits_ld  # noqa: E402
from hf_mrl.data.target import check_dataset, load_target  # noqa: E402
from hf_mrl.pool.model_pool import ModelPool, parse_pool_file  # noqa: E402


def test_seven_balanced_distinct_attributes():
    assert len(da.DIGIT_ATTRIBUTES) == 7
    tables = {name: da.attribute_labels(name, np.arange(10)) for name in da.DIGIT_ATTRIBUTES}
    for name, table in tables.items():
        assert 4 <= table.sum() <= 6, name  # no attribute is nearly constant over the digits
    for (a, ta), (b, tb) in itertools.combinations(tables.items(), 2):
        assert not np.array_equal(ta, tb) and not np.array_equal(ta, 1 - tb), (a, b)
    assert tables["Even"].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert tables["Prime"].tolist() == [0, 0, 1, 1, 0, 1, 0, 1, 0, 0]
    assert da.attribute_digits("large") == (5, 6, 7, 8, 9)
    with pytest.raises(ValueError, match=r"Unknown digit attribute 'round'; choose from \['Even', 'Loop'"):
        da.attribute_digits("round")


def test_a_task_relabels_digits_ld_and_keeps_domains_for_evaluation():
    task = da.build_attribute_task("Loop", "US", labeled_per_class=5, seed=1)
    check_dataset(task)
    reference = load_digits_ld("US", labeled_per_class=1)
    assert task["test"]["digit"] == reference["test"]["label"]  # Digits-LD's own fixed test part
    assert task["test"]["domain"] == reference["test"]["domain"]
    for split in task.values():
        assert split.features["label"].names == ["not loop", "loop"]
        assert split["label"] == da.attribute_labels("Loop", split["digit"]).tolist()
    assert np.bincount(task["labeled"]["label"]).tolist() == [5, 5]
    train = len(reference["labeled"]) + len(reference["unlabeled"])
    assert len(task["labeled"]) + len(task["unlabeled"]) == train
    again = da.build_attribute_task("Loop", "US", labeled_per_class=5, seed=1)
    other = da.build_attribute_task("Loop", "US", labeled_per_class=5, seed=2)
    assert again["labeled"]["digit"] == task["labeled"]["digit"]
    assert other["labeled"]["image"] != task["labeled"]["image"]

    # The benchmark form: every target-train image in `labeled` (and `unlabeled`); load_target draws per run.
    bench = da.build_attribute_task("Loop", "US")
    assert len(bench["labeled"]) == len(bench["unlabeled"]) == train
    with pytest.raises(ValueError, match="labeled_per_class=100000 exceeds"):
        da.build_attribute_task("Loop", "US", labeled_per_class=100000)


def test_saved_tasks_load_as_a_recipe_dataset(tmp_path):
    folders = da.save_attribute_tasks(["prime"], "U", root=tmp_path)
    assert folders == {"Prime": tmp_path / "U" / "Prime"}
    data, _ = load_target(str(folders["Prime"]), 7, seed=0)
    assert data.label_names == ["not prime", "prime"]
    assert data.labeled_labels.bincount().tolist() == [7, 7]
    assert data.domain_names == ["M", "U", "S"] and set(data.test_domains.tolist()) == {1}
    mtime = (folders["Prime"] / "dataset_dict.json").stat().st_mtime_ns
    da.save_attribute_tasks(["Prime"], "U", root=tmp_path)  # reused, not rebuilt
    assert (folders["Prime"] / "dataset_dict.json").stat().st_mtime_ns == mtime


def test_teachers_are_hub_folders_trained_on_the_source_part_and_reused(tmp_path, monkeypatch):
    # One quick epoch: this checks the machinery (files, labels, reuse), not the teachers' accuracy.
    specs = {d: {**s, "epochs": 1} for d, s in attribute_pool.TEACHER_SPECS.items()}
    monkeypatch.setattr(attribute_pool, "TEACHER_SPECS", specs)
    trained = []
    real_train = attribute_pool.train_classifier

    def counting_train(model, preprocess, images, labels, *args, **kwargs):
        trained.append((len(images), sorted(set(labels.tolist()))))
        return real_train(model, preprocess, images, labels, *args, **kwargs)

    monkeypatch.setattr(attribute_pool, "train_classifier", counting_train)
    pools = attribute_pool.build_attribute_pools(["Triple"], domains="U", root=tmp_path)
    folder = tmp_path / "triple-U"
    assert pools == {"Triple": tmp_path / "triple.txt"}
    assert parse_pool_file(pools["Triple"]) == [str(folder)]
    assert {"config.json", "model.safetensors", "README.md", "build_info.json"} <= {p.name for p in folder.iterdir()}
    from hf_mrl.data import load_source

    assert trained == [(len(load_source("U")["train"]), [0, 1])]  # the source part's train split, binary labels
    pool = ModelPool([str(folder)], ["not triple", "triple"])
    assert pool.coverage.all()  # the teacher's label names are the task's
    info = json.loads((folder / "build_info.json").read_text())
    assert info["attribute"] == "Triple" and info["digits"] == [0, 3, 6, 9] and 0.0 <= info["val_accuracy"] <= 1.0

    attribute_pool.build_attribute_pools(["triple"], domains="U", root=tmp_path)
    assert len(trained) == 1  # the second call reuses the folder

    matrix = attribute_pool.calibration_matrix(["Triple"], domains="U", root=tmp_path)
    row = matrix["Triple"]["teachers"]["teacher-U"]
    assert set(row) == {"U"} and 0.0 <= row["U"] <= 1.0
    assert matrix["Triple"]["majority"]["U"] == pytest.approx(0.6, abs=0.02)  # 4 of 10 digits are multiples of 3
    assert "| Triple | teacher-U | **" in attribute_pool.render_calibration(matrix)
    with pytest.raises(ValueError, match="Unknown Digits-LD domains"):
        attribute_pool.build_attribute_pools(["Triple"], domains="X", root=tmp_path)


def _driver():
    spec = importlib.util.spec_from_file_location("attributes_run", ROOT / "benchmarks" / "attributes" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_driver_arguments():
    run = _driver()
    args = run.parse_args(["--quick", "--attributes", "even,PRIME"])
    assert args.attributes == ["Even", "Prime"] and args.seeds == [0] and args.max_steps == 80
    assert args.results_dir == "results/digit_attributes_quick"
    quick = run.parse_args(["--quick"])  # the 5-minute path: two attributes, every method
    assert quick.attributes == ["Even", "Symmetric"] and quick.seeds == [0] and quick.methods == list(run.METHODS)
    full = run.parse_args([])
    assert (
        full.seeds == [0, 1, 2, 3, 4] and full.labeled_per_class == 50 and full.attributes == list(da.DIGIT_ATTRIBUTES)
    )
    with pytest.raises(SystemExit):
        run.parse_args(["--attributes", "round"])


def test_report_keeps_the_time_budget_section(tmp_path):
    run = _driver()
    readme = tmp_path / "README.md"
    assert run._kept_section(readme) == ""
    readme.write_text("# T\n\ntable\n\n## Time budget\n\nmeasured by hand\n\n## The paper's table\n\nrows\n")
    assert run._kept_section(readme) == "\n## Time budget\n\nmeasured by hand\n"
    readme.write_text("# T\n\n## Time budget\n\nlast section\n")
    assert run._kept_section(readme) == "\n## Time budget\n\nlast section\n"


@pytest.mark.slow
def test_driver_runs_one_attribute_end_to_end(tmp_path):
    """Builds (or reuses from the cache) the Even task and its three teachers: minutes on a cold cache."""
    run = _driver()
    argv = ["--quick", "--attributes", "even", "--methods", "supervised,mrl", "--max_steps", "2", "--workers", "1"]
    summary = run.main(argv + ["--results_dir", str(tmp_path)])
    assert summary["settings"] == ["Even"] and summary["methods"] == ["supervised", "mrl"]
    assert len(list((tmp_path / "Even" / "records").glob("*.json"))) == 2
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# Digit attributes") and "| MRL |" in text and "The paper's attribute table" in text
    assert "| Even | teacher-M | **" in text
