"""`recipes/train_mrl.py --method M`: every method trains through the recipe; only MRL writes a reuser.

The runs call the recipe's `main()` in this process on the tiny task (a subprocess would cost seconds of imports
each), with tripwires where a method must not go: a method without teachers never loads or runs the pool, and the
supervised method trains one student, without a guard against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import load_recipe
from PIL import Image

import hf_mrl.cli.train as cli_train
from hf_mrl.training.strategies import METHODS, STRATEGIES


class _Tripwire:
    def __init__(self, what: str):
        self.what = what

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.what} ran, and must not for this method")

    def __getattr__(self, name):  # ModelPool.from_file and the like
        return self


def _argv(tiny, out: Path, *extra: str) -> list[str]:
    argv = ["--pool", str(tiny["pool"]), "--dataset", str(tiny["data"]), "--output_dir", str(out)]
    argv += ["--max_steps", "3", "--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16"]
    return argv + ["--cache_dir", str(out.parent / "cache"), "--no_progress", *extra]


def _card(out: Path) -> tuple[dict, str]:
    text = (out / "student" / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def _evaluate_run():
    return load_recipe("evaluate_run")


def _intro(body: str) -> str:
    return body.split("## How to use")[0]


def test_every_method_is_a_recipe_choice_and_card_text_follows_the_strategies(recipe):
    from hf_mrl.hub.cards import METHOD_TEXT

    assert set(METHODS) == set(STRATEGIES) == set(METHOD_TEXT)
    for method in METHODS:
        assert recipe.parse_args(["--output_dir", "x", "--method", method]).method == method
        assert METHOD_TEXT[method].teachers == STRATEGIES[method].needs_teachers, method
        assert METHOD_TEXT[method].unlabeled == STRATEGIES[method].uses_unlabeled, method
    assert recipe.parse_args(["--output_dir", "x"]).method == "mrl"
    with pytest.raises(SystemExit):
        recipe.parse_args(["--output_dir", "x", "--method", "nope"])


def test_supervised_trains_one_student_and_never_touches_the_pool(recipe, tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sup"
    stale = out / "reuser"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # an earlier MRL run's reuser: it must not survive next to this run
    made = []

    import hf_mrl.training.reuse_trainer as run

    class CountingTrainer(run.StudentTrainer):
        def __init__(self, config, *args, **kwargs):
            made.append(config.method)
            super().__init__(config, *args, **kwargs)

    monkeypatch.setattr(run, "StudentTrainer", CountingTrainer)
    for module, name, what in [
        (cli_train, "ModelPool", "teacher loading"),
        (run, "ModelPool", "teacher loading"),
        (run, "Embedding", "the embedding"),
        (run, "compute_teacher_outputs", "a teacher pass"),
        (run, "cross_validate_reuse", "the guard"),
    ]:
        monkeypatch.setattr(module, name, _Tripwire(what))
    recipe.main(_argv(tiny, out, "--method", "supervised"))

    assert made == ["supervised"]  # one student: the supervised-only baseline is not trained twice
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (out / "student").iterdir()}
    assert not stale.exists() and not any("reuser" in p.name for p in out.iterdir())
    assert {p.name for p in (out / "checkpoints").iterdir() if p.is_dir()} == {"supervised"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "supervised" and metrics["delivered"] == "supervised"
    assert metrics["student_accuracy"] == metrics["supervised_accuracy"]
    assert metrics["reuser_accuracy"] is None and metrics["reuse_strength"] is None and metrics["guard"] is None
    assert metrics["pool"] == [] and metrics["teacher_forward_samples"] == {} and metrics["screening"] == []
    assert metrics["attention_by_domain"] is None
    assert all(set(v) == {"student", "supervised"} for v in metrics["per_domain"].values())

    meta, body = _card(out)
    assert body.lstrip().startswith("# supervised-student\n")
    assert "supervised-only" in _intro(body) and "distilled" not in body
    assert "reuser" not in body and "attention" not in body
    assert "base_model" not in meta and "knowledge-distillation" not in meta["tags"]
    assert "Not applicable: this is the supervised-only student itself." in body
    printed = capsys.readouterr().out
    assert "supervised-only student:" in printed and "(student/, metrics.json)" in printed

    # recipes/evaluate_run.py re-measures a run without reuser: the student only.
    assert _evaluate_run().main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no reuser: --method supervised trains none" in printed and "student_accuracy" in printed
    assert "reuser_accuracy" not in printed


def test_a_method_without_teachers_gets_the_guard_and_its_fallback(recipe, tiny, tmp_path, monkeypatch):
    """pl: no pool; the guard still compares it with supervised-only (forced to fall back here)."""
    import hf_mrl.training.reuse_trainer as run

    real_guard = run.cross_validate_reuse
    seen = {}

    def guard_that_falls_back(config, data, reuse, teacher_ids, folds, *args, **kwargs):
        seen.update(method=config.method, teachers=teacher_ids, reuse=reuse)
        report = real_guard(config, data, reuse, teacher_ids, folds, *args, **kwargs)
        report.decision = "fall_back"
        return report

    monkeypatch.setattr(run, "cross_validate_reuse", guard_that_falls_back)
    monkeypatch.setattr(cli_train, "ModelPool", _Tripwire("teacher loading"))
    out = tmp_path / "pl"
    argv = _argv(tiny, out, "--method", "pl")
    del argv[argv.index("--pool") : argv.index("--pool") + 2]  # not needed by a method without teachers
    recipe.main(argv)

    assert seen == {"method": "pl", "teachers": None, "reuse": None}  # no teacher outputs to cross-validate
    assert not (out / "reuser").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "pl" and metrics["delivered"] == "supervised"
    assert metrics["student_accuracy"] == metrics["supervised_accuracy"]
    assert 0.0 <= metrics["method_student_accuracy"] <= 1.0
    assert metrics["guard"]["decision"] == "fall_back"
    meta, body = _card(out)
    intro = _intro(body)
    assert "supervised-only" in intro and "by pseudo-labelling" in intro and "distilled" not in body
    assert "semi-supervised" not in meta["tags"]  # the delivered student learnt from the labels alone
    assert "| **this student** (supervised-only, delivered by the guard) |" in body


def test_mr_cr_reuses_the_teachers_without_a_reuser(recipe, tiny, tmp_path):
    out = tmp_path / "cr"
    recipe.main(_argv(tiny, out, "--method", "mr-cr"))

    assert not (out / "reuser").exists()
    assert (out / "student" / "model.safetensors").is_file()
    assert {p.name for p in (out / "checkpoints").iterdir() if p.is_dir()} == {"supervised", "mr-cr"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "mr-cr"
    expected = sum(tiny["sizes"].values())
    assert list(metrics["teacher_forward_samples"].values()) == [expected, expected]  # the pool ran, once per set
    assert len(metrics["teacher_accuracy"]) == 2 and len(metrics["screening"]) == 2
    assert metrics["reuser_accuracy"] is None and metrics["reuse_strength"] is None
    assert metrics["prototypes_in_sync"] is None and metrics["attention_by_domain"] is None
    assert metrics["guard"] is not None and metrics["delivered"] in ("method", "supervised")
    meta, body = _card(out)
    assert "reuser" not in body and "attention" not in body
    assert "| T1 | local folder `teacher-hf` |" in body
    if metrics["delivered"] == "method":
        assert "distilled with hf_mrl" in body and "(MR-CR)" in _intro(body)
        assert "knowledge-distillation" in meta["tags"]
        assert metrics["student_accuracy"] == metrics["method_student_accuracy"]
    else:
        assert "distilled" not in body and "MR-CR" in _intro(body)


def test_oracle_needs_the_training_datas_domain_labels(recipe, tiny, tmp_path, monkeypatch):
    import datasets

    dd = datasets.load_from_disk(str(tiny["data"]))
    dd = datasets.DatasetDict({**dd, "unlabeled": dd["unlabeled"].remove_columns("domain")})
    dd.save_to_disk(str(tmp_path / "no-domains"))
    monkeypatch.setattr(cli_train, "ModelPool", _Tripwire("teacher loading"))  # the check comes before the teachers
    argv = _argv(tiny, tmp_path / "out", "--method", "oracle")
    argv[argv.index("--dataset") + 1] = str(tmp_path / "no-domains")
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith(
        "error: Oracle routing reads the latent domain of the training data"
    ), message
    assert "['unlabeled']" in message and "\n" not in message


def test_resume_refuses_another_method_and_old_run_records_count_as_mrl(recipe, tiny, tmp_path):
    out = tmp_path / "r"
    (out / "checkpoints" / "mrl" / "step_0000002").mkdir(parents=True)
    args = recipe.parse_args(_argv(tiny, out, "--resume_from_checkpoint"))
    from hf_mrl.cli.main import run_identity
    from hf_mrl.pool.model_pool import parse_pool_file

    identity = run_identity(args, parse_pool_file(args.pool))
    del identity["method"]  # run.json of a run from before --method
    (out / "checkpoints" / "run.json").write_text(json.dumps(identity))
    recipe.preflight(args)  # the same run (mrl) resumes
    with pytest.raises(ValueError, match=r"--method 'mrl' \(now 'mr-cr'\)"):
        recipe.preflight(recipe.parse_args(_argv(tiny, out, "--resume_from_checkpoint", "--method", "mr-cr")))


def test_push_of_a_method_without_reuser_pushes_the_student_only(recipe, local_hub, tmp_path, capsys):
    from huggingface_hub import HfApi

    from hf_mrl.hub.cards import RunSummary, student_card
    from hf_mrl.training.student import create_student, save_student

    student = create_student(["a", "b", "c"], image_size=16)
    summary = RunSummary(teachers=[], label_names=["a", "b", "c"], dataset="tiny", method="vat", delivered="method")
    card = student_card({**student.pretrained_cfg, "architecture": "resnet10t"}, summary, repo_id="org/v-student")
    save_student(student, tmp_path / "run" / "student", card=str(card))
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"method": "vat"}))
    from hf_mrl.cli.main import push_main

    push_main([str(tmp_path / "run"), "org/v"])  # the same command retries the push of any method

    api = HfApi()
    assert {"README.md", "config.json", "model.safetensors"} <= set(api.list_repo_files("org/v-student"))
    assert [c.title for c in api.list_repo_commits("org/v-student")][0] == "Upload vat student (hf_mrl)"
    assert not api.repo_exists("org/v")  # no reuser, and nothing pretending to be one
    assert "pushed the student to org/v-student" in capsys.readouterr().out


def test_a_pretrained_student_from_a_local_timm_checkpoint_trains_and_loads_with_timm_and_pipeline(
    recipe, tiny, tmp_path
):
    """`--student DIR --student_pretrained`: the backbone starts from the checkpoint, the head is new for the
    target's labels, the supervised baseline uses the same start, and the saved student loads with timm and with
    `pipeline("image-classification")` under the target's label names."""
    import timm
    import torch
    from transformers import pipeline

    ckpt = tmp_path / "r18"
    torch.manual_seed(3)
    base = timm.create_model("resnet18", num_classes=5).eval()
    timm.models.save_for_hf(base, str(ckpt), model_config={"label_names": list("vwxyz")}, safe_serialization=True)
    out = tmp_path / "pre"
    argv = _argv(tiny, out, "--method", "pl", "--guard_folds", "0", "--student", str(ckpt), "--student_pretrained")
    argv += ["--student_image_size", "32"]
    recipe.main(argv)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["args"]["student_pretrained"] and metrics["delivered"] == "method"
    student = timm.create_model(f"local-dir:{out / 'student'}", pretrained=True).eval()
    assert student.pretrained_cfg["label_names"] == ["a", "b", "c"] and student.num_classes == 3
    assert student.pretrained_cfg["input_size"] == (3, 32, 32)
    pipe = pipeline("image-classification", model=str(out / "student"), device="cpu")
    assert {p["label"] for p in pipe(Image.new("RGB", (40, 24), "red"), top_k=3)} == {"a", "b", "c"}
    with pytest.raises(SystemExit):  # nothing to start from
        recipe.parse_args(["--output_dir", "x", "--student_pretrained"])
