"""Push to the loopback Hub and load back by repo id: the reuser, the student, the recipe's --push_to_hub."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import load_recipe, make_target_dataset, make_timm_teacher, make_transformers_teacher
from huggingface_hub import HfApi, ModelCard

from hf_mrl import AttentionReuser
from hf_mrl.cli.push import push_main as main
from hf_mrl.hub.cards import student_card
from hf_mrl.hub.push import PushError, push_run
from hf_mrl.testing import LocalHub, endpoint_patches
from hf_mrl.training.run_folder import write_manifest
from hf_mrl.training.student import create_student, save_student

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "train_mrl.py"
TOKEN = "hf_test_SECRET_do_not_leak_0123456789"
LABELS = ["a", "b", "c"]


@pytest.fixture
def token_hub(hf_isolation, tmp_path_factory, monkeypatch):
    """A LocalHub that only accepts writes with TOKEN, with every client pointed at it."""
    with LocalHub(tmp_path_factory.mktemp("token_hub"), token=TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        for obj, name, value in endpoint_patches(hub.url):
            monkeypatch.setattr(obj, name, value)
        yield hub


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _fake_run(out: Path) -> Path:
    """DIR/reuser and DIR/student as the recipe writes them (untrained, which is enough to push)."""
    AttentionReuser([f"org/t{k}@{k:040x}" for k in range(2)], LABELS, embed_dim=6).save_pretrained(out / "reuser")
    student = create_student(LABELS, image_size=16)
    card = student_card({**student.pretrained_cfg, "architecture": "resnet10t"}, None, repo_id="org/run-student")
    save_student(student, out / "student", card=str(card))
    (out / "metrics.json").write_text(json.dumps({"method": "mrl"}))
    write_manifest(out)  # a complete run, as save_pretrained seals it
    return out


def test_reuser_push_to_hub_on_its_own(local_hub, tmp_path):
    reuser = AttentionReuser([f"org/t{k}@{k:040x}" for k in range(3)], LABELS, embed_dim=9)
    with torch.no_grad():
        reuser.prototypes.normal_()
    url = reuser.push_to_hub("org/reuser-alone", commit_message="one commit")
    api = HfApi()
    commits = api.list_repo_commits("org/reuser-alone")
    assert [c.title for c in commits] == ["one commit", "initial commit"] and commits[0].commit_id in str(url)
    assert set(api.list_repo_files("org/reuser-alone")) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
    }
    card = ModelCard.load("org/reuser-alone")
    assert 'AttentionReuser.from_pretrained("org/reuser-alone")' in card.text
    assert card.data.library_name == "hf_mrl" and card.data.base_model == ["org/t0", "org/t1", "org/t2"]
    loaded = AttentionReuser.from_pretrained("org/reuser-alone")
    assert loaded.teachers == reuser.teachers and torch.equal(loaded.prototypes, reuser.prototypes)


def test_failed_push_keeps_the_output_and_says_how_to_retry(token_hub, tmp_path, capsys):
    out = _fake_run(tmp_path / "run")
    before = _tree_digest(out)
    with pytest.raises(PushError) as err:
        push_run(out, "org/run", token="hf_wrong_token")
    message = str(err.value)
    assert "pushing the reuser to org/run failed" in message and "is intact" in message
    assert f"hf-mrl push {out} org/run" in message
    assert "hf_wrong_token" not in message
    assert _tree_digest(out) == before

    # The retry command, with valid credentials, pushes both models (one commit each).
    main([str(out), "org/run", "--token", TOKEN])
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err
    api = HfApi(token=TOKEN)
    for repo in ("org/run", "org/run-student"):
        assert len(api.list_repo_commits(repo)) == 2  # the Hub's initial commit + ours
        assert {"config.json", "model.safetensors", "README.md"} <= set(api.list_repo_files(repo))
    assert _tree_digest(out) == before


def test_push_without_a_reachable_hub_fails_with_the_retry_hint(tmp_path):
    out = _fake_run(tmp_path / "run")  # no `local_hub`: the endpoint refuses every request
    before = _tree_digest(out)
    with pytest.raises(PushError, match="nothing was pushed") as err:
        push_run(out, "org/run")
    assert f"hf-mrl push {out} org/run" in str(err.value)
    assert _tree_digest(out) == before


def test_push_refuses_an_invalid_card(local_hub, tmp_path):
    out = _fake_run(tmp_path / "run")
    bad = "---\nbase_model: ./local/path\nlibrary_name: timm\npipeline_tag: image-classification\n---\n# x\n"
    (out / "student" / "README.md").write_text(bad)
    write_manifest(out)
    with pytest.raises(PushError, match="nothing was pushed.*base_model"):
        push_run(out, "org/bad-card")
    assert not HfApi().repo_exists("org/bad-card") and not HfApi().repo_exists("org/bad-card-student")


def test_recipe_hub_flags_are_checked_before_training(capsys):
    recipe = load_recipe("train_mrl")
    for argv, words in [
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--push_to_hub", "--hub_model_id", "no-namespace"], "needs a namespace"),
        (["--hub_model_id", "org/bad name"], "not a valid Hub repo id"),
    ]:
        with pytest.raises(SystemExit):
            recipe.parse_args(["--output_dir", "x", *argv])
        assert words in capsys.readouterr().err
    args = recipe.parse_args(["--output_dir", "x", "--push_to_hub", "--hub_model_id", "org/ok", "--hub_private"])
    assert args.push_to_hub and args.hub_model_id == "org/ok" and args.hub_private


# ----------------------------------------------------------------------------------------------- acceptance


@pytest.fixture
def hub_task(local_hub, tmp_path):
    """Two teachers on the loopback Hub (one pinned by tag in the pool file) and a tiny target dataset."""
    api = HfApi()
    for repo, folder in [
        ("org/teacher-tr", make_transformers_teacher(tmp_path / "tr", ["c", "a", "b"], seed=0)),
        ("org/teacher-tm", make_timm_teacher(tmp_path / "tm", ["a", "c"], seed=1)),
    ]:
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=folder)
    api.create_tag("org/teacher-tm", tag="v1")
    pool = tmp_path / "hub-ids.txt"
    pool.write_text("# teachers on the Hub\norg/teacher-tr\norg/teacher-tm@v1\n")
    data = make_target_dataset(tmp_path / "data", n_labeled_per_class=2, n_unlabeled=24, n_test=12, label_names=LABELS)
    return {"pool": pool, "data": data, "root": tmp_path}


def _run_recipe(task, out: Path, *extra: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(RECIPE), "--pool", str(task["pool"]), "--dataset", str(task["data"])]
    cmd += ["--output_dir", str(out), "--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16"]
    cmd += ["--cache_dir", str(task["root"] / "logits"), "--no_progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MRL_CACHE": str(task["root"] / "hf_mrl"), **(env_extra or {})}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _fresh_hf_home(path: Path) -> dict[str, str]:
    return {
        "HF_HOME": str(path),
        "HF_HUB_CACHE": str(path / "hub"),
        "HF_ASSETS_CACHE": str(path / "assets"),
        "HF_XET_CACHE": str(path / "xet"),
        "HF_TOKEN_PATH": str(path / "token"),
        "HF_MODULES_CACHE": str(path / "modules"),
        "TORCH_HOME": str(path / "torch"),
    }


LOAD_BOTH = """
import json, sys
import timm, torch
from safetensors.torch import load_file

data = load_file({images!r})
images, labels = data["images"], data["labels"]
# The student: timm alone.
student = timm.create_model("hf-hub:org/mrl-tiny-student", pretrained=True).eval()
cfg = student.pretrained_cfg
mean, std = torch.tensor(cfg["mean"]).view(1, -1, 1, 1), torch.tensor(cfg["std"]).view(1, -1, 1, 1)
with torch.no_grad():
    spred = student((images.float() / 255.0 - mean) / std).argmax(-1)
no_hf_mrl = "hf_mrl" not in sys.modules
# The reuser: hf_mrl rebuilds its pool at the recorded commits.
from hf_mrl import AttentionReuser
reuser = AttentionReuser.from_pretrained("org/mrl-tiny")
rpred = reuser.predict(images)["predictions"]
print(json.dumps({{
    "student": (spred == labels).float().mean().item(), "reuse": (rpred == labels).float().mean().item(),
    "no_hf_mrl": no_hf_mrl, "label_names": cfg.get("label_names"), "pool": reuser.pool.ids,
}}))
"""


def test_push_then_load_by_repo_id_in_a_new_process_and_offline_rerun(hub_task, local_hub, tmp_path):
    """Acceptance: train over Hub ids, push both models, reload both by id elsewhere, rerun offline."""
    import datasets
    from safetensors.torch import save_file

    from hf_mrl.data.target import target_from_datasets

    out = tmp_path / "run"
    push = ["--push_to_hub", "--hub_model_id", "org/mrl-tiny", "--hub_token", TOKEN]
    # No guard: at 4 steps it would (rightly) not prove non-inferiority, and this test is about the MRL student.
    proc = _run_recipe(hub_task, out, "--max_steps", "4", "--guard_folds", "0", *push)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert TOKEN not in proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert all("@" in t and len(t.split("@")[1]) == 40 for t in metrics["pool"])  # Hub teachers, pinned commits

    # One commit per repo, the files as written locally, and no token anywhere.
    api = HfApi()
    for repo, part in [("org/mrl-tiny", "reuser"), ("org/mrl-tiny-student", "student")]:
        commits = api.list_repo_commits(repo)
        assert [c.title for c in commits] == [f"Upload MRL {part} (hf_mrl)", "initial commit"]
        assert set(api.list_repo_files(repo)) == {".gitattributes", "README.md", "config.json", "model.safetensors"}
        for name in ("README.md", "config.json"):
            text = Path(api.hf_hub_download(repo, name)).read_text()
            assert text == (out / part / name).read_text() and TOKEN not in text
    assert TOKEN not in (out / "metrics.json").read_text()

    # The cards record the accuracies in model-index form.
    recorded = {}
    for repo, key in [("org/mrl-tiny", "reuser"), ("org/mrl-tiny-student", "student")]:
        card = ModelCard.load(repo)
        (accuracy,) = [r.metric_value for r in card.data.eval_results if r.metric_name == "Accuracy"]
        recorded[key] = accuracy
        assert accuracy == pytest.approx(metrics[f"{key}_accuracy"], abs=1e-6)
    assert ModelCard.load("org/mrl-tiny-student").data.base_model == ["org/teacher-tr", "org/teacher-tm"]

    # A new process with an empty cache loads both by repo id and reproduces the recorded test accuracy.
    data = target_from_datasets(datasets.load_from_disk(str(hub_task["data"])), image_size=16)
    save_file({"images": data.test_images[:], "labels": data.test_labels}, tmp_path / "test.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **_fresh_hf_home(tmp_path / "elsewhere")}
    script = textwrap.dedent(LOAD_BOTH.format(images=str(tmp_path / "test.safetensors")))
    load = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert load.returncode == 0, load.stderr[-4000:]
    got = json.loads(load.stdout.strip().splitlines()[-1])
    assert got["no_hf_mrl"] and got["label_names"] == LABELS and got["pool"] == metrics["pool"]
    assert got["student"] == pytest.approx(metrics["student_accuracy"], abs=1e-6) == recorded["student"]
    assert got["reuse"] == pytest.approx(metrics["reuser_accuracy"], abs=1e-6) == recorded["reuser"]

    # HF_HUB_OFFLINE=1 with the warm cache: the recipe runs over the same Hub ids without a single request.
    seen = len(local_hub.requests_log)
    offline = _run_recipe(hub_task, tmp_path / "offline", "--max_steps", "2", env_extra={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stdout[-3000:] + offline.stderr[-5000:]
    assert json.loads((tmp_path / "offline" / "metrics.json").read_text())["pool"] == metrics["pool"]
    assert local_hub.requests_log[seen:] == []


@pytest.mark.slow
def test_two_processes_push_once(hub_task, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE)]
    cmd += ["--pool", str(hub_task["pool"]), "--dataset", str(hub_task["data"]), "--output_dir", str(tmp_path / "o")]
    cmd += ["--max_steps", "2", "--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16"]
    cmd += ["--no_progress", "--push_to_hub", "--hub_model_id", "org/ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MRL_CACHE": str(tmp_path / "hf_mrl")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for repo in ("org/ddp", "org/ddp-student"):
        assert len(HfApi().list_repo_commits(repo)) == 2  # the main process pushed, once
