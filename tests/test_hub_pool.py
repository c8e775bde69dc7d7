"""Pools from Hub ids through the loopback Hub: revisions, recorded commits, the offline cache, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_images, make_timm_teacher, make_transformers_teacher
from huggingface_hub import HfApi
from safetensors.torch import load_file

from hf_mrl import AttentionReuser, ModelPool, Teacher
from hf_mrl.pool.model_pool import TeacherLoadError
from hf_mrl.testing import LocalHub

TARGET = ["a", "b", "c"]


def _push(folder: Path, repo_id: str, message: str = "upload") -> str:
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message).oid


@pytest.fixture
def hub_teachers(local_hub: LocalHub, tmp_path: Path) -> dict:
    """org/tr (transformers) and org/tm (timm, two commits: v1 tagged, then v2 on main) on the loopback Hub."""
    tr = make_transformers_teacher(tmp_path / "tr", ["c", "a", "b"], seed=0)
    tm1 = make_timm_teacher(tmp_path / "tm1", ["a", "c"], seed=1)
    tm2 = make_timm_teacher(tmp_path / "tm2", ["a", "c"], seed=2)
    commits = {"tr": _push(tr, "org/tr"), "tm_v1": _push(tm1, "org/tm", "v1")}
    HfApi().create_tag("org/tm", tag="v1", revision=commits["tm_v1"])
    commits["tm_v2"] = _push(tm2, "org/tm", "v2")
    return {"commits": commits, "dirs": {"tr": tr, "tm_v1": tm1, "tm_v2": tm2}}


def test_pool_from_hub_ids_records_the_resolved_commits(hub_teachers):
    commits, dirs = hub_teachers["commits"], hub_teachers["dirs"]
    pool = ModelPool(["org/tr", "org/tm"], TARGET)
    assert [t.library for t in pool.teachers] == ["transformers", "timm"]
    assert pool.ids == [f"org/tr@{commits['tr']}", f"org/tm@{commits['tm_v2']}"]
    # The Hub copies compute exactly what the local folders compute.
    images = make_images(5, seed=1)
    local = ModelPool([str(dirs["tr"]), str(dirs["tm_v2"])], TARGET)
    torch.testing.assert_close(pool.probs(images), local.probs(images), rtol=0, atol=0)


@pytest.mark.parametrize("revision", ["v1", "tm_v1_sha", "tm_v1_short"])
def test_a_revision_pins_the_teacher(hub_teachers, revision):
    commits, dirs = hub_teachers["commits"], hub_teachers["dirs"]
    rev = {"v1": "v1", "tm_v1_sha": commits["tm_v1"], "tm_v1_short": commits["tm_v1"][:7]}[revision]
    teacher = Teacher.load(f"org/tm@{rev}")
    assert teacher.id == f"org/tm@{commits['tm_v1']}"  # always the full commit, whatever named it
    expected = load_file(dirs["tm_v1"] / "model.safetensors")
    state = teacher.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert not torch.equal(Teacher.load("org/tm").model.fc.weight, teacher.model.fc.weight)  # main moved on


def test_a_reuser_rebuilds_its_pool_at_the_recorded_commits(hub_teachers, tmp_path):
    """Trained while org/tm@main was v1; main has moved to v2 since: the reuser must still use v1."""
    commits = hub_teachers["commits"]
    ids = [f"org/tr@{commits['tr']}", f"org/tm@{commits['tm_v1']}"]
    reuser = AttentionReuser(ids, TARGET, embed_dim=6)
    reuser.save_pretrained(tmp_path / "r")
    loaded = AttentionReuser.from_pretrained(tmp_path / "r")
    assert loaded.pool.ids == ids
    images = make_images(4, seed=2)
    expected = ModelPool(["org/tr", "org/tm@v1"], TARGET).probs(images)
    torch.testing.assert_close(loaded.pool.probs(images), expected, rtol=0, atol=0)


def test_offline_after_one_online_run(hub_teachers, local_hub, request):
    commits = hub_teachers["commits"]
    entries = ["org/tr", "org/tm@v1", f"org/tm@{commits['tm_v2']}"]
    online = ModelPool(entries, TARGET)
    images = make_images(3, seed=4)
    expected = online.probs(images)
    seen = len(local_hub.requests_log)

    request.getfixturevalue("hf_offline")
    offline = ModelPool(entries, TARGET)
    assert offline.ids == online.ids
    torch.testing.assert_close(offline.probs(images), expected, rtol=0, atol=0)
    assert local_hub.requests_log[seen:] == []  # nothing asked of the Hub
    with pytest.raises(TeacherLoadError, match="HF_HUB_OFFLINE=1") as err:
        Teacher.load("org/tm@v2-never-fetched")
    assert err.value.reason == "offline" and "org/tm@v2-never-fetched" in str(err.value)


# ----------------------------------------------------------------------------------------------- clear errors


def _make_repo(kind: str, folder: Path) -> None:
    """Hub repos that are not usable teachers, each for one reason."""
    folder.mkdir(parents=True)
    if kind == "backbone":
        from transformers import ResNetConfig, ResNetModel

        cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], layer_type="basic")
        ResNetModel(cfg).save_pretrained(folder)
    elif kind == "timm-backbone":
        make_timm_teacher(folder, ["a", "b"])
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "num_classes": 0}))
    elif kind == "adapter":
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        (folder / "adapter_model.safetensors").write_bytes(b"x")
    elif kind == "unknown-config":
        (folder / "config.json").write_text(json.dumps({"hidden": 3}))
    elif kind == "no-config":
        (folder / "weights.safetensors").write_bytes(b"x")
    elif kind == "pickle-only":
        make_transformers_teacher(folder, ["a", "b"])
        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()


@pytest.mark.parametrize(
    ("kind", "reason", "words"),
    [
        ("backbone", "no_classification_head", "not an image classifier"),
        ("timm-backbone", "no_classification_head", "without a classification head"),
        ("adapter", "unknown_format", "PEFT adapter"),
        ("unknown-config", "unknown_format", "unknown format"),
        ("no-config", "unknown_format", "no config.json"),
        ("pickle-only", "unsafe_weights", "pickle"),
    ],
)
def test_unusable_hub_repos_say_which_id_and_why(local_hub, tmp_path, kind, reason, words):
    _make_repo(kind, tmp_path / kind)
    _push(tmp_path / kind, f"org/{kind}")
    with pytest.raises(TeacherLoadError, match=words) as err:
        ModelPool([f"org/{kind}"], TARGET)
    assert err.value.reason == reason and f"'org/{kind}'" in str(err.value)


def test_missing_gated_and_bad_revision_are_told_apart(hub_teachers, local_hub):
    cases = {
        "org/missing": ("not_found", "was not found"),
        "org/tm@no-such-branch": ("revision_not_found", "no revision 'no-such-branch'"),
        "./no/such/folder": ("not_found", "no such folder"),
    }
    for source, (reason, words) in cases.items():
        with pytest.raises(TeacherLoadError, match=words) as err:
            Teacher.load(source)
        assert err.value.reason == reason and source in str(err.value)
    local_hub.set_gated("org/tr")
    with pytest.raises(TeacherLoadError, match="gated") as err:
        ModelPool(["org/tm", "org/tr"], TARGET)  # the pool names the failing teacher, not the first one
    assert err.value.reason == "gated" and err.value.teacher == "org/tr"
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working


def test_a_reuser_refuses_a_teacher_whose_weights_changed(hub_teachers, tmp_path, caplog):
    """Its config.json edited to point at another commit of a teacher: the recorded weights hash catches it."""
    commits = hub_teachers["commits"]
    ids = [f"org/tr@{commits['tr']}", f"org/tm@{commits['tm_v1']}"]
    reuser = AttentionReuser(ids, TARGET, embed_dim=6)
    reuser.attach_pool(ModelPool(ids, TARGET))  # as training does: the hashes are recorded
    reuser.save_pretrained(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert set(config["teacher_hashes"]) == set(ids)
    assert AttentionReuser.from_pretrained(tmp_path / "r").pool.ids == ids  # unchanged: loads
    # every mention of the v1 commit (the teacher id and its hash's key) now names v2
    text = (tmp_path / "r" / "config.json").read_text().replace(commits["tm_v1"], commits["tm_v2"])
    (tmp_path / "r" / "config.json").write_text(text)
    swapped = AttentionReuser.from_pretrained(tmp_path / "r")
    with pytest.raises(ValueError, match="differ from those this reuser was trained with") as err:
        _ = swapped.pool
    assert f"org/tm@{commits['tm_v2']}" in str(err.value) and "allow_changed_teachers" in str(err.value)
    allowed = AttentionReuser.from_pretrained(tmp_path / "r", allow_changed_teachers=True)
    with caplog.at_level("WARNING", logger="hf_mrl.reuse.reuser"):
        assert len(allowed.pool.teachers) == 2
    assert "differ" in caplog.text


def test_a_reuser_refuses_an_overwritten_local_teacher(tmp_path):
    folder = make_timm_teacher(tmp_path / "t", TARGET, seed=1)
    reuser = AttentionReuser([str(folder)], TARGET, embed_dim=3)
    reuser.attach_pool(ModelPool([str(folder)], TARGET))
    reuser.save_pretrained(tmp_path / "r")
    make_timm_teacher(tmp_path / "t", TARGET, seed=2)  # same folder, other weights
    with pytest.raises(ValueError, match="differ from those"):
        _ = AttentionReuser.from_pretrained(tmp_path / "r").pool
