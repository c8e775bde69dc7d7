"""Tests for the offline Digits-LD benchmark (hf_mrl.data.digits_ld): no network; the domains are built once."""

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_mrl.data import (
    DOMAINS,
    LABEL_NAMES,
    dataset_to_tensors,
    digits_ld,
    load_digits_ld,
    load_domain,
    load_hub_digits,
    load_source,
)

SIZES = {"M": 5000, "U": 1797, "S": 5000}


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    # A fresh cache, so the tests exercise building, saving and reloading; built once for the whole session.
    root = tmp_path_factory.mktemp("hf_mrl_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_MRL_CACHE", str(root))
        digits_ld._MEMO.clear()
        digits_ld._split_indices.cache_clear()
        yield root
    digits_ld._MEMO.clear()
    digits_ld._split_indices.cache_clear()


def row_hashes(ds: datasets.Dataset) -> list[str]:
    x, y, d = dataset_to_tensors(ds)
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in x]


@pytest.mark.parametrize("code", DOMAINS)
def test_domain_format(code):
    ds = load_domain(code)
    assert len(ds) == SIZES[code]
    assert ds.column_names == ["image", "label", "domain"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == LABEL_NAMES
    assert ds.features["domain"].names == ["M", "U", "S"]
    image = ds[0]["image"]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    assert set(ds["domain"]) == {DOMAINS.index(code)}
    counts = np.bincount(ds["label"], minlength=10)
    assert counts.min() > 150 and (code == "U" or set(counts) == {500})


def test_dataset_to_tensors_matches_decoded_images():
    ds = load_domain("S").select(range(0, 5000, 250))
    x, y, d = dataset_to_tensors(ds)
    assert x.dtype == torch.uint8 and x.shape == (20, 3, 32, 32)
    assert y.dtype == torch.int64 and d.dtype == torch.int64 and y.shape == d.shape == (20,)
    for i in (0, 7, 19):
        assert torch.equal(x[i], torch.from_numpy(np.array(ds[i]["image"])).permute(2, 0, 1))
    assert y.tolist() == ds["label"] and set(d.tolist()) == {DOMAINS.index("S")}
    assert x.float().std() > 20  # not blank


def test_images_are_not_degenerate():
    for code in DOMAINS:
        x, _, _ = dataset_to_tensors(load_domain(code).select(range(50)))
        assert (x.float().flatten(1).std(1) > 10).all(), code
    assert len(set(row_hashes(load_domain("S").select(range(200))))) == 200


def test_cache_is_written_and_reloaded(cache_dir):
    root = cache_dir / "digits_ld" / digits_ld._CACHE_VERSION
    for code in DOMAINS:
        load_domain(code)
        assert (root / code / "state.json").exists()
    assert sorted(p.name for p in root.iterdir()) == sorted(DOMAINS)  # no temp dirs left behind
    before = load_domain("S")
    digits_ld._MEMO.clear()
    after = load_domain("S")
    assert after is not before and after._fingerprint == before._fingerprint
    assert row_hashes(after.select(range(10))) == row_hashes(before.select(range(10)))
    assert load_domain("S") is after  # memoised


def test_render_is_deterministic_across_processes():
    here = hashlib.sha1(np.stack([digits_ld._render_s(i % 10, i, 1234) for i in range(20)]).tobytes()).hexdigest()
    code = (
        "import hashlib, numpy as np; from hf_mrl.data import digits_ld; "
        "imgs = np.stack([digits_ld._render_s(i % 10, i, 1234) for i in range(20)]); "
        "print(hashlib.sha1(imgs.tobytes()).hexdigest())"
    )
    root = Path(digits_ld.__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == here


@pytest.mark.parametrize("code", DOMAINS)
def test_fixed_domain_split(code):
    parts = digits_ld._split_indices(code)
    allidx = np.concatenate(list(parts.values()))
    assert len(allidx) == len(set(allidx.tolist())) == SIZES[code]
    n = SIZES[code]
    source = len(parts["source_train"]) + len(parts["source_validation"])
    target = len(parts["target_train"]) + len(parts["target_test"])
    assert abs(source - n / 2) <= 10 and abs(len(parts["target_test"]) - 0.3 * target) <= 10
    src = load_source(code)
    assert list(src) == ["train", "validation"]
    assert len(src["train"]) == len(parts["source_train"]) and len(src["validation"]) == len(
        parts["source_validation"]
    )
    assert src["train"].features == load_domain(code).features


def test_mus_splits_disjoint_and_sizes():
    dd = load_digits_ld("MUS", labeled_per_class=10, seed=0)
    assert list(dd) == ["labeled", "unlabeled", "test"]
    for split in dd.values():
        assert split.column_names == ["image", "label", "domain"]
    assert Counter(dd["labeled"]["label"]) == {c: 10 for c in range(10)}
    hashes = {name: set(row_hashes(split)) for name, split in dd.items()}
    assert all(len(hashes[name]) == len(dd[name]) for name in dd)
    assert not hashes["labeled"] & hashes["unlabeled"]
    assert not (hashes["labeled"] | hashes["unlabeled"]) & hashes["test"]
    source = set()
    for code in DOMAINS:
        for split in load_source(code).values():
            source |= set(row_hashes(split))
    assert not source & (hashes["labeled"] | hashes["unlabeled"] | hashes["test"])
    # target-train + target-test + source cover every domain exactly
    assert len(source) + sum(len(h) for h in hashes.values()) == sum(SIZES.values())
    n_train = sum(len(digits_ld._split_indices(c)["target_train"]) for c in DOMAINS)
    assert len(dd["labeled"]) + len(dd["unlabeled"]) == n_train
    assert set(dd["test"]["domain"]) == {0, 1, 2}


def test_seed_determinism():
    a = load_digits_ld("MUS", 5, seed=3)
    b = load_digits_ld("MUS", 5, seed=3)
    c = load_digits_ld("MUS", 5, seed=4)
    assert row_hashes(a["labeled"]) == row_hashes(b["labeled"])
    assert row_hashes(a["unlabeled"]) == row_hashes(b["unlabeled"])
    assert set(row_hashes(a["labeled"])) != set(row_hashes(c["labeled"]))
    assert row_hashes(a["test"]) == row_hashes(c["test"])  # the target split does not depend on the seed
    assert set(row_hashes(a["labeled"]) + row_hashes(a["unlabeled"])) == set(
        row_hashes(c["labeled"]) + row_hashes(c["unlabeled"])
    )


def test_labeled_is_stratified_over_union_not_per_domain():
    per_domain = [Counter(load_digits_ld("MUS", 10, seed=s)["labeled"]["domain"]) for s in range(4)]
    assert len({tuple(sorted(c.items())) for c in per_domain}) > 1
    assert all(set(c) <= {0, 1, 2} for c in per_domain)


@pytest.mark.parametrize("setting, expected", [("M", {0}), ("U", {1}), ("S", {2}), ("MU", {0, 1}), ("SU", {1, 2})])
def test_settings_select_domains(setting, expected):
    dd = load_digits_ld(setting, labeled_per_class=2, seed=0)
    for split in dd.values():
        assert set(split["domain"]) == expected
    n_test = sum(len(digits_ld._split_indices(DOMAINS[d])["target_test"]) for d in expected)
    assert len(dd["test"]) == n_test


def test_setting_is_order_insensitive():
    a, b = load_digits_ld("US", 3, seed=1), load_digits_ld("SU", 3, seed=1)
    for name in a:
        assert row_hashes(a[name]) == row_hashes(b[name])


@pytest.mark.parametrize("setting", ["", "X", "MX", "MM", "MUSS", None, 3])
def test_bad_setting_raises(setting):
    with pytest.raises(ValueError, match="setting") as err:
        load_digits_ld(setting)
    assert repr(setting) in str(err.value)


def test_labeled_per_class_bounds():
    with pytest.raises(ValueError, match="labeled_per_class"):
        load_digits_ld("M", labeled_per_class=0)
    available = np.bincount(
        np.asarray(load_domain("U")["label"])[digits_ld._split_indices("U")["target_train"]], minlength=10
    )
    with pytest.raises(ValueError, match=r"class '\d' has only \d+") as err:
        load_digits_ld("U", labeled_per_class=int(available.min()) + 1)
    assert str(int(available.min())) in str(err.value)
    dd = load_digits_ld("U", labeled_per_class=int(available.min()))
    assert len(dd["labeled"]) == 10 * int(available.min())


def test_bad_domain_code_raises():
    with pytest.raises(ValueError, match="'Q'"):
        load_domain("Q")
    with pytest.raises(ValueError):
        load_source("MU")


def test_hub_loader_converts_format(monkeypatch):
    calls = []

    def fake_load_dataset(repo_id, config=None, split=None, **kwargs):
        calls.append((repo_id, config, split))
        size = {"ylecun/mnist": 28, "flwrlabs/usps": 16, "ufldl-stanford/svhn": 32}[repo_id]
        mode = "RGB" if size == 32 else "L"
        images = [Image.new(mode, (size, size), 200) for _ in range(3)]
        return datasets.Dataset.from_dict({"image": images, "label": [1, 2, 3]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for name, code in [("mnist", "M"), ("usps", "U"), ("svhn", "S")]:
        ds = load_hub_digits(name, split="test")
        assert ds.features == digits_ld.FEATURES
        x, y, d = dataset_to_tensors(ds)
        assert x.shape == (3, 3, 32, 32) and y.tolist() == [1, 2, 3] and set(d.tolist()) == {DOMAINS.index(code)}
    assert calls == [
        ("ylecun/mnist", None, "test"),
        ("flwrlabs/usps", None, "test"),
        ("ufldl-stanford/svhn", "cropped_digits", "test"),
    ]
    with pytest.raises(ValueError):
        load_hub_digits("cifar10")
