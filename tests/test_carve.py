"""One split, as PACS, Office-Home and most Hub datasets are published: carved into disjoint labeled / unlabeled /
test parts (stratified by label and domain, seeded); labeled rows that are also test rows refused, found by row
identity however the splits are named or sliced."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from hf_mrl.data.target import check_target, load_target

LABELS = ["a", "b", "c"]  # the tiny pool's labels
DOMAINS = ["art", "cartoon", "photo", "sketch"]


def _pacs(path, per_domain_class=(6, 10, 14, 10), size=16):
    """One `train` split, string domain column, rows sorted by domain (as PACS is); unequal domain sizes."""
    from helpers import make_labeled_images

    labels, domains = [], []
    for d, n in zip(DOMAINS, per_domain_class, strict=True):
        for c in range(len(LABELS)):
            labels += [c] * n
            domains += [d] * n
    images = make_labeled_images(labels, size=size, seed=3, domain=[DOMAINS.index(d) % 2 for d in domains])
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=LABELS), "domain": datasets.Value("string")}
    )
    ds = datasets.Dataset.from_dict(
        {"image": list(images.permute(0, 2, 3, 1).numpy()), "label": labels, "domain": domains}, features=features
    )
    datasets.DatasetDict(train=ds).save_to_disk(str(path))
    return ds


def _keys(images) -> set[tuple[int, int]]:
    return {tuple(k) for k in images.keys().tolist()}


def _shares(domains, names) -> dict[str, float]:
    counts = np.bincount(np.asarray(domains), minlength=len(names))
    return {n: c / counts.sum() for n, c in zip(names, counts, strict=True)}


def test_one_split_is_carved_stratified_and_disjoint(tmp_path):
    ds = _pacs(tmp_path / "pacs")
    n = len(ds)  # 120
    assert check_target(str(tmp_path / "pacs"), 4) == LABELS
    data, desc = load_target(str(tmp_path / "pacs"), 4, seed=1, image_size=16)
    record = desc.splits
    assert record["carved"] == {"train": ["labeled", "unlabeled", "test"]}
    assert record["sizes"] == {"labeled": 12, "unlabeled": n - 12 - 24, "test": 24}  # test_size 0.2 of 120
    assert record["labeled_test_overlap"] == 0 and record["unlabeled_test_overlap"] == 0
    assert record["labeled_classes"] == {"a": 4, "b": 4, "c": 4} and record["seed"] == 1
    # Disjoint by content (every image is unique noise), and together they are the whole split.
    labeled, unlabeled, test = _keys(data.labeled_images), _keys(data.unlabeled_images), _keys(data.test_images)
    assert not (labeled & test) and not (labeled & unlabeled) and not (unlabeled & test)
    assert len(labeled | unlabeled | test) == n
    # Stratified: the test part's domain and class shares are those of the whole split (sorted by domain, a slice
    # would have put one domain in test).
    whole = _shares([DOMAINS.index(d) for d in ds["domain"]], DOMAINS)
    names = data.domain_names
    test_shares = _shares(data.test_domains.tolist(), names)
    assert all(abs(test_shares[d] - whole[d]) <= 0.05 for d in DOMAINS), (test_shares, whole)
    assert record["domain_shares"]["test"] == pytest.approx(record["domain_shares"]["whole train"], abs=0.05)
    assert np.bincount(data.test_labels.numpy()).tolist() == [8, 8, 8]
    assert data.unlabeled_labels is not None  # hidden labels kept for evaluation, never for training
    # Seeded: the same seed carves the same parts, another seed other ones.
    again, _ = load_target(str(tmp_path / "pacs"), 4, seed=1, image_size=16)
    assert _keys(again.test_images) == test
    other, _ = load_target(str(tmp_path / "pacs"), 4, seed=2, image_size=16)
    assert _keys(other.test_images) != test
    # A count instead of a fraction.
    counted, desc = load_target(str(tmp_path / "pacs"), 4, seed=1, image_size=16, test_size=30)
    assert len(counted.test_labels) == 30 and desc.splits["test_size"] == 30


def test_carving_errors_name_the_cause(tmp_path):
    _pacs(tmp_path / "pacs", per_domain_class=(2, 2, 2, 2))  # 8 per class
    with pytest.raises(ValueError, match=r"labeled_per_class=8 is more than split 'train' .* after the test part"):
        check_target(str(tmp_path / "pacs"), 8)
    with pytest.raises(ValueError, match=r"test_size must be a fraction in \(0, 1\)"):
        check_target(str(tmp_path / "pacs"), 2, test_size=-0.5)
    with pytest.raises(ValueError, match=r"test_size=24 leaves no test or no training part"):
        check_target(str(tmp_path / "pacs"), 2, test_size=24)


@pytest.mark.parametrize(
    "labeled, test",
    [("train[:50%]", "train[40%:]"), ("train[:18]", "train[10:40]"), ("train", "train[:100%]")],
)
def test_overlapping_slices_are_refused(tmp_path, labeled, test):
    """The issue's leak: `train[:50%]` and `train[40%:]` put 10% of the rows in both parts; the split strings differ,
    the rows do not."""
    _pacs(tmp_path / "pacs")
    splits = dict(labeled_split=labeled, unlabeled_split="train", test_split=test)
    with pytest.raises(ValueError) as info:
        check_target(str(tmp_path / "pacs"), **splits)
    message = str(info.value)
    # train: 10 per class carved from the split it shares with the unlabeled role, all of them in test.
    expected = {"train[:50%]": 12, "train[:18]": 8, "train": 30}[labeled]
    assert f"{expected} row(s) of" in message and "are in both the labeled part" in message, message
    assert "--allow_test_overlap" in message
    # Allowed, it is recorded as such.
    _, desc = load_target(str(tmp_path / "pacs"), image_size=16, allow_test_overlap=True, **splits)
    assert desc.splits["labeled_test_overlap"] == expected


def test_cli_trains_a_pacs_style_split_with_only_dataset_pool_and_labels(recipe, monkeypatch, tiny, tmp_path):
    """Acceptance: `--dataset DIR --pool FILE --labeled_per_class N` and nothing else about splits."""
    from test_data_sources import _cli

    _pacs(tmp_path / "pacs")
    metrics = _cli(recipe, monkeypatch, tiny, tmp_path, tmp_path / "pacs", "--labeled_per_class", "3")
    assert isinstance(metrics, dict), metrics
    splits = metrics["splits"]
    assert splits["sizes"] == {"labeled": 9, "unlabeled": 87, "test": 24} and splits["labeled_test_overlap"] == 0
    assert (metrics["num_labeled"], metrics["num_unlabeled"], metrics["num_test"]) == (9, 87, 24)
    assert set(splits["labeled_classes"]) == set(LABELS) and min(splits["labeled_classes"].values()) == 3
    whole, test = splits["domain_shares"]["whole train"], splits["domain_shares"]["test"]
    assert all(abs(test[d] - whole[d]) <= 0.05 for d in DOMAINS), splits["domain_shares"]
    assert set(metrics["per_domain"]) == set(DOMAINS) and metrics["evaluation"] == "test"
    card = (tmp_path / "out" / "student" / "README.md").read_text()
    assert "split: test" in card  # model-index: a real test split


def test_cli_refuses_overlapping_slices_and_allows_them_only_as_not_test(recipe, monkeypatch, tiny, tmp_path):
    from test_data_sources import _cli

    _pacs(tmp_path / "pacs")
    flags = ["--labeled_split", "train[:50%]", "--unlabeled_split", "train[50%:]", "--test_split", "train[40%:]"]
    message = _cli(recipe, monkeypatch, tiny, tmp_path, tmp_path / "pacs", *flags)
    assert isinstance(message, str) and "12 row(s) of" in message and "labeled part" in message, message
    assert not (tmp_path / "out" / "metrics.json").exists()

    metrics = _cli(recipe, monkeypatch, tiny, tmp_path, tmp_path / "pacs", *flags, "--allow_test_overlap")
    assert isinstance(metrics, dict), metrics
    assert metrics["splits"]["labeled_test_overlap"] == 12
    assert "not a test accuracy" in metrics["evaluation"]
    card = (tmp_path / "out" / "student" / "README.md").read_text()
    assert "split: test" not in card and "these are not test accuracies" in card
    assert "target test split" not in card


def test_select_takes_the_same_data_flags_and_carves_the_same_way(tmp_path, monkeypatch):
    """`hf-mrl select` reads the data as `train` does: the labeled set it screens on is the one training uses."""
    import hf_mrl.cli.select as select_cli

    _pacs(tmp_path / "pacs")
    seen = {}

    def fake_select_pool(label_names, labeled_images, labeled_labels, unlabeled, **kwargs):
        seen["labeled"] = labeled_images.keys()
        raise SystemExit(0)

    monkeypatch.setattr(select_cli, "select_pool", fake_select_pool)
    argv = ["--output_dir", str(tmp_path / "sel"), "--dataset", str(tmp_path / "pacs"), "--no_search"]
    argv += ["--candidates_file", str(tmp_path / "ids.txt"), "--labeled_per_class", "2", "--test_size", "0.25"]
    (tmp_path / "ids.txt").write_text("org/a\n")
    with pytest.raises(SystemExit):
        select_cli.main(argv + ["--seed", "3"])
    data, _ = load_target(str(tmp_path / "pacs"), 2, seed=3, test_size=0.25)
    assert {tuple(k) for k in seen["labeled"].tolist()} == _keys(data.labeled_images)
    with pytest.raises(SystemExit) as info:
        select_cli.main(argv + ["--test_split", "train[40%:]", "--labeled_split", "train[:50%]"])
    assert str(info.value.code).startswith("error: ") and "are in both the labeled part" in str(info.value.code)
    json.dumps(data.label_names)


# ----------------------------------------------------------------------------------------------- image folders


def _folder(root, splits=("train", "test"), per_class=8):
    from PIL import Image

    colours = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200)}
    for split in splits:
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (6 + i, 6), colour).save(root / split / name / f"{i}.png")


def test_image_folder_with_train_and_test_is_read_as_such(tmp_path):
    """The issue: `train/` + `test/` gave an error listing the splits as ['test']."""
    _folder(tmp_path / "imgs")
    assert check_target(str(tmp_path / "imgs"), 2) == LABELS
    data, desc = load_target(str(tmp_path / "imgs"), 2, image_size=8)
    record = desc.splits
    assert (record["labeled_split"], record["unlabeled_split"], record["test_split"]) == ("train", "train", "test")
    assert record["carved"] == {"train": ["labeled", "unlabeled"]}  # the test split is its own
    assert record["sizes"] == {"labeled": 6, "unlabeled": 18, "test": 24}
    with pytest.raises(ValueError, match=r"has no split 'validation' .* its splits are \['test', 'train'\]"):
        check_target(str(tmp_path / "imgs"), test_split="validation")


def test_image_folder_with_train_only_is_carved(tmp_path):
    _folder(tmp_path / "imgs", splits=("train",), per_class=10)
    data, desc = load_target(str(tmp_path / "imgs"), 2, image_size=8)
    assert desc.splits["carved"] == {"train": ["labeled", "unlabeled", "test"]}
    assert desc.splits["sizes"] == {"labeled": 6, "unlabeled": 18, "test": 6}
    assert sorted(data.test_labels.tolist()) == [0, 0, 1, 1, 2, 2]


# ----------------------------------------------------------------------------------------------- on the Hub


def test_pacs_style_parquet_repo_on_the_loopback_hub_then_offline(local_hub, hf_isolation, tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from hf_mrl.testing.hub_server import upload_parquet_dataset

    upload_parquet_dataset(datasets.DatasetDict(train=_pacs(tmp_path / "pacs")), "org/pacs")
    data, desc = load_target("org/pacs", 3, image_size=16)
    assert desc.splits["carved"] == {"train": ["labeled", "unlabeled", "test"]}
    assert desc.splits["sizes"] == {"labeled": 9, "unlabeled": 87, "test": 24}
    assert data.domain_names == DOMAINS  # the string domain column survived parquet
    seen = len(local_hub.requests_log)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    again, _ = load_target("org/pacs", 3, image_size=16)
    assert local_hub.requests_log[seen:] == []
    assert _keys(again.test_images) == _keys(data.test_images)  # the same carve offline


def test_dataset_config_name_selects_a_hub_configuration(local_hub, hf_isolation, tmp_path):
    from huggingface_hub import HfApi

    ds = _pacs(tmp_path / "pacs")
    folder = tmp_path / "repo"
    configs = []
    for domain in ("photo", "sketch"):
        part = ds.filter(lambda e, d=domain: e["domain"] == d)
        part.to_parquet(str(folder / domain / "train-00000-of-00001.parquet"))
        configs.append(f"- config_name: {domain}\n  data_files:\n  - split: train\n    path: {domain}/*.parquet\n")
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    api = HfApi()
    api.create_repo("org/domains", repo_type="dataset")
    api.upload_folder(repo_id="org/domains", repo_type="dataset", folder_path=str(folder))
    data, desc = load_target("org/domains", 2, image_size=16, dataset_config_name="sketch")
    assert data.domain_names == ["sketch"] and desc.startswith("org/domains (sketch)")
    assert sum(desc.splits["sizes"].values()) == 30  # 10 sketches per class
