"""Turn a `datasets.DatasetDict` (labeled / unlabeled / test splits) into the tensors the trainer uses."""

from __future__ import annotations

import numpy as np
import torch

from .trainer import TargetData

__all__ = ["check_dataset", "check_target", "load_target", "target_from_datasets"]

SPLITS = ("labeled", "unlabeled", "test")


def _images(ds, column: str, image_size: int) -> torch.Tensor:
    from PIL import Image

    arrays = []
    for i, img in enumerate(ds[column]):
        try:
            if not isinstance(img, Image.Image):
                img = Image.fromarray(np.asarray(img))
            img = img.convert("RGB")
        except (TypeError, ValueError, OSError) as err:
            raise ValueError(f"Row {i} of column {column!r} is not an image ({type(img).__name__}: {err}).") from None
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(img))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _domains(split, column: str | None) -> torch.Tensor | None:
    """Latent-domain labels of a split, when it has them (oracle routing and evaluation only)."""
    if not column or column not in split.column_names:
        return None
    return torch.as_tensor(np.asarray(split[column], dtype=np.int64))


def _hidden_labels(split, column: str, num_classes: int) -> torch.Tensor | None:
    """The unlabeled split's true labels, when it carries valid ones (evaluation only, never training)."""
    if column not in split.column_names:
        return None
    y = torch.as_tensor(np.asarray(split[column], dtype=np.int64))
    return y if len(y) and int(y.min()) >= 0 and int(y.max()) < num_classes else None


def target_from_datasets(
    dataset,
    image_column: str = "image",
    label_column: str = "label",
    domain_column: str | None = "domain",
    image_size: int = 32,
) -> TargetData:
    """Validate and convert a DatasetDict with splits `labeled`, `unlabeled`, `test`.

    The label column must be a `ClassLabel` (its names are the target label names). The domain column,
    if present, is read for evaluation only.
    """
    import datasets

    check_dataset(dataset, image_column, label_column)
    feature = dataset["labeled"].features[label_column]
    domain_names = None
    test_domains = None
    if domain_column and domain_column in dataset["test"].column_names:
        test_domains = torch.as_tensor(np.asarray(dataset["test"][domain_column], dtype=np.int64))
        dfeat = dataset["test"].features[domain_column]
        domain_names = list(dfeat.names) if isinstance(dfeat, datasets.ClassLabel) else None
    if image_size == 32 and image_column == "image" and label_column == "label":
        from .data import dataset_to_tensors  # fast path for PNG-encoded 32x32 images

        (xl, yl, _), (xu, _, _), (xt, yt, _) = (dataset_to_tensors(dataset[s]) for s in SPLITS)
    else:
        xl, xu, xt = (_images(dataset[s], image_column, image_size) for s in SPLITS)
        yl, yt = (torch.as_tensor(np.asarray(dataset[s][label_column], dtype=np.int64)) for s in ("labeled", "test"))
    return TargetData(
        label_names=list(feature.names),
        labeled_images=xl,
        labeled_labels=yl,
        unlabeled_images=xu,
        test_images=xt,
        test_labels=yt,
        test_domains=test_domains,
        labeled_domains=_domains(dataset["labeled"], domain_column),
        unlabeled_domains=_domains(dataset["unlabeled"], domain_column),
        unlabeled_labels=_hidden_labels(dataset["unlabeled"], label_column, len(feature.names)),
        domain_names=domain_names,
    )


def load_target(spec: str, labeled_per_class: int | None, seed: int, **kwargs) -> tuple[TargetData, str]:
    """`digits-ld[:SETTING]` (the embedded benchmark) or a `save_to_disk` DatasetDict folder.

    `labeled_per_class` draws that many labeled samples per class (seeded): from the benchmark's target-train part
    (default 10), or from a folder's `labeled` split (default: all of it). Returns the data and a short description
    for cards and metrics.
    """
    label_column = kwargs.get("label_column", "label")
    if _is_digits_ld(spec):
        from .data import load_digits_ld

        setting = spec.partition(":")[2] or "MUS"
        n = DIGITS_LD_LABELED_PER_CLASS if labeled_per_class is None else labeled_per_class
        _check_labeled_per_class(n)
        dd = load_digits_ld(setting, labeled_per_class=n, seed=seed)
        return target_from_datasets(dd, **kwargs), f"Digits-LD {setting} ({n} labels per class)"
    dd = _load_folder(spec)
    check_dataset(dd, kwargs.get("image_column", "image"), label_column, labeled_per_class)
    if labeled_per_class is not None:
        dd = _subsample_labeled(dd, label_column, labeled_per_class, seed)
    return target_from_datasets(dd, **kwargs), spec


DIGITS_LD_LABELED_PER_CLASS = 10


def _is_digits_ld(spec: str) -> bool:
    return spec == "digits-ld" or spec.startswith("digits-ld:")


def _check_labeled_per_class(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"labeled_per_class must be a positive integer; got {n!r}.")


def _load_folder(spec: str):
    import os

    import datasets

    if not os.path.isdir(spec):
        raise ValueError(
            f"Unknown dataset {spec!r}: use 'digits-ld[:SETTING]' or a folder written by DatasetDict.save_to_disk "
            "with splits labeled / unlabeled / test."
        )
    try:
        return datasets.load_from_disk(spec)
    except IndexError:  # datasets cannot reload a split saved empty (no data file): name that split
        empty = [s for s in SPLITS if _saved_split_is_empty(os.path.join(spec, s))]
        if empty:
            raise ValueError(
                f"Split {empty[0]!r} of {spec!r} is empty: MRL needs labeled, unlabeled and test samples."
            ) from None
        raise
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(
            f"Dataset folder {spec!r} could not be read ({err}): pass a folder written by DatasetDict.save_to_disk "
            "with splits labeled / unlabeled / test."
        ) from None


def _saved_split_is_empty(folder: str) -> bool:
    import json
    import os

    try:
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
            return not json.load(f).get("_data_files")
    except (OSError, ValueError, AttributeError):
        return False


def _subsample_labeled(dataset, label_column: str, labeled_per_class: int, seed: int):
    """Keep `labeled_per_class` samples of each class of the labeled split, drawn with `seed`, in their order."""
    import datasets

    labels = np.asarray(dataset["labeled"][label_column], dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), size=labeled_per_class, replace=False) for c in np.unique(labels)]
        )
    )
    return datasets.DatasetDict({**dataset, "labeled": dataset["labeled"].select(keep.tolist())})


def check_target(
    spec: str, labeled_per_class: int | None = None, image_column: str = "image", label_column: str = "label"
) -> list[str]:
    """Check a `--dataset` value without decoding any image; return the target label names.

    Cheap enough to run before any long work: for a folder it reads the split metadata and the label column only.
    """
    _check_labeled_per_class(DIGITS_LD_LABELED_PER_CLASS if labeled_per_class is None else labeled_per_class)
    if _is_digits_ld(spec):
        from .data.digits_ld import LABEL_NAMES, _parse_setting

        _parse_setting(spec.partition(":")[2] or "MUS")
        return list(LABEL_NAMES)
    return check_dataset(_load_folder(spec), image_column, label_column, labeled_per_class)


def check_dataset(
    dataset, image_column: str = "image", label_column: str = "label", labeled_per_class: int | None = None
) -> list[str]:
    """Validate a target DatasetDict's structure and labels without decoding images; return its label names.

    Raises `ValueError` naming the split and column for: not a DatasetDict, a missing split or column, an empty
    split, an image column that holds no images, a label column that is not a `ClassLabel`, missing (-1) or
    out-of-range labels, a class without any labeled sample, or `labeled_per_class` above what a class has.
    """
    import datasets

    if isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"The dataset is a single Dataset (columns {dataset.column_names}), not a DatasetDict with splits "
            f"{SPLITS}: build one with datasets.DatasetDict(labeled=..., unlabeled=..., test=...)."
        )
    if not isinstance(dataset, (datasets.DatasetDict, dict)):
        raise TypeError(f"Expected a datasets.DatasetDict with splits {SPLITS}; got {type(dataset).__name__}.")
    missing = [s for s in SPLITS if s not in dataset]
    if missing:
        raise ValueError(f"The dataset needs splits {SPLITS}; missing {missing} (it has {list(dataset)}).")
    for split in SPLITS:
        cols = dataset[split].column_names
        needed = [image_column] + ([label_column] if split != "unlabeled" else [])
        absent = [c for c in needed if c not in cols]
        if absent:
            raise ValueError(
                f"Split {split!r} has no column {absent[0]!r} (columns: {cols}); "
                "pass --image_column / --label_column to name yours."
            )
        if len(dataset[split]) == 0:
            raise ValueError(f"Split {split!r} is empty: MRL needs labeled, unlabeled and test samples.")
        image_feature = dataset[split].features[image_column]
        if isinstance(image_feature, (datasets.Value, datasets.ClassLabel, dict)):
            raise ValueError(
                f"Column {image_column!r} of split {split!r} holds {image_feature}, not images: "
                "pass --image_column to name the image column (a datasets.Image feature)."
            )
    feature = dataset["labeled"].features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(
            f"Column {label_column!r} must be a datasets.ClassLabel with class names; got {feature}. Cast it with "
            f"dataset.cast_column({label_column!r}, datasets.ClassLabel(names=[...]))."
        )
    names = list(feature.names)
    for split in ("labeled", "test"):
        test_feature = dataset[split].features[label_column]
        if isinstance(test_feature, datasets.ClassLabel) and list(test_feature.names) != names:
            raise ValueError(
                f"Split {split!r} has label names {list(test_feature.names)[:8]}, the labeled split "
                f"{names[:8]}: all splits must share one ClassLabel."
            )
        labels = np.asarray(dataset[split][label_column], dtype=np.int64)
        bad = (labels < 0) | (labels >= len(names))
        if bad.any():
            raise ValueError(
                f"Split {split!r} has {int(bad.sum())} sample(s) without a valid label in column {label_column!r} "
                f"(e.g. {int(labels[bad][0])}, row {int(np.flatnonzero(bad)[0])}): every {split} sample needs a "
                f"class in [0, {len(names)}); move unlabeled samples to the 'unlabeled' split."
            )
        if split == "labeled":
            counts = np.bincount(labels, minlength=len(names))
            empty = [names[c] for c in np.flatnonzero(counts == 0)]
            if empty:
                raise ValueError(
                    f"Classes {empty[:10]} have no labeled sample; label at least one sample of each class."
                )
            if labeled_per_class is not None:
                _check_labeled_per_class(labeled_per_class)
                c = int(counts.argmin())
                if labeled_per_class > counts[c]:
                    raise ValueError(
                        f"labeled_per_class={labeled_per_class} is more than the labeled split holds: class "
                        f"{names[c]!r} has only {int(counts[c])} labeled sample(s). Lower --labeled_per_class, or "
                        "omit it to use every labeled sample."
                    )
    return names
