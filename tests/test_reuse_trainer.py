"""`ReuseTrainer`: the whole run as a library object (what the recipe, the CLI and the benchmarks call)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from hf_mrl import ModelPool, MRLConfig, ReuseArguments, ReuseTrainer
from hf_mrl.data.target import load_target
from hf_mrl.guard import cross_validate_reuse
from hf_mrl.record import Delivered

TINY = dict(max_steps=4, batch_size=4, unlabeled_batch_size=8)


@pytest.fixture(scope="module")
def task(tiny):
    data, description = load_target(str(tiny["data"]), None, 0, image_size=16)
    pool = ModelPool.from_file(tiny["pool"], data.label_names)
    return pool, data, description


def _args(**kw) -> ReuseArguments:
    return ReuseArguments(**{"guard_folds": 2, "guard_workers": 1, "progress": False, **kw})


def test_a_run_trains_both_students_guards_and_saves_the_atomic_layout(task, tmp_path):
    pool, data, description = task
    result = ReuseTrainer(pool, data, MRLConfig(**TINY), _args(dataset_description=description)).train()
    assert result.method == "mrl" and result.reuser is not None
    assert result.supervised_student is not None and result.method_student is not result.supervised_student
    assert result.delivered in (Delivered.METHOD, Delivered.SUPERVISED)
    assert result.student is (
        result.method_student if result.delivered is Delivered.METHOD else result.supervised_student
    )
    assert result.guard is not None and result.guard.folds == 2 and result.guard.held_out == len(data.labeled_labels)
    m = result.metrics
    assert m["student_accuracy"] == pytest.approx(
        float(
            (
                result.predictions["method" if result.delivered is Delivered.METHOD else "supervised"]
                == data.test_labels
            )
            .float()
            .mean()
        )
    )
    assert m["supervised_accuracy"] == pytest.approx(
        float((result.predictions["supervised"] == data.test_labels).float().mean())
    )
    assert m["pool"] == pool.ids and len(m["screening"]) == len(pool)

    out = tmp_path / "run"
    (out / "reuser").mkdir(parents=True)  # an earlier run's leftovers are replaced whole
    (out / "reuser" / "stale.txt").write_text("old")
    result.save_pretrained(out)
    assert {p.name for p in out.iterdir()} == {"reuser", "student", "metrics.json", "manifest.json"}
    assert not (out / "reuser" / "stale.txt").exists()
    for part in ("reuser", "student"):
        assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (out / part).iterdir()}
    assert json.loads((out / "metrics.json").read_text())["student_accuracy"] == m["student_accuracy"]


def test_a_method_without_teachers_never_runs_the_pool_and_saves_no_reuser(task, tmp_path):
    pool, data, _ = task
    seen_before = [t.samples_seen for t in pool.teachers]
    result = ReuseTrainer(pool, data, MRLConfig(method="pl", **TINY), _args(guard_folds=0)).train()
    assert [t.samples_seen for t in pool.teachers] == seen_before
    assert result.reuser is None and result.metrics["pool"] == [] and result.guard is None
    out = tmp_path / "pl"
    (out / "reuser").mkdir(parents=True)
    result.save_pretrained(out)
    assert not (out / "reuser").exists()


def test_push_to_hub_sends_what_the_run_has(task, local_hub, tmp_path):
    from huggingface_hub import HfApi

    pool, data, _ = task
    mrl = ReuseTrainer(pool, data, MRLConfig(**TINY), _args(guard_folds=0)).train()
    pushed = mrl.push_to_hub("org/tiny")  # from a temporary save
    api = HfApi()
    assert pushed.reuser_repo_id == "org/tiny" and api.repo_exists("org/tiny") and api.repo_exists("org/tiny-student")
    with open(api.hf_hub_download("org/tiny", "README.md")) as f:
        assert "org/tiny-student" in f.read()  # the reuser's card points at its student
    sup = ReuseTrainer(None, data, MRLConfig(method="supervised", **TINY), _args()).train()
    pushed = sup.push_to_hub("org/sup", output_dir=tmp_path / "sup")  # saved there first
    assert pushed.reuser_repo_id is None and not api.repo_exists("org/sup") and api.repo_exists("org/sup-student")
    assert (tmp_path / "sup" / "metrics.json").is_file()


def test_guard_folds_in_parallel_workers_decide_as_one_worker(task, caplog):
    """Two processes train the fold models; each runs one torch thread as here, so the held-out correctness,
    and the report, are exactly those of the serial guard."""
    pool, data, _ = task
    runner = ReuseTrainer(pool, data, MRLConfig(**TINY), _args())
    reuse = runner.compute_teacher_outputs()
    with caplog.at_level(logging.INFO, logger="hf_mrl.guard"):
        serial = cross_validate_reuse(runner.config, data, reuse, pool.ids, folds=2, workers=1, repeats=1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Guard: ")]
    assert len(lines) == 4 and lines[-1].endswith("(4/4 trainings done)")  # one line per fold training
    parallel = cross_validate_reuse(runner.config, data, reuse, pool.ids, folds=2, workers=2, repeats=1)
    assert parallel.to_dict() == serial.to_dict()


def test_the_sequential_guard_decides_the_same_on_two_workers(task):
    """Looks are taken on completed prefixes of the look order, so which worker finishes first does not matter."""
    pool, data, _ = task
    runner = ReuseTrainer(pool, data, MRLConfig(**TINY), _args())
    reuse = runner.compute_teacher_outputs()
    kw = dict(folds=2, repeats=2, sequential=True)
    serial = cross_validate_reuse(runner.config, data, reuse, pool.ids, workers=1, **kw)
    parallel = cross_validate_reuse(runner.config, data, reuse, pool.ids, workers=2, **kw)
    assert parallel.to_dict() == serial.to_dict() and serial.rule == "sequential"
    assert serial.trainings <= serial.trainings_full == 8


def test_arguments_and_inputs_are_checked():
    with pytest.raises(ValueError, match="guard_folds must be 0"):
        ReuseArguments(guard_folds=1)
    with pytest.raises(ValueError, match="guard_workers must be >= 1"):
        ReuseArguments(guard_workers=0)
    with pytest.raises(TypeError, match="data must be a TargetData"):
        ReuseTrainer(None, {"images": torch.zeros(1)}, MRLConfig(method="supervised"))


def test_a_digits_ld_run_description_renders_into_the_cards(task, tmp_path):
    """`load_target` describes the data with a `str` subclass; the cards' YAML must get a plain string (a run of
    `make run` once failed at its very end, saving the cards)."""
    from hf_mrl.data.target import DatasetDescription

    pool, data, _ = task
    args = _args(guard_folds=0, dataset="digits-ld:MUS", dataset_description=DatasetDescription("Digits-LD MUS"))
    result = ReuseTrainer(pool, data, MRLConfig(**TINY), args).train()
    result.save_pretrained(tmp_path / "run")
    for part in ("reuser", "student"):
        assert "name: Digits-LD MUS" in (tmp_path / "run" / part / "README.md").read_text()
