"""The loopback Hub answers model search (`HfApi.list_models`) and model info as the Hub does."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import save_file

from hf_mrl.testing import hub_server


def _card(library: str | None, pipeline: str | None, tags=(), license: str | None = "mit") -> str:
    lines = ["---"]
    if library:
        lines.append(f"library_name: {library}")
    if pipeline:
        lines.append(f"pipeline_tag: {pipeline}")
    if license:
        lines.append(f"license: {license}")
    if tags:
        lines += ["tags:", *(f"- {t}" for t in tags)]
    return "\n".join([*lines, "---", "", "# a model", ""])


def _make(api: HfApi, tmp_path, repo_id: str, *, card: str | None, config: dict | None, weights: int | None = 6):
    folder = tmp_path / repo_id.replace("/", "--")
    folder.mkdir()
    if card is not None:
        (folder / "README.md").write_text(card)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        save_file(
            {"w": torch.zeros(weights, 2), "b": torch.zeros(weights, dtype=torch.float16)}, folder / "m.safetensors"
        )
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)


@pytest.fixture
def populated(local_hub, tmp_path):
    api = HfApi()
    vit = {"architectures": ["ViTForImageClassification"], "model_type": "vit", "id2label": {"0": "a"}}
    _make(api, tmp_path, "org/digits-vit", card=_card(None, None, ["digits"]), config=vit)
    _make(
        api,
        tmp_path,
        "org/digits-timm",
        card=_card("timm", "image-classification", ["digits"]),
        config={"architecture": "resnet", "pretrained_cfg": {}},
    )
    remote = {**vit, "auto_map": {"AutoModelForImageClassification": "modeling.Net"}}
    _make(api, tmp_path, "org/Digits-Remote", card=None, config=remote, weights=None)
    _make(api, tmp_path, "other/bert-text", card=_card("transformers", "text-classification"), config={})
    local_hub.set_gated("org/digits-timm")
    for repo_id, downloads in [("org/digits-vit", 50), ("org/digits-timm", 900), ("org/Digits-Remote", 7)]:
        local_hub.set_model_stats(repo_id, downloads=downloads, likes=downloads // 10)
    return api


def test_list_models_filters_sorts_and_limits(populated):
    api = populated
    ids = [m.id for m in api.list_models(pipeline_tag="image-classification", sort="downloads")]
    assert ids == ["org/digits-timm", "org/digits-vit", "org/Digits-Remote"]  # inferred from the architecture too
    assert [m.id for m in api.list_models(search="DIGITS", sort="downloads", limit=2)] == ids[:2]
    assert [m.id for m in api.list_models(filter="timm")] == ["org/digits-timm"]
    assert [m.id for m in api.list_models(filter=["transformers", "custom_code"])] == ["org/Digits-Remote"]
    assert [m.id for m in api.list_models(gated=True)] == ["org/digits-timm"]
    assert {m.id for m in api.list_models(author="other")} == {"other/bert-text"}
    first = next(iter(api.list_models(search="digits-vit")))
    assert first.downloads == 50 and first.likes == 5 and first.library_name == "transformers"
    assert {"digits", "vit", "safetensors", "license:mit", "image-classification"} <= set(first.tags)
    assert first.card_data is None and first.sha is None  # not asked for: the Hub leaves them out
    full = next(iter(api.list_models(search="digits-vit", full=True, cardData=True, fetch_config=True)))
    assert full.sha and full.card_data.license == "mit" and full.config["model_type"] == "vit"
    assert [s.rfilename for s in full.siblings] == [".gitattributes", "README.md", "config.json", "m.safetensors"]
    expanded = next(iter(api.list_models(search="digits-vit", expand=["downloads"])))
    assert expanded.downloads == 50 and expanded.tags is None


def test_list_models_follows_link_pages(populated, monkeypatch):
    monkeypatch.setattr(hub_server, "_PAGE", 1)
    ids = [m.id for m in populated.list_models(sort="downloads")]
    assert ids == ["org/digits-timm", "org/digits-vit", "org/Digits-Remote", "other/bert-text"]


def test_model_info_reports_card_config_and_parameters(populated):
    api = populated
    sha = api.list_repo_commits("org/Digits-Remote")[0].commit_id
    info = api.model_info("org/Digits-Remote", revision=sha, files_metadata=True)
    assert info.sha == sha and info.pipeline_tag == "image-classification" and info.downloads == 7
    assert info.config["auto_map"] == {"AutoModelForImageClassification": "modeling.Net"}
    assert "custom_code" in info.tags and info.safetensors is None and info.card_data is None
    timm_info = api.model_info("org/digits-timm", files_metadata=True)
    assert timm_info.gated == "auto" and timm_info.library_name == "timm"
    assert timm_info.safetensors.parameters == {"F32": 12, "F16": 6} and timm_info.safetensors.total == 18
    sizes = {s.rfilename: s.size for s in timm_info.siblings}
    assert sizes["m.safetensors"] > 18 * 2 and all(s.blob_id for s in timm_info.siblings)
    with pytest.raises(Exception, match="sort"):
        list(api.list_models(sort="nonsense"))
