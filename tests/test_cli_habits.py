"""Hugging Face command-line habits: `hf-mrl --help` and `--version` exit 0, defaults in `--help`, a flag for each
MRLConfig field a user tunes, quiet HTTP logs, and a last line that says how to evaluate, load and push."""

from __future__ import annotations

import json
import logging

import pytest

from hf_mrl import __version__
from hf_mrl.cli.main import _setup_logging, config_from_args, main, parse_train_args, run_identity


def test_top_level_help_and_version_exit_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hf-mrl" in out and all(c in out for c in ("train", "evaluate", "push", "select"))
    for argv in (["--version"], ["train", "--version"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0 and f"hf-mrl {__version__}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["trian"])
    assert info.value.code == 2 and "unknown command 'trian'" in capsys.readouterr().err


def test_train_help_shows_defaults_and_the_tuned_hyperparameters(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for expected in (
        "--max_steps MAX_STEPS (default: 1000)",
        "--seed SEED seed of the labeled draw, the carving and the training (default: 0)",
        "--learning_rate LEARNING_RATE student (inner) AdamW learning rate. (default: 0.003)",
        "--kd_lambda KD_LAMBDA",
        "--hypergradient {fd,jvp,unrolled}",
        "--augment, --no-augment",
        "--dataset_config_name",
        "(default: 0.2)",  # --test_size
        "--guard_margin GUARD_MARGIN",
    ):
        assert expected in text, expected
    with pytest.raises(SystemExit) as info:
        main(["select", "--help"])
    assert info.value.code == 0 and "--test_size" in capsys.readouterr().out


def test_hyperparameter_flags_reach_the_config_and_the_run_identity(tmp_path, capsys):
    args = parse_train_args(["--output_dir", str(tmp_path), "--learning_rate", "0.01", "--no-augment"])
    config = config_from_args(args)
    assert config.learning_rate == 0.01 and config.augment is False and config.kd_lambda == 1.0
    identity = run_identity(args, None)
    assert identity["learning_rate"] == 0.01 and identity["augment"] is False and "kd_lambda" not in identity
    assert "learning_rate" not in run_identity(parse_train_args(["--output_dir", str(tmp_path)]), None)
    with pytest.raises(SystemExit) as info:  # refused before anything is loaded, in one line
        main(["train", "--output_dir", str(tmp_path / "out"), "--learning_rate", "-1"])
    assert info.value.code == "error: learning_rate must be > 0; got -1.0."
    assert not (tmp_path / "out").exists()


def test_http_request_logs_are_quiet():
    _setup_logging()
    for name in ("httpx", "httpcore", "urllib3", "huggingface_hub"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name


def test_a_run_ends_with_how_to_evaluate_load_and_push(recipe, monkeypatch, tiny, tmp_path, capsys):
    from test_data_sources import _cli

    metrics = _cli(recipe, monkeypatch, tiny, tmp_path, tiny["data"], "--learning_rate", "0.005")
    assert isinstance(metrics, dict), metrics
    assert metrics["config"]["learning_rate"] == 0.005
    last = capsys.readouterr().out.strip().splitlines()[-1]
    out = tmp_path / "out"
    assert last.startswith("next: ") and f"hf-mrl evaluate {out}" in last, last
    assert f"AttentionReuser.from_pretrained('{out / 'reuser'}')" in last and f"hf-mrl push {out} ORG/NAME" in last
    json.dumps(metrics)
