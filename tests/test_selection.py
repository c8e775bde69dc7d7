"""Teacher selection from a Hub search: every rejection reason, the greedy choice, pinned pool files, offline reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_images, make_timm_teacher, make_transformers_teacher
from huggingface_hub import HfApi

from hf_mrl.cli.select import main
from hf_mrl.pool.model_pool import Teacher, parse_pool_file
from hf_mrl.pool.selection import (
    Candidate,
    apply_download_budget,
    greedy_select,
    screen_metadata,
    select_pool,
)

LABELS = ["a", "b", "c"]


def _card(library: str = "transformers") -> str:
    return (
        f"---\nlibrary_name: {library}\npipeline_tag: image-classification\nlicense: mit\ntags:\n- toy\n---\n# toy\n"
    )


def _upload(hub, folder: Path, repo_id: str, downloads: int = 10) -> str:
    api = HfApi()
    if not (folder / "README.md").exists():
        (folder / "README.md").write_text(
            _card("timm" if "pretrained_cfg" in (folder / "config.json").read_text() else "transformers")
        )
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    hub.set_model_stats(repo_id, downloads=downloads)
    return api.model_info(repo_id).sha


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def spread_classes(folder: Path, images: torch.Tensor) -> Path:
    """Rescale a tiny random transformers teacher's classifier so that it predicts every class on `images`.

    Untrained, it puts every image in one class; labels it defines would then leave nothing for accuracy, a
    permutation or a cluster to tell apart.
    """
    from safetensors.torch import load_file, save_file

    z = Teacher.load(str(folder)).logits(images)
    w = load_file(folder / "model.safetensors")
    scale = 1.0 / z.std(0).mean()
    w["classifier.1.bias"] = -scale * (z.mean(0) - w["classifier.1.bias"])
    w["classifier.1.weight"] = w["classifier.1.weight"] * scale
    save_file(w, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {
        "tr": spread_classes(make_transformers_teacher(root / "tr", LABELS, seed=0), make_images(60, seed=3)),
        "timm": make_timm_teacher(root / "timm", LABELS, seed=1),
    }


@pytest.fixture
def zoo(local_hub, teachers, tmp_path):
    """One repo per metadata rejection reason, plus two good ones."""

    def variant(name: str, base: str = "tr") -> Path:
        folder = tmp_path / name
        shutil.copytree(teachers[base], folder)
        return folder

    _upload(local_hub, variant("good"), "org/good", downloads=100)
    _upload(local_hub, variant("good-timm", "timm"), "org/good-timm", downloads=90)
    other = variant("other")
    _edit_config(other, id2label={"0": "x", "1": "y", "2": "z"}, label2id={"x": 0, "y": 1, "z": 2})
    _upload(local_hub, other, "org/other-labels")
    partial = variant("partial")
    _edit_config(partial, id2label={"0": "a", "1": "q", "2": "r"}, label2id={"a": 0, "q": 1, "r": 2})
    _upload(local_hub, partial, "org/partial-labels")
    _upload(local_hub, variant("gated"), "org/gated")
    local_hub.set_gated("org/gated")
    pickle = variant("pickle")
    from safetensors.torch import load_file

    torch.save(load_file(pickle / "model.safetensors"), pickle / "pytorch_model.bin")
    (pickle / "model.safetensors").unlink()
    _upload(local_hub, pickle, "org/pickle-only")
    remote = variant("remote")
    _edit_config(remote, auto_map={"AutoModelForImageClassification": "modeling.Net"})
    (remote / "modeling.py").write_text("raise RuntimeError('candidate code ran')\n")
    _upload(local_hub, remote, "org/remote-code")
    weightless = variant("weightless")
    (weightless / "model.safetensors").unlink()
    _upload(local_hub, weightless, "org/no-weights")
    keras = tmp_path / "keras"
    keras.mkdir()
    (keras / "README.md").write_text(_card("keras"))
    (keras / "model.keras").write_bytes(b"\0" * 64)
    (keras / "config.json").write_text("{}")
    _upload(local_hub, keras, "org/keras-model")
    bad_config = variant("bad-config")
    (bad_config / "config.json").write_text("{not json")
    (bad_config / "README.md").write_text(_card("transformers"))
    _upload(local_hub, bad_config, "org/bad-config")
    no_config = variant("no-config")
    (no_config / "config.json").unlink()
    (no_config / "README.md").write_text(_card("transformers"))
    _upload(local_hub, no_config, "org/no-config")
    return local_hub


REASONS = {
    "org/other-labels": "no label overlap: Candidate 'org/other-labels' shares no label with the target task",
    "org/gated": "gated: its files need an accepted access request",
    "org/pickle-only": "no safetensors weights: only pickle (pytorch_model.bin), which can run code",
    "org/remote-code": "remote code: `auto_map` in config.json needs its own Python code to load",
    "org/no-weights": "no weights: no model.safetensors in the repository",
    "org/keras-model": "unsupported library 'keras': the pool loads transformers, timm",
    "org/bad-config": "config.json invalid JSON: not a loadable transformers checkpoint",
    "org/no-config": "config.json missing: not a loadable transformers checkpoint",
    "org/not-there": "not found on the Hub (or private)",
    "org/good@v9": "revision not found: 'v9'",
}


@pytest.mark.parametrize("repo_id", sorted(REASONS))
def test_metadata_screen_rejects_with_its_reason(zoo, repo_id, tmp_path):
    c = Candidate(*repo_id.split("@"))
    kept = screen_metadata([c], LABELS, cache_dir=tmp_path / "sel")
    assert kept == [] and c.status == "rejected" and c.stage == "metadata"
    assert c.reason.startswith(REASONS[repo_id]), c.reason
    assert c.revision in (None, "v9") or len(c.revision) == 40  # pinned when the metadata could be read


def test_metadata_screen_size_and_overlap_limits_and_what_it_keeps(zoo, tmp_path):
    good, timm_good, partial = Candidate("org/good"), Candidate("org/good-timm"), Candidate("org/partial-labels")
    kept = screen_metadata([good, timm_good, partial], LABELS, min_covered=2, cache_dir=tmp_path / "sel")
    assert kept == [good, timm_good] and good.covered == 3 and good.license == "mit" and timm_good.library == "timm"
    assert partial.reason == "label overlap too small: covers 1/3 target classes"
    assert len(good.revision) == 40 and good.num_parameters > 0 and good.weight_bytes > 0
    small = Candidate("org/good")
    assert screen_metadata([small], LABELS, max_parameters=10, cache_dir=tmp_path / "sel") == []
    assert small.reason == f"too large: {good.num_parameters:,} parameters > the limit 10"
    over = Candidate("org/good", weight_bytes=300)
    ok = Candidate("org/good-timm", weight_bytes=600)
    assert apply_download_budget([ok, over], 700) == [ok]
    assert over.reason == "over the download budget: 900 > 700 bytes" and over.stage == "budget"
    # No weights were fetched: only config.json (and nothing from the rejected ones beyond their metadata).
    weights = [p for _, p in zoo.requests_log if p.endswith((".safetensors", ".bin"))]
    assert weights == []


def test_greedy_picks_complementary_teachers_not_the_most_accurate_pair():
    # Teacher 0 knows domain A (6 samples), teacher 1 is a slightly weaker copy of it, teacher 2 knows domain B
    # (4 samples). Ranking by accuracy picks 0 and 1 (reach 0.6); reachable accuracy picks 0 and 2 (reach 1.0).
    correct = torch.zeros(10, 3)
    correct[:6, 0] = 1
    correct[:5, 1] = 1
    correct[6:, 2] = 1
    chosen, curve = greedy_select(correct, 2)
    assert chosen == [0, 2] and curve == pytest.approx([0.6, 1.0])
    assert correct.mean(0).argsort(descending=True)[:2].tolist() == [0, 1]  # the broken objective's choice
    # Equal gains: the redundancy penalty prefers the teacher that agrees less with the one already chosen.
    tie = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    agreement = torch.tensor([[1.0, 0.9, 0.2], [0.9, 1.0, 0.3], [0.2, 0.3, 1.0]])
    assert greedy_select(tie, 2, agreement, redundancy=0.1)[0] == [0, 2]
    assert greedy_select(tie, 2, None)[0] == [0, 1]


@pytest.fixture
def scored_zoo(local_hub, teachers, tmp_path):
    """A teacher that defines the labels (perfect), its exact copy, a permuted-label copy and a corrupt one."""

    def variant(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(teachers["tr"], folder)
        return folder

    _upload(local_hub, variant("expert"), "org/expert", downloads=50)
    _upload(local_hub, variant("copy"), "org/expert-copy", downloads=40)
    permuted = variant("permuted")
    _edit_config(permuted, id2label={"0": "b", "1": "c", "2": "a"}, label2id={"b": 0, "c": 1, "a": 2})
    _upload(local_hub, permuted, "org/permuted", downloads=30)
    broken = variant("broken")
    (broken / "model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not json}......")
    _upload(local_hub, broken, "org/broken", downloads=20)
    images = make_images(60, seed=3)
    teacher = Teacher.load(str(teachers["tr"]))
    labels = teacher.logits(images).argmax(-1)
    assert torch.bincount(labels, minlength=3).min() >= 5  # every class present: a permutation can show
    return {"images": images, "labels": labels, "unlabeled": make_images(40, seed=4)}


def test_scored_screen_reasons_selection_and_pinned_pool_file(scored_zoo, local_hub, tmp_path):
    d = scored_zoo
    out = tmp_path / "out"
    result = select_pool(
        LABELS, d["images"], d["labels"], d["unlabeled"], k=2, output_dir=out, cache_dir=tmp_path / "sel"
    )
    by_id = {c.repo_id: c for c in result.candidates}
    assert by_id["org/expert-copy"].reason.startswith("near-duplicate of org/expert@")
    # The permuted copy is the expert with id2label rotated: a -> b, b -> c, c -> a on every labeled sample.
    assert by_id["org/permuted"].reason.startswith(
        "labels permuted: looks like a->b, b->c, c->a (true -> predicted, 100%"
    )
    assert by_id["org/permuted"].scores["permutation"] == [["a", "b", 1.0], ["b", "c", 1.0], ["c", "a", 1.0]]
    assert by_id["org/broken"].reason.startswith("could not be loaded (corrupted_weights)")
    assert all(by_id[r].stage == "scored" for r in ("org/expert-copy", "org/permuted", "org/broken"))
    assert [c.repo_id for c in result.selected] == ["org/expert"] and result.curve == [1.0]
    assert result.weight_downloads == 4
    sha = HfApi().model_info("org/expert").sha
    assert parse_pool_file(out / "pool.txt") == [f"org/expert@{sha}"]
    report = (out / "report.md").read_text()
    assert "| org/expert@" in report and "selected #1" in report and "near-duplicate of org/expert@" in report
    assert "scored: labels permuted: looks like a->b" in report and "; labels permuted |" in report
    assert "Rejected: 1 scored: near-duplicate; 1 scored: labels permuted; 1 scored: could not be loaded" in report
    assert (out / "reachable.png").read_bytes()[:4] == b"\x89PNG"

    # A new commit on the Hub does not change what the pool file pins.
    HfApi().upload_file(path_or_fileobj=b"new", path_in_repo="extra.txt", repo_id="org/expert")
    assert HfApi().model_info("org/expert").sha != sha
    assert parse_pool_file(out / "pool.txt") == [f"org/expert@{sha}"]


def test_offline_rerun_makes_no_request(scored_zoo, local_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    d = scored_zoo
    kwargs = dict(k=2, cache_dir=tmp_path / "sel", search="expert", ids=["org/expert-copy"])  # an id unpinned
    online = select_pool(LABELS, d["images"], d["labels"], d["unlabeled"], output_dir=tmp_path / "on", **kwargs)
    seen = len(local_hub.requests_log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = select_pool(LABELS, d["images"], d["labels"], d["unlabeled"], output_dir=tmp_path / "off", **kwargs)
    assert local_hub.requests_log[seen:] == []
    assert offline.weight_downloads == 0 and online.weight_downloads == 2
    copy = next(c for c in offline.candidates if c.repo_id == "org/expert-copy")
    assert copy.reason.startswith("near-duplicate of org/expert@") and len(copy.revision) == 40
    assert (tmp_path / "off" / "pool.txt").read_text() == (tmp_path / "on" / "pool.txt").read_text()
    with pytest.raises(ValueError, match="never run online"):
        select_pool(LABELS, d["images"], d["labels"], d["unlabeled"], **{**kwargs, "search": "other"})


def test_cli_needs_candidates_for_no_search(tmp_path):
    with pytest.raises(ValueError, match="--no_search needs --candidates_file"):
        main(["--output_dir", str(tmp_path), "--no_search"])


def test_allowed_remote_code_is_still_never_run(zoo, teachers, tmp_path):
    images = make_images(30, seed=5)
    labels = Teacher.load(str(teachers["tr"])).logits(images).argmax(-1)
    cands = [Candidate("org/remote-code"), Candidate("org/good")]
    result = select_pool(
        LABELS,
        images,
        labels,
        make_images(20, seed=6),
        k=1,
        candidates=cands,
        allow_remote_code=True,
        cache_dir=tmp_path / "sel",
    )
    assert cands[0].stage == "scored" and cands[0].reason.startswith("could not be loaded (remote_code)")
    assert [c.repo_id for c in result.selected] == ["org/good"]
    assert not [p for _, p in zoo.requests_log if p.endswith(".py")]  # its code was not even downloaded


@pytest.mark.slow
def test_candidate_fixture_fills_the_hub_with_every_kind(local_hub):
    from hf_mrl.testing.candidates import build_candidates, populate_hub

    entries = populate_hub(local_hub, build_candidates())
    kinds = {e["kind"] for e in entries}
    assert len(entries) >= 100 and {"expert", "near_duplicate", "permuted_labels", "random_weights"} <= kinds
    assert {"gated", "pickle_only", "remote_code", "other_labels", "unsupported_library"} <= kinds
    found = list(HfApi().list_models(pipeline_tag="image-classification", filter="digits", sort="downloads"))
    assert {m.id for m in found} == {e["repo_id"] for e in entries}
    assert [m.downloads for m in found] == sorted((m.downloads for m in found), reverse=True)
    experts = [e for e in entries if e["kind"] == "expert" and e["domain"] == "S"]
    accs = sorted(e["accuracy"]["S"] for e in experts)
    assert accs[0] < 0.5 < 0.95 < accs[-1]  # uneven quality, measured


# ------------------------------------------------------------------------------------------------- label map

RENAMED = {"0": "x", "1": "y", "2": "z"}


def test_label_map_lets_renamed_labels_through_the_metadata_screen(zoo, tmp_path):
    # org/other-labels is the toy teacher with labels x, y, z: no overlap by name with a, b, c.
    shared = {"a": ["x"], "b": ["y"], "c": ["z"]}
    own = {"org/other-labels": {"a": "x", "b": "y", "c": "z"}}
    for label_map in (shared, own):
        c = Candidate("org/other-labels")
        assert screen_metadata([c], LABELS, label_map=label_map, cache_dir=tmp_path / "sel") == [c]
        assert c.covered == 3 and c.status == "kept"
    # A map for another teacher does not apply to it; a partial map covers what it names.
    c = Candidate("org/other-labels")
    screen_metadata([c], LABELS, label_map={"org/good": {"a": "b"}}, cache_dir=tmp_path / "sel")
    assert c.reason.startswith("no label overlap")
    c = Candidate("org/other-labels")
    screen_metadata([c], LABELS, label_map={"a": ["x"]}, min_covered=2, cache_dir=tmp_path / "sel")
    assert c.reason == "label overlap too small: covers 1/3 target classes"
    # Its own entries must name its labels (as in training): a clear reason, not a silent miss.
    c = Candidate("org/other-labels")
    screen_metadata([c], LABELS, label_map={"org/other-labels": {"a": "w"}}, cache_dir=tmp_path / "sel")
    assert c.reason.startswith("its label map entries do not fit: The label map names 'w' for target class 'a'")


def test_label_map_naming_a_class_the_target_lacks_fails_before_any_request(zoo, tmp_path):
    seen = len(zoo.requests_log)
    with pytest.raises(ValueError, match="names target class 'd', which the target task does not have"):
        screen_metadata([Candidate("org/good")], LABELS, label_map={"d": ["x"]}, cache_dir=tmp_path / "sel")
    with pytest.raises(ValueError, match=r"\(entries of 'org/good'\) names target class 'q'"):
        screen_metadata([Candidate("org/good")], LABELS, label_map={"org/good": {"q": "a"}})
    assert len(zoo.requests_log) == seen


def test_label_map_scores_like_the_training_pool_and_is_written_for_it(scored_zoo, teachers, local_hub, tmp_path):
    from hf_mrl.pool.model_pool import ModelPool

    d = scored_zoo
    renamed = tmp_path / "renamed"
    shutil.copytree(teachers["tr"], renamed)
    _edit_config(renamed, id2label=RENAMED, label2id={v: int(k) for k, v in RENAMED.items()})
    _upload(local_hub, renamed, "org/renamed", downloads=60)
    (tmp_path / "map.json").write_text(json.dumps({"a": ["x"], "b": ["y", "not-a-label"], "c": ["z"]}))
    kwargs = dict(k=1, cache_dir=tmp_path / "sel", search="renamed")
    out = tmp_path / "out"
    result = select_pool(
        LABELS, d["images"], d["labels"], d["unlabeled"], output_dir=out, label_map=tmp_path / "map.json", **kwargs
    )
    # Mapped as a training pool maps it, the renamed expert is the expert: right on every labeled sample.
    (chosen,) = result.selected
    assert chosen.repo_id == "org/renamed" and chosen.scores["accuracy"] == 1.0
    # label_map.json keeps what the selected pool uses (a name no teacher has would make training refuse the map).
    written = json.loads((out / "label_map.json").read_text())
    assert written == {"a": ["x"], "b": ["y"], "c": ["z"]}
    assert "--label_map label_map.json" in (out / "pool.txt").read_text()
    with pytest.raises(ValueError, match="no teacher in the pool has such a label"):
        ModelPool.from_file(out / "pool.txt", LABELS, label_map=tmp_path / "map.json")
    pool = ModelPool.from_file(out / "pool.txt", LABELS, label_map=out / "label_map.json")
    assert pool.label_mapping[chosen.id] == {"a": ["x"], "b": ["y"], "c": ["z"]}
    # Entries keyed by the candidate's repo id: written keyed by its pinned id, which a training pool matches.
    own = {"org/renamed": {"a": "x", "b": "y", "c": "z"}, "org/elsewhere": {"a": "q"}}
    again = select_pool(
        LABELS, d["images"], d["labels"], d["unlabeled"], output_dir=tmp_path / "own", label_map=own, **kwargs
    )
    assert again.selected[0].scores["accuracy"] == 1.0
    written = json.loads((tmp_path / "own" / "label_map.json").read_text())
    assert written == {chosen.id: {"a": ["x"], "b": ["y"], "c": ["z"]}}
    pool = ModelPool.from_file(tmp_path / "own" / "pool.txt", LABELS, label_map=tmp_path / "own" / "label_map.json")
    assert pool.label_mapping[chosen.id] == {"a": ["x"], "b": ["y"], "c": ["z"]}
    # Without the map, the same candidate has no shared label at all.
    with pytest.raises(ValueError, match="No candidate passed the screens"):
        select_pool(LABELS, d["images"], d["labels"], d["unlabeled"], **kwargs)


def test_cli_label_map_errors_come_before_the_target_loads(tmp_path, monkeypatch):
    import hf_mrl.data.target

    monkeypatch.setattr(hf_mrl.data.target, "load_target", lambda *a, **k: pytest.fail("the target was loaded"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--output_dir", str(tmp_path), "--label_map", str(tmp_path / "missing.json")])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        main(["--output_dir", str(tmp_path), "--label_map", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="--clusters must be at least 1"):
        main(["--output_dir", str(tmp_path), "--clusters", "0"])


def test_report_shows_the_coverage_of_unlabeled_clusters(scored_zoo, local_hub, tmp_path):
    d = scored_zoo
    domains = torch.arange(2).repeat_interleave(20)  # the 40 unlabeled samples, as if from two latent domains
    out = tmp_path / "out"
    result = select_pool(
        LABELS,
        d["images"],
        d["labels"],
        d["unlabeled"],
        k=1,
        clusters=3,
        unlabeled_groups=domains,
        group_names=["P", "Q"],
        output_dir=out,
        cache_dir=tmp_path / "sel",
        search="expert",
    )
    rows = json.loads((out / "report.json").read_text())["unlabeled_clusters"]
    assert rows == result.clusters and 1 <= len(rows) <= 3
    assert sum(r["samples"] for r in rows) == 40 and sum(r["labeled"] for r in rows) == 60
    expert = result.selected[0].id
    # The expert defines the labels: right on every labeled sample of every cluster, so competent everywhere.
    assert all(r["teacher"] == expert and r["competence"] > 0.9 and not r["weak"] for r in rows)
    assert all(r["domain"].split()[0] in ("P", "Q") for r in rows)
    report = (out / "report.md").read_text()
    assert "## Coverage of the unlabeled data's clusters" in report and "| org/expert |" in report
    assert (out / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="clusters must be a positive integer"):
        select_pool(LABELS, d["images"], d["labels"], d["unlabeled"], clusters=0, cache_dir=tmp_path / "sel")
    with pytest.raises(ValueError, match="objective must be"):
        select_pool(LABELS, d["images"], d["labels"], d["unlabeled"], objective="best", cache_dir=tmp_path / "sel")
