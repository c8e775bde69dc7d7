"""Nothing unsafe runs, no token leaks, and a crash loses nothing.

- Remote code: a teacher that ships its own modelling code writes a marker file when that code is imported; the
  marker shows exactly when it ran (only with trust_remote_code, never on a reloaded reuser by default).
- Pickle: pickle-only weights are refused unless allowed explicitly (`--allow_pickle`), for teachers and encoders.
- Tokens: a full recipe run with HF_TOKEN and --hub_token (and a push that fails) writes neither anywhere.
- Crashes: a save interrupted half-way never replaces the previous output or becomes the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_labeled_images, make_transformers_teacher
from safetensors.torch import load_file, save_file

import hf_mrl.cli.train as cli_train
import hf_mrl.training.trainer as trainer_module
from hf_mrl import AttentionReuser, Embedding, ModelPool, MRLConfig, StudentTrainer, TargetData, Teacher, utils
from hf_mrl.pool.model_pool import TeacherLoadError
from hf_mrl.training.trainer import latest_checkpoint
from hf_mrl.utils import atomic_dir

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "train_mrl.py"
LABELS = ["a", "b", "c"]
ENV_TOKEN = "hf_ENVtokenMUSTnotLEAK_0123456789abcdef"
ARG_TOKEN = "hf_ARGtokenMUSTnotLEAK_fedcba9876543210"


REMOTE_CONFIG = """
import os
import pathlib

from transformers import PretrainedConfig

if os.environ.get("HF_MRL_REMOTE_MARKER"):  # proof that this repository's code ran
    pathlib.Path(os.environ["HF_MRL_REMOTE_MARKER"]).write_text("remote code ran")


class RemoteConfig(PretrainedConfig):
    model_type = "hf-mrl-remote-test"
"""
REMOTE_MODEL = """
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_remote import RemoteConfig


class RemoteForImageClassification(PreTrainedModel):
    config_class = RemoteConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(3, config.num_labels)
        self.post_init()

    def forward(self, pixel_values, **kwargs):
        return ImageClassifierOutput(logits=self.proj(pixel_values.float().mean((2, 3))))
"""


def make_remote_code_teacher(folder: Path, labels=LABELS) -> Path:
    """A classifier whose architecture only exists in its own `*.py` files (`auto_map`), as on the Hub."""
    folder.mkdir(parents=True)
    (folder / "configuration_remote.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_remote.py").write_text(REMOTE_MODEL)
    config = {
        "model_type": "hf-mrl-remote-test",
        "architectures": ["RemoteForImageClassification"],
        "auto_map": {
            "AutoConfig": "configuration_remote.RemoteConfig",
            "AutoModelForImageClassification": "modeling_remote.RemoteForImageClassification",
        },
        "id2label": {str(i): n for i, n in enumerate(labels)},
        "label2id": {n: i for i, n in enumerate(labels)},
    }
    (folder / "config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(0)
    weights = {"proj.weight": torch.randn(len(labels), 3, generator=gen), "proj.bias": torch.zeros(len(labels))}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# ----------------------------------------------------------------------------------------------- remote code


def test_remote_code_runs_only_when_trusted_and_a_reloaded_reuser_does_not_inherit_the_trust(
    tmp_path, monkeypatch, caplog
):
    marker = tmp_path / "remote-code-ran"
    monkeypatch.setenv("HF_MRL_REMOTE_MARKER", str(marker))
    folder = make_remote_code_teacher(tmp_path / "remote")

    with pytest.raises(TeacherLoadError, match="ships its own modelling code.*--trust_remote_code") as err:
        Teacher.load(str(folder))
    assert err.value.reason == "remote_code"
    with pytest.raises(TeacherLoadError, match="trust_remote_code"):
        ModelPool([str(folder)], LABELS)

    # A reuser trained with trust_remote_code records it (config.json, card), but reloading it does not trust.
    reuser = AttentionReuser([str(folder)], LABELS, embed_dim=3, trust_remote_code=True)
    reuser.save_pretrained(tmp_path / "reuser")
    assert json.loads((tmp_path / "reuser" / "config.json").read_text())["trust_remote_code"] is True
    card = (tmp_path / "reuser" / "README.md").read_text()
    assert "`trust_remote_code=True`" in card and "from_pretrained(..., trust_remote_code=True)" in card
    with caplog.at_level(logging.WARNING, logger="hf_mrl.reuse.reuser"):
        loaded = AttentionReuser.from_pretrained(tmp_path / "reuser")
    assert loaded.trust_remote_code is True  # the record
    assert any("pass trust_remote_code=True" in r.getMessage() for r in caplog.records)
    with pytest.raises(TeacherLoadError, match="trust_remote_code"):
        loaded.predict(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert not marker.exists(), "remote code ran without trust_remote_code"

    # Trusted explicitly: the code runs and the teacher works.
    trusted = AttentionReuser.from_pretrained(tmp_path / "reuser", trust_remote_code=True)
    out = trusted.predict(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert out["weights"].shape == (2, 1)
    assert marker.exists()
    assert Teacher.load(str(folder), trust_remote_code=True).logits(
        torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    ).shape == (1, 3)


def test_cli_refuses_remote_code_without_the_flag(recipe, tiny, tmp_path, monkeypatch):
    marker = tmp_path / "remote-code-ran"
    monkeypatch.setenv("HF_MRL_REMOTE_MARKER", str(marker))
    folder = make_remote_code_teacher(tmp_path / "remote")
    pool = tmp_path / "pool.txt"
    pool.write_text(f"{folder}\n")
    argv = ["--pool", str(pool), "--dataset", str(tiny["data"]), "--output_dir", str(tmp_path / "out")]
    argv += ["--image_size", "16", "--cache_dir", str(tmp_path / "cache"), "--no_progress"]
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(argv)
    assert "ships its own modelling code" in exit_info.value.code and "--trust_remote_code" in exit_info.value.code
    assert not marker.exists()


def test_reuser_without_the_record_defaults_to_no_remote_code(tmp_path):
    """A config from before the field existed (no `trust_remote_code` key) loads, and trusts nothing."""
    AttentionReuser(["org/a@1"], LABELS, embed_dim=3).save_pretrained(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["trust_remote_code"] is False and config["allow_pickle"] is False
    for key in ("trust_remote_code", "allow_pickle"):
        del config[key]
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    loaded = AttentionReuser.from_pretrained(tmp_path / "r")
    assert loaded.trust_remote_code is False
    assert loaded._load_kwargs["trust_remote_code"] is False and loaded._load_kwargs["allow_pickle"] is False
    assert "`trust_remote_code` was off" in (tmp_path / "r" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------- pickle


def _pickle_only(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    torch.save(load_file(dst / "model.safetensors"), dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    return dst


def test_pickle_only_encoder_is_refused_unless_allowed(tmp_path):
    folder = _pickle_only(make_transformers_teacher(tmp_path / "enc", LABELS), tmp_path / "enc-pickle")
    with pytest.raises(TeacherLoadError, match="Encoder .* only has pickle weights.*--allow_pickle") as err:
        Embedding(f"encoder:{folder}").prepare()
    assert err.value.reason == "unsafe_weights"
    feats = Embedding(f"encoder:{folder}", allow_pickle=True)(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), None)
    assert feats.shape[0] == 2


def test_cli_allow_pickle_reaches_the_pool(recipe, tiny, tmp_path, monkeypatch):
    folder = _pickle_only(Path(tiny["pool"]).parent / "teacher-hf", tmp_path / "pickle")
    pool = tmp_path / "pool.txt"
    pool.write_text(f"{folder}\n")
    argv = ["--pool", str(pool), "--dataset", str(tiny["data"]), "--output_dir", str(tmp_path / "out")]
    argv += ["--image_size", "16", "--cache_dir", str(tmp_path / "cache"), "--no_progress"]
    with pytest.raises(SystemExit) as refused:
        recipe.main(argv)
    assert "only has pickle weights" in refused.value.code and "--allow_pickle" in refused.value.code

    def stop(*args, **kwargs):  # reached only once the pool (with the pickle teacher) loaded
        raise ValueError("the pool loaded")

    monkeypatch.setattr(cli_train, "load_target", stop)
    with pytest.raises(SystemExit) as accepted:
        recipe.main([*argv, "--allow_pickle"])
    assert accepted.value.code == "error: the pool loaded"


# ----------------------------------------------------------------------------------------------- tokens + a full run


def test_tokens_never_leak_and_a_failed_push_keeps_the_outputs(tiny, tmp_path):
    """One real run: a remote-code teacher with --trust_remote_code, HF_TOKEN and --hub_token, and a push the Hub
    refuses (the tests' default endpoint answers 403). Neither token appears in the output, a file, or a card."""
    marker = tmp_path / "remote-code-ran"
    remote = make_remote_code_teacher(tmp_path / "remote")
    pool = tmp_path / "pool.txt"
    pool.write_text(f"{Path(tiny['pool']).parent / 'teacher-hf'}\n{remote}\n")
    out = tmp_path / "run"
    cmd = [sys.executable, str(RECIPE), "--pool", str(pool), "--dataset", str(tiny["data"]), "--output_dir", str(out)]
    cmd += ["--max_steps", "2", "--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16"]
    cmd += ["--checkpointing_steps", "1", "--cache_dir", str(tmp_path / "cache"), "--no_progress"]
    cmd += ["--trust_remote_code", "--push_to_hub", "--hub_model_id", "org/safety", "--hub_token", ARG_TOKEN]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_TOKEN": ENV_TOKEN, "HF_MRL_REMOTE_MARKER": str(marker)}
    env["HF_MRL_CACHE"] = str(tmp_path / "hf_mrl")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    # The push failed, said so with the retry command, and the outputs are whole.
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "is intact" in proc.stderr and f"hf-mrl push {out} org/safety" in proc.stderr
    assert "Traceback" not in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["args"]["trust_remote_code"] is True and "hub_token" not in metrics["args"]
    assert marker.exists()  # trusted on the command line: the teacher's code ran

    # No token in what was printed, nor in any file the run wrote (checkpoints included).
    for token in (ENV_TOKEN, ARG_TOKEN):
        assert token not in proc.stdout + proc.stderr
        for path in out.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), path

    # The record: config.json and both cards say the teachers ran remote code; reloading does not trust it.
    config = json.loads((out / "reuser" / "config.json").read_text())
    assert config["trust_remote_code"] is True and config["allow_pickle"] is False
    assert "`trust_remote_code=True`" in (out / "reuser" / "README.md").read_text()
    assert "`trust_remote_code=True`" in (out / "student" / "README.md").read_text()
    loaded = AttentionReuser.from_pretrained(out / "reuser")
    assert loaded.teachers == metrics["pool"] and loaded._load_kwargs["trust_remote_code"] is False


# ----------------------------------------------------------------------------------------------- crash safety


def _reuser(seed: int) -> AttentionReuser:
    reuser = AttentionReuser(["org/a@1", "org/b@2"], LABELS, embed_dim=6)
    with torch.no_grad():
        reuser.prototypes.normal_(generator=torch.Generator().manual_seed(seed))
    return reuser


def _save(write, final: Path) -> None:
    with atomic_dir(final) as tmp:
        write(tmp)


def test_a_crash_mid_save_keeps_the_previous_output(tmp_path):
    final = tmp_path / "reuser"
    _save(lambda d: _reuser(1).save_pretrained(d), final)
    before = AttentionReuser.from_pretrained(final).prototypes.clone()

    def crash_half_way(d: Path):
        _reuser(2).save_pretrained(d)
        _truncate = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(_truncate[: len(_truncate) // 2])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _save(crash_half_way, final)
    assert torch.equal(AttentionReuser.from_pretrained(final).prototypes, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reuser"]  # the half-written one is gone

    # A crash between the two renames: no `reuser` at all for a moment, never a half-written one...
    real_replace, calls = os.replace, []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    utils.os.replace = replace_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            _save(lambda d: _reuser(3).save_pretrained(d), final)
    finally:
        utils.os.replace = real_replace
    assert not final.exists() and (tmp_path / ".reuser.old").is_dir()
    # ... and the next save puts the previous output back first, so even its own crash loses nothing.
    with pytest.raises(OSError, match="disk full"):
        _save(crash_half_way, final)
    assert torch.equal(AttentionReuser.from_pretrained(final).prototypes, before)
    _save(lambda d: _reuser(4).save_pretrained(d), final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reuser"]
    assert torch.equal(AttentionReuser.from_pretrained(final).prototypes, _reuser(4).prototypes)


TINY_STUDENT = {"architecture": "resnet10t", "model_args": {"channels": [8, 8, 16, 16], "stem_width": 8}}


def _tiny_trainer() -> StudentTrainer:
    y_l, y_u, y_t = torch.arange(9) % 3, torch.arange(12) % 3, torch.arange(6) % 3
    data = TargetData(
        label_names=list(LABELS),
        labeled_images=make_labeled_images(y_l, seed=0),
        labeled_labels=y_l,
        unlabeled_images=make_labeled_images(y_u, seed=1),
        test_images=make_labeled_images(y_t, seed=2),
        test_labels=y_t,
    )
    config = MRLConfig(method="supervised", max_steps=4, batch_size=6, unlabeled_batch_size=6, checkpoint_every=2)
    return StudentTrainer(config, data, student_spec=TINY_STUDENT)


def _state(trainer: StudentTrainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.student)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_crash_mid_checkpoint_is_never_the_latest_and_resuming_loses_nothing(tmp_path):
    reference = _tiny_trainer()
    reference.train(tmp_path / "ref", progress=False)
    expected = _state(reference)

    trainer = _tiny_trainer()
    real_save = trainer_module.write_checkpoint

    def save_then_crash(folder, *args, **kwargs):
        if "step_0000004" in str(folder):  # the second checkpoint dies half-written
            (Path(folder) / "state.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt("killed while checkpointing")
        return real_save(folder, *args, **kwargs)

    trainer_module.write_checkpoint = save_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train(tmp_path / "ckpt", progress=False)
    finally:
        trainer_module.write_checkpoint = real_save
    assert latest_checkpoint(tmp_path / "ckpt").name == "step_0000002"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_0000002"]  # the half-written one removed
    (tmp_path / "ckpt" / "step_0000004.tmp").mkdir()  # as a kill -9 mid-save leaves it: never picked

    resumed = _tiny_trainer()
    resumed.train(tmp_path / "ckpt", resume=True, progress=False)
    assert latest_checkpoint(tmp_path / "ckpt").name == "step_0000004"
    got = _state(resumed)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def _args(recipe, tiny, out: Path, *extra: str):
    argv = ["--pool", str(tiny["pool"]), "--dataset", str(tiny["data"]), "--output_dir", str(out), *extra]
    return recipe.parse_args(argv)


def test_resume_needs_the_arguments_of_the_checkpoints(recipe, tiny, tmp_path, caplog):
    out = tmp_path / "run"
    recipe.preflight(_args(recipe, tiny, out, "--seed", "3"))
    assert json.loads((out / "checkpoints" / "run.json").read_text())["seed"] == 3
    (out / "checkpoints" / "mrl" / "step_0000002").mkdir(parents=True)  # as if killed after a checkpoint

    with pytest.raises(ValueError, match=r"come from a run with --seed 3 \(now 4\)"):
        recipe.preflight(_args(recipe, tiny, out, "--seed", "4", "--resume_from_checkpoint"))
    recipe.preflight(_args(recipe, tiny, out, "--seed", "3", "--resume_from_checkpoint", "--max_steps", "9"))
    assert (out / "checkpoints" / "mrl" / "step_0000002").is_dir()

    # Starting over (no --resume_from_checkpoint) removes them: a later resume can never pick a stale one.
    with caplog.at_level(logging.WARNING, logger="hf_mrl.cli.main"):
        recipe.preflight(_args(recipe, tiny, out, "--seed", "4"))
    assert not (out / "checkpoints" / "mrl").exists()
    assert any("removing the checkpoints of an earlier run" in r.getMessage() for r in caplog.records)

    # Resuming with no checkpoint at all is a fresh start, with a warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_mrl.cli.main"):
        recipe.preflight(_args(recipe, tiny, tmp_path / "new", "--resume_from_checkpoint"))
    assert any("no checkpoint" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------- hostile inputs


def test_one_local_teacher_spelled_three_ways_is_one_duplicate(tmp_path, monkeypatch):
    folder = make_transformers_teacher(tmp_path / "x" / "t", LABELS)
    monkeypatch.chdir(tmp_path / "x")
    for spelling in ("t/.", "../x/t", str(folder)):
        with pytest.raises(ValueError, match="Duplicate teachers.*listed twice") as err:
            ModelPool(["t", spelling], LABELS)
        assert repr(spelling) in str(err.value)


def test_a_deeply_nested_label_map_fails_before_any_teacher_loads(tmp_path, monkeypatch):
    deep = tmp_path / "map.json"
    deep.write_text("[" * 10_000 + "]" * 10_000)
    loads = []
    monkeypatch.setattr(Teacher, "load", classmethod(lambda cls, *a, **k: loads.append(a)))
    with pytest.raises(ValueError, match="nests deeper than"):
        ModelPool(["org/a", "org/b"], LABELS, label_map=deep)
    assert not loads


def test_a_deeply_nested_reuser_config_is_a_clean_error(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"teachers": ' + "[" * 10_000 + "]" * 10_000 + "}")
    with pytest.raises(ValueError, match="nests deeper than"):
        AttentionReuser.from_pretrained(tmp_path / "r")


def test_a_pool_line_pointing_at_a_system_folder_lists_none_of_its_files(tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "passwords.txt").write_text("x")
    with pytest.raises(TeacherLoadError) as err:
        Teacher.load(str(tmp_path / "secret"))
    assert "passwords" not in str(err.value) and "no config.json" in str(err.value)


def test_a_processor_that_needs_remote_code_names_the_flag(tmp_path):
    folder = make_transformers_teacher(tmp_path / "t", LABELS)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["auto_map"] = {"AutoImageProcessor": "processing_remote.RemoteProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    (folder / "processing_remote.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(TeacherLoadError, match="--trust_remote_code") as err:
        Teacher.load(str(folder))
    assert err.value.reason == "remote_code" and "http" not in str(err.value)
