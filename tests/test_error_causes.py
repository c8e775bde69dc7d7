"""Errors that name the real cause: a typo in a local teacher path or --dataset folder is "no such folder" (not "not
in the Hub cache"), a pool file with a UTF-8 BOM is read, `hf-mrl evaluate DIR` works from another directory and
says in one line what is missing."""

from __future__ import annotations

import json
import shutil

import pytest

from hf_mrl.data.target import check_target
from hf_mrl.pool.model_pool import ModelPool, TeacherLoadError, parse_pool_file


def test_pool_file_with_a_utf8_bom(tiny, tmp_path):
    teacher = str(tiny["root"] / "teacher-hf")
    pool = tmp_path / "pool.txt"
    pool.write_bytes("\ufeff".encode() + f"{teacher}\n# a comment\n".encode())  # as Notepad saves "UTF-8 with BOM"
    assert parse_pool_file(pool) == [teacher]


def test_typo_in_a_local_teacher_path_is_no_such_folder(tiny, tmp_path, monkeypatch, hf_offline):
    (tmp_path / "teachers").mkdir()
    shutil.copytree(tiny["root"] / "teacher-hf", tmp_path / "teachers" / "teacher-hf")
    pool = tmp_path / "pool.txt"
    pool.write_text("teachers/teacher-fh\n")  # a typo, read from the pool file's folder
    with pytest.raises(ValueError) as info:
        parse_pool_file(pool)
    message = str(info.value)
    assert f"pool.txt:1: no such folder '{tmp_path / 'teachers' / 'teacher-fh'}'" in message, message
    assert "did you mean" in message and "teacher-hf" in message and "Hub" not in message
    monkeypatch.chdir(tmp_path)
    for name in ("teachers/teacher-fh", str(tmp_path / "teachers" / "teacher-fh"), "./teacher-fh"):
        with pytest.raises(TeacherLoadError) as info:
            ModelPool([name], ["a", "b", "c"])
        assert "no such folder" in str(info.value) and "Hub cache" not in str(info.value), str(info.value)


def test_typo_in_a_dataset_folder_is_no_such_folder(tiny, tmp_path, monkeypatch, hf_offline):
    (tmp_path / "data").mkdir()
    shutil.copytree(tiny["data"], tmp_path / "data" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert check_target("data/tiny") == ["a", "b", "c"]
    for spec in ("data/tiyn", str(tmp_path / "data" / "tiyn"), "./tiny"):
        with pytest.raises(ValueError) as info:
            check_target(spec)
        message = str(info.value)
        assert f"Dataset {spec!r}: no such folder" in message and "cache" not in message, message
    with pytest.raises(ValueError, match="did you mean .*tiny"):
        check_target("data/tiyn")
    monkeypatch.chdir(tmp_path / "data")  # a bare name is a valid Hub id: offline, the close folder is named too
    with pytest.raises(ValueError, match=r"no such folder 'tiyn' here; did you mean 'tiny'\?"):
        check_target("tiyn")


def test_evaluate_from_another_directory_and_its_one_line_errors(recipe, monkeypatch, tiny, tmp_path, capsys):
    from test_data_sources import _cli

    from hf_mrl.cli.main import evaluate_main

    shutil.copytree(tiny["data"], tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    metrics = _cli(recipe, monkeypatch, tiny, tmp_path, "tiny")  # a relative --dataset
    assert isinstance(metrics, dict), metrics
    assert metrics["args"]["dataset"] == str(tmp_path / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert evaluate_main([str(tmp_path / "out")]) == 0
    assert "same" in capsys.readouterr().out
    _as_version_1(tmp_path / "out")  # a run folder written before metrics_version is still evaluated
    assert evaluate_main([str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "delivered method" in out or "delivered supervised" in out, out
    assert "reuser_accuracy   reloaded" in out and "DIFFERENT" not in out, out

    shutil.move(tmp_path / "tiny", tmp_path / "moved")
    with pytest.raises(SystemExit) as info:
        evaluate_main([str(tmp_path / "out")])
    message = str(info.value.code)
    assert (
        message.startswith(f"error: the test data of {tmp_path / 'out'} cannot be read")
        and "no such folder" in message
    )
    assert "\n" not in message and "--dataset" in message, message
    assert evaluate_main([str(tmp_path / "out"), "--dataset", str(tmp_path / "moved")]) == 0

    with pytest.raises(SystemExit) as info:
        evaluate_main([str(tmp_path / "no-such-run")])
    message = str(info.value.code)
    assert message.startswith("error: ") and "is not a folder" in message and "\n" not in message


def _as_version_1(run):
    """Rewrite a run's metrics.json in the names hf_mrl used before metrics_version (and re-seal its manifest)."""
    from hf_mrl.training.run_folder import write_manifest

    m = json.loads((run / "metrics.json").read_text())
    assert m.pop("metrics_version") == 2
    m["reuse_accuracy"] = m.pop("reuser_accuracy")
    m["reuse_student_accuracy"] = m["method_student_accuracy"]
    m["delivered"] = "reuse" if m["delivered"] == "method" else m["delivered"]
    (run / "metrics.json").write_text(json.dumps(m))
    write_manifest(run)
