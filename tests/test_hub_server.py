"""Round trips through LocalHub with the real huggingface_hub, transformers and timm clients."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hf_mrl.testing import LocalHub

REPO = "org/tiny-resnet"
ID2LABEL = {0: "cat", 1: "dog", 2: "bird"}


def _save_tiny_classifier(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """Save a tiny transformers ResNet classifier and its image processor; return its state dict."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 8],
        depths=[1, 1],
        num_labels=3,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
    )
    model = ResNetForImageClassification(config)
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.fixture
def tiny_repo(local_hub: LocalHub, tmp_path: Path) -> dict[str, torch.Tensor]:
    """REPO on the local hub holding a tiny classifier (one commit on top of the initial one)."""
    api = HfApi(endpoint=local_hub.url)
    api.create_repo(REPO, exist_ok=True)
    weights = _save_tiny_classifier(tmp_path / "v1", seed=0)
    api.upload_folder(repo_id=REPO, folder_path=tmp_path / "v1", commit_message="v1")
    return weights


def test_repo_api_round_trip(local_hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi()  # default endpoint: proves the fixture patched huggingface_hub's import-time constants
    assert api.endpoint == local_hub.url == constants.ENDPOINT == os.environ["HF_ENDPOINT"]
    url = api.create_repo("org/files")
    assert url.repo_id == "org/files" and api.create_repo("org/files", exist_ok=True).repo_id == "org/files"
    with pytest.raises(HfHubHTTPError):
        api.create_repo("org/files")  # 409 without exist_ok

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    first = api.upload_folder(repo_id="org/files", folder_path=tmp_path, commit_message="add files")
    assert len(first.oid) == 40
    api.create_branch("org/files", branch="dev")  # dev keeps the first commit's files
    second = api.create_commit(
        "org/files",
        operations=[CommitOperationAdd("a.txt", b"bye"), CommitOperationDelete("sub/b.bin")],
        commit_message="change",
    )

    assert api.list_repo_files("org/files") == [".gitattributes", "a.txt"]
    assert api.list_repo_files("org/files", revision=first.oid) == [".gitattributes", "a.txt", "sub/b.bin"]
    tree = {f.path: f for f in api.list_repo_tree("org/files", revision="dev", recursive=True)}
    assert set(tree) == {".gitattributes", "a.txt", "sub", "sub/b.bin"} and tree["sub/b.bin"].size == 25600
    assert [f.path for f in api.list_repo_tree("org/files", revision="dev")] == [".gitattributes", "a.txt", "sub"]
    info = api.model_info("org/files", revision="dev", files_metadata=True)
    assert info.sha == first.oid and {s.rfilename: s.size for s in info.siblings}["a.txt"] == 5
    assert api.model_info("org/files").sha == second.oid == api.model_info("org/files", revision=second.oid[:7]).sha
    refs = api.list_repo_refs("org/files")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second.oid, "dev": first.oid}
    assert [c.title for c in api.list_repo_commits("org/files")] == ["change", "add files", "initial commit"]
    assert api.file_exists("org/files", "a.txt") and not api.file_exists("org/files", "sub/b.bin")

    assert Path(hf_hub_download("org/files", "a.txt")).read_text() == "bye"
    assert Path(hf_hub_download("org/files", "a.txt", revision="dev")).read_text() == "hello"
    snapshot = Path(snapshot_download("org/files", revision=first.oid))
    assert (snapshot / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 100
    assert HfApi(token="anything").whoami()["name"] == local_hub.username

    # Re-uploading unchanged files makes no commit (the preupload `oid` lets the client skip them).
    api.create_commit("org/files", operations=[CommitOperationAdd("a.txt", b"bye")], commit_message="noop")
    assert api.model_info("org/files").sha == second.oid


def test_dataset_repo_and_tags(local_hub: LocalHub) -> None:
    api = HfApi()
    api.create_repo("org/data", repo_type="dataset")
    rows = [CommitOperationAdd("data/train.csv", b"a,b\n1,2\n")]
    api.create_commit("org/data", operations=rows, commit_message="data", repo_type="dataset")
    api.create_tag("org/data", tag="v1", repo_type="dataset")
    path = hf_hub_download("org/data", "data/train.csv", repo_type="dataset", revision="v1")
    assert Path(path).read_bytes() == b"a,b\n1,2\n"
    api.delete_repo("org/data", repo_type="dataset")
    assert not api.repo_exists("org/data", repo_type="dataset")


def test_transformers_revisions(local_hub: LocalHub, tiny_repo: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    api = HfApi()
    v1 = api.model_info(REPO).sha
    weights_v2 = _save_tiny_classifier(tmp_path / "v2", seed=1)
    v2 = api.upload_folder(repo_id=REPO, folder_path=tmp_path / "v2", commit_message="v2").oid
    assert v1 != v2

    model = AutoModelForImageClassification.from_pretrained(REPO)
    _assert_same_weights(model, weights_v2)
    assert model.config.id2label == ID2LABEL
    old = AutoModelForImageClassification.from_pretrained(REPO, revision=v1)
    _assert_same_weights(old, tiny_repo)
    assert not torch.equal(old.classifier[1].weight, model.classifier[1].weight)

    processor = AutoImageProcessor.from_pretrained(REPO, revision=v1)
    assert processor.size["shortest_edge"] == 32
    logits = model(**processor(images=torch.rand(3, 40, 40), return_tensors="pt")).logits
    assert logits.shape == (1, 3)


def test_timm_push_and_load(local_hub: LocalHub) -> None:
    import timm
    from timm.models import push_to_hf_hub

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    push_to_hf_hub(model, "org/tiny-timm")
    loaded = timm.create_model("hf-hub:org/tiny-timm", pretrained=True)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert "README.md" in HfApi().list_repo_files("org/tiny-timm")


def test_errors(local_hub: LocalHub, tiny_repo: dict[str, torch.Tensor]) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json")

    local_hub.set_gated(REPO)
    assert api.model_info(REPO).gated == "auto"  # metadata stays visible, as on the Hub
    with pytest.raises(GatedRepoError):
        hf_hub_download(REPO, "config.json")
    with pytest.raises(GatedRepoError):
        hf_hub_download(REPO, "config.json", token="not-granted")  # 403 for a logged-in user without access
    from transformers import AutoConfig

    with pytest.raises(OSError, match="gated"):
        AutoConfig.from_pretrained(REPO)
    local_hub.set_gated(REPO, False)
    assert Path(hf_hub_download(REPO, "config.json")).exists()


def test_token_protected_writes(tmp_path: Path) -> None:
    with LocalHub(tmp_path, token="secret") as hub:
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=hub.url, token=False).create_repo("org/private")
        assert err.value.response.status_code == 401
        api = HfApi(endpoint=hub.url, token="secret")
        api.create_repo("org/private", private=True)
        assert api.whoami()["name"] == hub.username
        assert api.model_info("org/private").private
        with pytest.raises(RepositoryNotFoundError):  # private repos are invisible without the token
            HfApi(endpoint=hub.url, token=False).model_info("org/private")


def test_offline_uses_cache_without_requests(
    local_hub: LocalHub, tiny_repo: dict[str, torch.Tensor], request: pytest.FixtureRequest
) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    AutoModelForImageClassification.from_pretrained(REPO)
    AutoImageProcessor.from_pretrained(REPO)
    snapshot_download(REPO)
    seen = len(local_hub.requests_log)

    request.getfixturevalue("hf_offline")
    _assert_same_weights(AutoModelForImageClassification.from_pretrained(REPO), tiny_repo)
    assert AutoImageProcessor.from_pretrained(REPO).size["shortest_edge"] == 32
    assert Path(snapshot_download(REPO), "config.json").exists()
    assert local_hub.requests_log[seen:] == []
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("org/never-downloaded", "config.json")


def test_no_hub_by_default(no_hub: LocalHub) -> None:
    """Without `local_hub`, Hub calls go to a local endpoint that refuses them at once."""
    assert constants.ENDPOINT == os.environ["HF_ENDPOINT"] == no_hub.url
    start = time.monotonic()
    with pytest.raises(LocalEntryNotFoundError) as err:
        hf_hub_download("org/anything", "config.json")
    assert "No Hub in this test" in str(err.value.__cause__)
    with pytest.raises(HfHubHTTPError, match="No Hub in this test"):
        HfApi().model_info("org/anything")
    assert time.monotonic() - start < 2


@pytest.mark.slow
def test_subprocess_uses_hf_endpoint(local_hub: LocalHub, tiny_repo: dict[str, torch.Tensor]) -> None:
    code = (
        "from transformers import AutoModelForImageClassification as M;"
        f"m = M.from_pretrained({REPO!r}); print(m.config.id2label[2], float(m.classifier[1].weight.sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr
    label, weight_sum = out.stdout.split()
    assert label == "bird" and float(weight_sum) == pytest.approx(float(tiny_repo["classifier.1.weight"].sum()))
    assert ("GET", f"/{REPO}/resolve/{HfApi().model_info(REPO).sha}/model.safetensors") in local_hub.requests_log
