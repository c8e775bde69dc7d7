"""Target datasets where users keep them: save_to_disk folders, image folders, Hub dataset ids; split slicing;
domain columns of any type; images of any size and mode; corrupt images named by split and row, or skipped."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_mrl.data.target import check_target, hub_dataset_id, load_target, target_from_datasets
from hf_mrl.testing.hub_server import upload_parquet_dataset

LABELS = ["a", "b"]
COLOURS = {0: (200, 30, 30), 1: (30, 30, 200)}  # one flat colour per class: decoding is checkable exactly


def _png(colour, size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _split(labels, domains=None, *, domain_feature=None, bad_rows=(), with_labels=True) -> datasets.Dataset:
    images = [
        {"bytes": b"not an image" if i in bad_rows else _png(COLOURS[y]), "path": None} for i, y in enumerate(labels)
    ]
    data, features = {"image": images}, {"image": datasets.Image()}
    if with_labels:
        data["label"], features["label"] = list(labels), datasets.ClassLabel(names=LABELS)
    if domains is not None:
        data["domain"], features["domain"] = list(domains), domain_feature
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def _task(domain_feature=None, domains=None, bad=None, unlabeled_labels=True) -> datasets.DatasetDict:
    """labeled 4 (a, b, a, b), unlabeled 6, test 4; `domains[role]` per role; `bad[role]` rows are corrupt."""
    labels = {"labeled": [0, 1, 0, 1], "unlabeled": [0, 1, 1, 0, 0, 1], "test": [1, 0, 1, 0]}
    return datasets.DatasetDict(
        {
            role: _split(
                y,
                None if domains is None else domains[role],
                domain_feature=domain_feature,
                bad_rows=(bad or {}).get(role, ()),
                with_labels=unlabeled_labels or role != "unlabeled",
            )
            for role, y in labels.items()
        }
    )


def _colour_labels(images: torch.Tensor) -> list[int]:
    """The class each decoded flat-colour image shows (red: a, blue: b)."""
    return [0 if img[0].float().mean() > img[2].float().mean() else 1 for img in images]


# ----------------------------------------------------------------------------------------------- each source


def test_save_to_disk_folder(tmp_path):
    _task().save_to_disk(str(tmp_path / "dd"))
    assert check_target(str(tmp_path / "dd")) == LABELS
    data, desc = load_target(str(tmp_path / "dd"), image_size=4)
    assert data.labeled_images.shape == (4, 3, 4, 4) and data.unlabeled_images.shape == (6, 3, 4, 4)
    assert data.labeled_labels.tolist() == [0, 1, 0, 1] and data.test_labels.tolist() == [1, 0, 1, 0]
    assert _colour_labels(data.test_images) == data.test_labels.tolist()
    assert data.unlabeled_labels.tolist() == [0, 1, 1, 0, 0, 1]  # hidden labels kept for evaluation
    assert desc == str(tmp_path / "dd") and desc.num_skipped_images == 0


def _write_image(path: Path, colour, size=(9, 7), mode="RGB", fmt="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)


def test_image_folder_with_a_folder_per_split(tmp_path):
    """labeled/<class>/, test/<class>/ and an unlabeled/ folder without classes; JPEG and PNG of any size."""
    root = tmp_path / "images"
    for i in range(3):
        _write_image(root / "labeled" / "a" / f"{i}.png", COLOURS[0], size=(10 + i, 6))
        _write_image(root / "labeled" / "b" / f"{i}.jpg", COLOURS[1], fmt="JPEG")
        _write_image(root / "test" / "a" / f"{i}.png", COLOURS[0])
        _write_image(root / "test" / "b" / f"{i}.png", COLOURS[1], size=(31, 17))
    for i in range(5):
        _write_image(root / "unlabeled" / f"u{i}.png", COLOURS[i % 2], size=(5 + i, 5))
    assert check_target(str(root)) == LABELS
    data, _ = load_target(str(root), image_size=6)
    assert data.label_names == LABELS
    assert sorted(data.labeled_labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert _colour_labels(data.labeled_images) == data.labeled_labels.tolist()
    assert _colour_labels(data.test_images) == data.test_labels.tolist()
    assert data.unlabeled_images.shape == (5, 3, 6, 6) and data.unlabeled_labels is None


def test_image_folder_with_train_and_test_folders(tmp_path):
    """datasets' own layout (train/, test/): the splits are named, one of them sliced into labeled and unlabeled."""
    root = tmp_path / "images"
    for i in range(4):
        for c, name in enumerate(LABELS):
            _write_image(root / "train" / name / f"{i}.png", COLOURS[c])
            _write_image(root / "test" / name / f"{i}.png", COLOURS[c])
    data, desc = load_target(
        str(root), image_size=4, labeled_split="train", unlabeled_split="test[:50%]", test_split="test[50%:]"
    )
    assert len(data.labeled_labels) == 8 and len(data.unlabeled_images) == 4 and len(data.test_labels) == 4
    assert "unlabeled test[:50%]" in desc


def test_hub_dataset_id_revision_and_offline(local_hub, hf_isolation, tmp_path, monkeypatch):
    """A parquet dataset repo on the loopback Hub, read by id through `datasets`; a tag pins the old revision; the
    cached copy loads again with HF_HUB_OFFLINE=1 without a single request."""
    import datasets.config
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    upload_parquet_dataset(_task(), "org/tiny")
    HfApi().create_tag("org/tiny", tag="v1", repo_type="dataset")
    bigger = _task()
    bigger["test"] = datasets.concatenate_datasets([bigger["test"], bigger["test"]])
    upload_parquet_dataset(bigger, "org/tiny")

    pinned, _ = load_target("org/tiny@v1", image_size=4)
    assert len(pinned.test_labels) == 4
    assert _colour_labels(pinned.test_images) == pinned.test_labels.tolist() == [1, 0, 1, 0]
    # Offline, datasets reads "the latest cached version" whatever the revision: load main last.
    assert check_target("org/tiny") == LABELS
    data, desc = load_target("org/tiny", image_size=4)
    assert len(data.test_labels) == 8 and desc == "org/tiny"
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(hf_isolation)  # never the user's cache

    seen = len(local_hub.requests_log)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    again, _ = load_target("org/tiny", image_size=4)
    assert torch.equal(again.test_images[:], data.test_images[:])
    assert local_hub.requests_log[seen:] == []
    with pytest.raises(ValueError, match=r"'org/other' is not in the datasets cache .* HF_HUB_OFFLINE=1"):
        load_target("org/other")


def test_unknown_hub_dataset(local_hub):
    with pytest.raises(ValueError, match="'org/nothing' is not a local folder, nor a dataset on the Hub"):
        check_target("org/nothing")


# ----------------------------------------------------------------------------------------------- splits


def test_split_slicing_selects_those_rows(tmp_path):
    dd = _task()
    whole = datasets.DatasetDict(
        train=datasets.concatenate_datasets([dd["labeled"], dd["unlabeled"]]), test=dd["test"]
    )
    whole.save_to_disk(str(tmp_path / "dd"))
    data, _ = load_target(
        str(tmp_path / "dd"), image_size=4, labeled_split="train[:4]", unlabeled_split="train[40%:]", test_split="test"
    )
    assert data.labeled_labels.tolist() == [0, 1, 0, 1]
    assert data.unlabeled_labels.tolist() == [0, 1, 1, 0, 0, 1]  # rows 4..9 of train: 40% of 10 rows on
    plus, _ = load_target(
        str(tmp_path / "dd"),
        image_size=4,
        labeled_split="train[:2]+test[:2]",
        unlabeled_split="train",
        test_split="test[2:]",  # disjoint from the labeled test[:2]: an overlap is refused
    )
    assert plus.labeled_labels.tolist() == [0, 1, 1, 0]


def test_missing_split_names_the_available_splits(tmp_path):
    _task().save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError) as info:
        check_target(str(tmp_path / "dd"), labeled_split="train[:10%]")
    message = str(info.value)
    assert "has no split 'train' (named by labeled_split='train[:10%]')" in message
    assert "its splits are ['labeled', 'unlabeled', 'test']" in message
    assert "--labeled_split" in message


def test_training_domains_are_checked_for_oracle_routing(tmp_path):
    domains = {**DOMAINS, "unlabeled": None}
    _task(datasets.Value("string"), domains).save_to_disk(str(tmp_path / "dd"))
    assert check_target(str(tmp_path / "dd")) == LABELS
    with pytest.raises(ValueError, match=r"split\(s\) \['unlabeled'\] of .* have no 'domain' column"):
        check_target(str(tmp_path / "dd"), training_domains=True)


def test_hub_dataset_id(tmp_path):
    assert hub_dataset_id("org/pets@v1") == ("org/pets", "v1") and hub_dataset_id("org/pets") == ("org/pets", None)
    assert hub_dataset_id("digits-ld:MUS") is None and hub_dataset_id(str(tmp_path)) is None


def test_unlabeled_split_may_lack_labels(tmp_path):
    _task(unlabeled_labels=False).save_to_disk(str(tmp_path / "dd"))
    data, _ = load_target(str(tmp_path / "dd"), image_size=4)
    assert len(data.unlabeled_images) == 6 and data.unlabeled_labels is None


# ----------------------------------------------------------------------------------------------- domains

DOMAINS = {"labeled": ["big", "small", "small", "big"], "unlabeled": ["small"] * 3 + ["big"] * 3}
DOMAINS["test"] = ["small", "big", "big", "small"]


def test_string_domains(tmp_path):
    """The crash of the issue: `invalid literal for int() with base 10: 'big'`."""
    _task(datasets.Value("string"), DOMAINS).save_to_disk(str(tmp_path / "dd"))
    data, _ = load_target(str(tmp_path / "dd"), image_size=4, domain_column="domain")
    assert data.domain_names == ["big", "small"]
    assert data.test_domains.tolist() == [1, 0, 0, 1]
    assert data.labeled_domains.tolist() == [0, 1, 1, 0]  # one vocabulary for every split
    assert data.unlabeled_domains.tolist() == [1, 1, 1, 0, 0, 0]


def test_integer_domains(tmp_path):
    ints = {role: [{"big": 7, "small": 3}[d] for d in ds] for role, ds in DOMAINS.items()}
    _task(datasets.Value("int32"), ints).save_to_disk(str(tmp_path / "dd"))
    data, _ = load_target(str(tmp_path / "dd"), image_size=4)
    assert data.test_domains.tolist() == [3, 7, 7, 3] and data.domain_names is None


def test_class_label_domains_keep_their_order(tmp_path):
    names = ["small", "big"]
    ids = {role: [names.index(d) for d in ds] for role, ds in DOMAINS.items()}
    _task(datasets.ClassLabel(names=names), ids).save_to_disk(str(tmp_path / "dd"))
    data, _ = load_target(str(tmp_path / "dd"), image_size=4)
    assert data.domain_names == ["small", "big"] and data.test_domains.tolist() == [0, 1, 1, 0]


def test_domain_column_errors(tmp_path):
    _task(datasets.Value("float32"), {r: [0.5] * len(d) for r, d in DOMAINS.items()}).save_to_disk(str(tmp_path / "f"))
    with pytest.raises(ValueError, match=r"Domain column 'domain' of split 'labeled' holds .*float32.* strings, int"):
        check_target(str(tmp_path / "f"), domain_column="domain")
    data, _ = load_target(str(tmp_path / "f"), image_size=4)  # found by its default name only: ignored
    assert data.test_domains is None
    with pytest.raises(ValueError, match=r"The test split has no domain column 'site' \(columns: \['image', 'label'"):
        check_target(str(tmp_path / "f"), domain_column="site")


# ----------------------------------------------------------------------------------------------- images


def test_images_of_any_size_and_mode():
    def png(img: Image.Image) -> dict:
        buf = io.BytesIO()
        img.save(buf, format="PNG" if img.mode != "CMYK" else "JPEG")
        return {"bytes": buf.getvalue(), "path": None}

    palette = Image.new("P", (5, 9))
    palette.putpalette([10, 20, 30] * 256)
    images = [
        png(Image.new("L", (13, 5), 100)),  # greyscale
        png(Image.new("RGBA", (4, 4), (0, 0, 0, 0))),  # fully transparent: white, as image processors show it
        png(Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16))),  # 16-bit greyscale
        png(palette),
        png(Image.new("CMYK", (7, 3), (0, 0, 0, 0))),
        png(Image.new("RGB", (300, 2), (1, 2, 3))),
    ]
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1, 0, 1, 0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=LABELS)}),
    )
    data = target_from_datasets(datasets.DatasetDict(labeled=ds, unlabeled=ds, test=ds), image_size=3)
    x = data.test_images
    assert x.shape == (6, 3, 3, 3) and x.dtype == torch.uint8
    pixel = x[:, :, 1, 1].tolist()
    assert pixel[0] == [100, 100, 100] and pixel[1] == [255, 255, 255] and pixel[2] == [255, 255, 255]
    assert pixel[3] == [10, 20, 30] and pixel[4] == [255, 255, 255] and pixel[5] == [1, 2, 3]


def test_corrupt_image_names_split_and_row(tmp_path):
    _task(bad={"unlabeled": [2]}).save_to_disk(str(tmp_path / "dd"))
    data, _ = load_target(str(tmp_path / "dd"), image_size=4)  # lazy: nothing is decoded yet
    assert data.unlabeled_images[:2].shape == (2, 3, 4, 4)
    with pytest.raises(ValueError) as info:
        data.unlabeled_images[1:3]
    message = str(info.value)
    assert "row 2 of split 'unlabeled' (unlabeled split)" in message and "cannot be decoded" in message
    assert "UnidentifiedImageError" in message and "skip_bad_images=True" in message
    assert "BytesIO" not in message  # the issue's `cannot identify image file <_io.BytesIO object at 0x...>`
    # In a DataLoader worker (the teacher pass), the same message, not a worker's wrapped traceback.
    with pytest.raises(ValueError) as info:
        list(data.unlabeled_images.batches(None, num_workers=1))
    assert str(info.value) == message


def test_corrupt_file_in_an_image_folder_names_the_file(tmp_path):
    root = tmp_path / "images"
    for c, name in enumerate(LABELS):
        _write_image(root / "labeled" / name / "0.png", COLOURS[c])
        _write_image(root / "test" / name / "0.png", COLOURS[c])
    _write_image(root / "unlabeled" / "0.png", COLOURS[0])
    (root / "unlabeled" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data, _ = load_target(str(root), image_size=4)
    with pytest.raises(ValueError, match=r"row 1 of split 'unlabeled' .* file '.*unlabeled/1.png'"):
        data.unlabeled_images.originals([0, 1])


def test_skip_bad_images_counts_them_and_keeps_labels_aligned(tmp_path):
    _task(bad={"labeled": [1], "unlabeled": [0, 4]}).save_to_disk(str(tmp_path / "dd"))
    bad = {"labeled": [0, 1, 2, 3], "unlabeled": [0, 1, 2, 3, 4, 5]}
    data, desc = load_target(str(tmp_path / "dd"), image_size=4, skip_bad_images=True, labeled_per_class=None)
    assert desc.skipped_images == {"labeled": [1], "unlabeled": [0, 4]} and desc.num_skipped_images == 3
    assert "skipped 3 unreadable image(s)" in desc
    assert data.labeled_labels.tolist() == [0, 0, 1]  # row 1 (a "b") left out, with its label
    assert _colour_labels(data.labeled_images) == data.labeled_labels.tolist()
    assert len(data.unlabeled_images) == len(bad["unlabeled"]) - 2
    assert data.unlabeled_labels.tolist() == [1, 1, 0, 1]


# ----------------------------------------------------------------------------------------------- the recipe


@pytest.mark.slow  # two recipe runs in subprocesses, about a minute on 2 shared cores
def test_recipe_trains_by_hub_dataset_id_then_offline(tiny, local_hub, tmp_path):
    """Acceptance: a parquet dataset repo on the loopback Hub trains by id through `datasets`; the same command
    with HF_HUB_OFFLINE=1 trains again from the cache, and the Hub sees no request."""
    import json
    import os
    import subprocess
    import sys

    upload_parquet_dataset(datasets.load_from_disk(str(tiny["data"])), "org/tiny-target")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "train_mrl.py"

    def run(out: Path, **env_extra: str) -> dict:
        cmd = [sys.executable, str(recipe), "--pool", str(tiny["pool"]), "--dataset", "org/tiny-target"]
        cmd += ["--output_dir", str(out), "--max_steps", "2", "--batch_size", "4", "--unlabeled_batch_size", "8"]
        cmd += ["--image_size", "16", "--cache_dir", str(tmp_path / "logits"), "--no_progress"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MRL_CACHE": str(tmp_path / "hf_mrl"), **env_extra}
        env["PYTHONPATH"] = os.pathsep.join([str(recipe.parents[1]), env.get("PYTHONPATH", "")])  # this checkout
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return json.loads((out / "metrics.json").read_text())

    online = run(tmp_path / "online")
    assert any(path.startswith("/datasets/org/tiny-target/resolve/") for _, path in local_hub.requests_log)
    sizes = tiny["sizes"]
    assert (online["num_labeled"], online["num_unlabeled"], online["num_test"]) == tuple(sizes.values())
    assert set(online["per_domain"]) == {"d0", "d1"}  # the ClassLabel domain column survived parquet

    seen = len(local_hub.requests_log)
    offline = run(tmp_path / "offline", HF_HUB_OFFLINE="1")
    assert local_hub.requests_log[seen:] == []
    assert offline["num_test"] == online["num_test"] and offline["reuser_accuracy"] == online["reuser_accuracy"]


# ----------------------------------------------------------------------------------------------- the message a user sees


def _cli(recipe, monkeypatch, tiny, tmp_path, data: Path, *extra: str):
    """`recipes/train_mrl.py` in-process on `data` with the tiny pool: its exit message, or its metrics."""
    import json

    argv = ["--pool", str(tiny["pool"]), "--dataset", str(data), "--output_dir", str(tmp_path / "out")]
    argv += ["--max_steps", "2", "--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16"]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--no_progress", *extra]
    monkeypatch.setenv("HF_MRL_CACHE", str(tmp_path / "hf_mrl"))
    try:
        recipe.main(argv)
    except SystemExit as exit_info:
        message = exit_info.code
        assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
        return message
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_cli_string_domains_train_and_report_per_domain(recipe, monkeypatch, tiny, tmp_path):
    """The issue's crash after the teachers load: `invalid literal for int() with base 10: 'big'`."""
    dd = datasets.load_from_disk(str(tiny["data"]))
    dd = datasets.DatasetDict(
        {
            role: ds.cast_column("domain", datasets.Value("string")).map(
                lambda e: {"domain": {"0": "small", "1": "big"}[e["domain"]]}
            )
            for role, ds in dd.items()
        }
    )
    assert dd["test"][0]["domain"] in ("small", "big")
    dd.save_to_disk(str(tmp_path / "dd"))
    metrics = _cli(recipe, monkeypatch, tiny, tmp_path, tmp_path / "dd")
    assert isinstance(metrics, dict), metrics
    assert set(metrics["per_domain"]) == {"big", "small"}


def test_cli_corrupt_image_names_split_and_row(recipe, monkeypatch, tiny, tmp_path):
    dd = datasets.load_from_disk(str(tiny["data"]))
    raw = dd["unlabeled"].cast_column("image", datasets.Image(decode=False))
    images = list(raw["image"])
    images[5] = {"bytes": b"GIF89a broken", "path": None}
    dd["unlabeled"] = raw.remove_columns("image").add_column("image", images).cast_column("image", datasets.Image())
    dd.save_to_disk(str(tmp_path / "dd"))
    message = _cli(recipe, monkeypatch, tiny, tmp_path, tmp_path / "dd")
    assert f"The image at row 5 of split 'unlabeled' (unlabeled split) of '{tmp_path / 'dd'}'" in message, message
    assert "cannot be decoded" in message and "--skip_bad_images" in message


def test_cli_missing_split_lists_the_splits(recipe, monkeypatch, tiny, tmp_path):
    dd = datasets.load_from_disk(str(tiny["data"]))
    datasets.DatasetDict(train=dd["labeled"], test=dd["test"]).save_to_disk(str(tmp_path / "dd"))
    message = _cli(recipe, monkeypatch, tiny, tmp_path, tmp_path / "dd", "--labeled_split", "labeled")
    assert "has no split 'labeled' (named by labeled_split='labeled'); its splits are ['train', 'test']" in message


def test_cli_split_flags_and_label_map_reach_the_run_and_the_saved_reuser(recipe, monkeypatch, tiny, tmp_path):
    import json

    from hf_mrl import AttentionReuser

    dd = datasets.load_from_disk(str(tiny["data"]))
    datasets.DatasetDict(train=dd["labeled"], extra=dd["unlabeled"], test=dd["test"]).save_to_disk(
        str(tmp_path / "dd")
    )
    swap = {"a": ["b"], "b": ["a"], "c": ["c"]}  # an explicit map that name matching would never give
    (tmp_path / "map.json").write_text(json.dumps(swap))
    splits = ["--labeled_split", "train", "--unlabeled_split", "extra[:20]"]
    metrics = _cli(
        recipe, monkeypatch, tiny, tmp_path, tmp_path / "dd", *splits, "--label_map", str(tmp_path / "map.json")
    )
    assert isinstance(metrics, dict), metrics
    assert metrics["num_unlabeled"] == 20
    assert all(mapping == swap for mapping in metrics["label_mapping"].values())
    assert metrics["label_map"] == metrics["label_mapping"]
    reuser = AttentionReuser.from_pretrained(str(tmp_path / "out" / "reuser"))
    assert reuser.pool.label_mapping == metrics["label_mapping"]  # rebuilt with the run's map, not by name
    assert "by a label map" in (tmp_path / "out" / "reuser" / "README.md").read_text()

    (tmp_path / "bad.json").write_text(json.dumps({"a": ["zzz"]}))
    message = _cli(
        recipe, monkeypatch, tiny, tmp_path, tmp_path / "dd", *splits, "--label_map", str(tmp_path / "bad.json")
    )
    assert "no teacher in the pool has such a label" in message and "'zzz'" in message, message
