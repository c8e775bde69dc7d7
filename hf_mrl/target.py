"""Read a target task (labeled / unlabeled / test splits) from where users keep it into the tensors the trainer uses.

Sources: the embedded Digits-LD benchmark (`digits-ld[:SETTING]`), a `save_to_disk` folder, an image folder, or a
Hub dataset id (`org/name[@revision]`, through `datasets.load_dataset`: cached, so it loads again with
`HF_HUB_OFFLINE=1`). Splits are named with `datasets` slicing (`train[:2%]`).
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import torch

from .images import ImageSet
from .trainer import TargetData

__all__ = [
    "DatasetDescription",
    "check_dataset",
    "check_target",
    "hub_dataset_id",
    "load_target",
    "target_from_datasets",
]

logger = logging.getLogger(__name__)

SPLITS = ("labeled", "unlabeled", "test")
DIGITS_LD_LABELED_PER_CLASS = 10


class DatasetDescription(str):
    """The short description `load_target` returns (a `str`, for cards and metrics), with what was skipped.

    `skipped_images` maps a role (`labeled`, `unlabeled`, `test`) to the rows of that split whose image could not be
    decoded and were left out (only with `skip_bad_images=True`).
    """

    skipped_images: dict[str, list[int]]

    def __new__(cls, text: str, skipped_images: dict[str, list[int]] | None = None):
        skipped = {role: rows for role, rows in (skipped_images or {}).items() if rows}
        if skipped:
            text += f" (skipped {sum(map(len, skipped.values()))} unreadable image(s))"
        self = super().__new__(cls, text)
        self.skipped_images = skipped
        return self

    @property
    def num_skipped_images(self) -> int:
        return sum(len(rows) for rows in self.skipped_images.values())


# ----------------------------------------------------------------------------------------------- images


def _images(ds, column: str, image_size: int, where: str, skip_bad: bool, lazy: bool, num_workers: int):
    """The split's images as an `ImageSet` (lazy) or one uint8 tensor, and the rows that failed to decode.

    Without `skip_bad` a lazy set is not decoded here: an unreadable image raises, naming split and row, when a batch
    first holds it. With `skip_bad` one decoding pass finds such rows, which are left out and returned.
    """
    images = ImageSet(ds, column, image_size, where)
    bad = images.bad_rows(num_workers) if skip_bad else []
    if bad:
        images = images.subset(np.setdiff1d(np.arange(len(images)), bad))
    return (images if lazy else images.materialize()), bad


# ----------------------------------------------------------------------------------------------- labels, domains


def _labels(ds, column: str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(ds[column], dtype=np.int64))


def _hidden_labels(split, column: str, names: list[str]) -> torch.Tensor | None:
    """The unlabeled split's true labels, when it carries valid ones (evaluation only, never training)."""
    import datasets

    if column not in split.column_names or len(split) == 0:
        return None
    feature = split.features[column]
    if isinstance(feature, datasets.ClassLabel):
        if list(feature.names) != names:
            return None
    elif not (isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))):
        return None  # strings, floats...: not class indices
    y = np.asarray([-1 if v is None else v for v in split[column]], dtype=np.int64)
    return torch.as_tensor(y) if int(y.min()) >= 0 and int(y.max()) < len(names) else None


def _domain_kind(feature, column: str, split: str) -> str:
    """`names` (ClassLabel or strings) or `ints` (integer values); anything else is refused."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return "names"
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "names"
        if feature.dtype.startswith(("int", "uint")) or feature.dtype == "bool":
            return "ints"
    raise ValueError(
        f"Domain column {column!r} of split {split!r} holds {feature}: a domain column must hold strings, integers "
        "or a datasets.ClassLabel. Pass domain_column (--domain_column) naming another column."
    )


def _domains(splits: dict, column: str | None) -> tuple[dict[str, torch.Tensor | None], list[str] | None]:
    """Latent-domain labels of each split that has the column (evaluation and oracle routing only).

    Integer domains are kept as they are (negative: unknown). Named domains (strings or a ClassLabel) become indices
    into one list of names shared by all splits: the test split's ClassLabel order when it has one, then the other
    names sorted. None and ClassLabel -1 are unknown (-1).
    """
    import datasets

    present = {r: ds for r, ds in splits.items() if column and column in ds.column_names}
    out: dict[str, torch.Tensor | None] = {r: None for r in splits}
    if not present:
        return out, None
    kinds = {r: _domain_kind(ds.features[column], column, r) for r, ds in present.items()}
    if all(k == "ints" for k in kinds.values()):
        for r, ds in present.items():
            out[r] = torch.as_tensor(np.asarray([-1 if v is None else int(v) for v in ds[column]], dtype=np.int64))
        return out, None
    per_split: dict[str, list[str | None]] = {}
    for r, ds in present.items():
        feature = ds.features[column]
        values = ds[column]
        if isinstance(feature, datasets.ClassLabel):
            per_split[r] = [feature.int2str(int(v)) if v is not None and v >= 0 else None for v in values]
        else:
            per_split[r] = [None if v is None else str(v) for v in values]
    test_feature = present["test"].features[column] if "test" in present else None
    names = list(test_feature.names) if isinstance(test_feature, datasets.ClassLabel) else []
    seen = set(names)
    names += sorted({v for vs in per_split.values() for v in vs if v is not None} - seen)
    index = {n: i for i, n in enumerate(names)}
    for r, vs in per_split.items():
        out[r] = torch.as_tensor(np.asarray([-1 if v is None else index[v] for v in vs], dtype=np.int64))
    return out, names


# ----------------------------------------------------------------------------------------------- conversion


def _convert(
    dataset,
    image_column: str,
    label_column: str,
    domain_column: str | None,
    image_size: int,
    skip_bad_images: bool,
    where: dict[str, str] | None = None,
    lazy: bool = True,
    num_workers: int = 0,
) -> tuple[TargetData, dict[str, list[int]]]:
    check_dataset(dataset, image_column, label_column)
    names = list(dataset["labeled"].features[label_column].names)
    splits, skipped = {}, {}
    images = {}
    for role in SPLITS:
        label = (where or {}).get(role, f"split {role!r}")
        images[role], skipped[role] = _images(
            dataset[role], image_column, image_size, label, skip_bad_images, lazy, num_workers
        )
        ds = dataset[role]
        if skipped[role]:
            bad = set(skipped[role])
            ds = ds.select([i for i in range(len(ds)) if i not in bad])
            logger.warning(
                "Skipped %d unreadable image(s) of %s: rows %s%s",
                len(bad),
                label,
                skipped[role][:20],
                " ..." if len(bad) > 20 else "",
            )
        splits[role] = ds
    domains, domain_names = _domains(splits, domain_column)
    data = TargetData(
        label_names=names,
        labeled_images=images["labeled"],
        labeled_labels=_labels(splits["labeled"], label_column),
        unlabeled_images=images["unlabeled"],
        test_images=images["test"],
        test_labels=_labels(splits["test"], label_column),
        test_domains=domains["test"],
        labeled_domains=domains["labeled"],
        unlabeled_domains=domains["unlabeled"],
        unlabeled_labels=_hidden_labels(splits["unlabeled"], label_column, names),
        domain_names=domain_names if domains["test"] is not None else None,
    )
    return data, skipped


def target_from_datasets(
    dataset,
    image_column: str = "image",
    label_column: str = "label",
    domain_column: str | None = "domain",
    image_size: int = 32,
    skip_bad_images: bool = False,
    lazy: bool = True,
    num_workers: int = 0,
) -> TargetData:
    """Validate and convert a DatasetDict with splits `labeled`, `unlabeled`, `test`.

    The label column must be a `ClassLabel` (its names are the target label names); the unlabeled split needs no
    labels. Images of any size and mode stay in the dataset and are converted to RGB when a batch is read: at
    `image_size` for the student, at their own size for each teacher's processor. The domain column, if present, is
    read for evaluation only; it may hold strings, integers or a `ClassLabel`.

    Args:
        dataset: a `datasets.DatasetDict` with splits `labeled`, `unlabeled`, `test`.
        image_column: the image column (a `datasets.Image` feature, PIL images or HWC arrays).
        label_column: the `ClassLabel` column.
        domain_column: the latent-domain column, when there is one (None: none).
        image_size: side of the square uint8 batches the student reads (a student with its own input size reads
            at that size instead).
        skip_bad_images: leave out images that cannot be decoded (logged; one decoding pass at load) instead of
            raising a `ValueError` that names the split and row.
        lazy: keep the images in the dataset (`ImageSet`s, decoded per batch); False decodes every image once into
            uint8 tensors at `image_size` (small data only).
        num_workers: processes of the decoding pass of `skip_bad_images`.
    """
    options = dict(lazy=lazy, num_workers=num_workers)
    return _convert(dataset, image_column, label_column, domain_column, image_size, skip_bad_images, **options)[0]


# ----------------------------------------------------------------------------------------------- sources


def _is_digits_ld(spec: str) -> bool:
    return spec == "digits-ld" or spec.startswith("digits-ld:")


def _check_labeled_per_class(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"labeled_per_class must be a positive integer; got {n!r}.")


def _split_names(split_spec: str) -> list[str]:
    """The split names in a `datasets` split spec: `train[:2%]+test` -> ['train', 'test']."""
    return [re.split(r"[\[(]", part, maxsplit=1)[0].strip() for part in split_spec.split("+")]


def _check_split_specs(splits: dict[str, str]) -> None:
    for role, value in splits.items():
        if not isinstance(value, str) or not value.strip() or not all(_split_names(value)):
            raise ValueError(
                f"{role}_split must be a split name with optional slicing, such as 'train' or 'train[:2%]'; got "
                f"{value!r}."
            )
    if splits["labeled"] == splits["test"]:
        logger.warning(
            "labeled_split and test_split are both %r: the test accuracy is measured on training data.",
            splits["test"],
        )


def _is_saved_dataset(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("dataset_dict.json", "state.json"))


def _load_saved(spec: str):
    import datasets

    try:
        return datasets.load_from_disk(spec)
    except IndexError:  # datasets cannot reload a split saved empty (no data file): name that split
        empty = [s for s in _saved_splits(spec) if _saved_split_is_empty(os.path.join(spec, s))]
        if empty:
            raise ValueError(
                f"Split {empty[0]!r} of {spec!r} is empty: MRL needs labeled, unlabeled and test samples."
            ) from None
        raise
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(
            f"Dataset folder {spec!r} could not be read ({err}): pass a folder written by DatasetDict.save_to_disk, "
            "an image folder, or a Hub dataset id."
        ) from None


def _saved_splits(folder: str) -> list[str]:
    import json

    try:
        with open(os.path.join(folder, "dataset_dict.json"), encoding="utf-8") as f:
            return list(json.load(f)["splits"])
    except (OSError, ValueError, KeyError, TypeError):
        return list(SPLITS)


def _saved_split_is_empty(folder: str) -> bool:
    import json

    try:
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
            return not json.load(f).get("_data_files")
    except (OSError, ValueError, AttributeError):
        return False


def _load_image_folder(folder: str, splits: dict[str, str]):
    """An image folder: `<split>/<class>/<image>` for each named split (the unlabeled one needs no class folders),
    or any layout `datasets.load_dataset("imagefolder", data_dir=...)` reads (`train/`, `test/`...)."""
    import datasets

    named = {role: _split_names(value) for role, value in splits.items()}
    own = [n for n in dict.fromkeys(sum(named.values(), [])) if os.path.isdir(os.path.join(folder, n))]
    try:
        if not own:
            return datasets.load_dataset("imagefolder", data_dir=folder)
        # Class names come from the folders of the labeled and test splits together, so that both share one
        # ClassLabel; a split only the unlabeled role reads is loaded on its own, without labels.
        labeled = [n for n in own if n in named["labeled"] + named["test"]]
        unlabeled_only = [n for n in own if n not in labeled]
        parts = {}
        if labeled:
            files = {n: os.path.join(folder, n, "**") for n in labeled}
            parts.update(datasets.load_dataset("imagefolder", data_files=files))
        if unlabeled_only:
            files = {n: os.path.join(folder, n, "**") for n in unlabeled_only}
            parts.update(datasets.load_dataset("imagefolder", data_files=files, drop_labels=True))
        return datasets.DatasetDict(parts)
    except (FileNotFoundError, ValueError) as err:  # EmptyDatasetError is a FileNotFoundError
        raise ValueError(
            f"Folder {folder!r} is neither a save_to_disk dataset (no dataset_dict.json) nor an image folder "
            f"datasets can read ({type(err).__name__}: {err}). An image folder holds <split>/<class>/<image> files, "
            "e.g. labeled/cat/1.png, unlabeled/2.png, test/cat/3.png."
        ) from None


def _parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    from huggingface_hub.utils import validate_repo_id

    name, sep, revision = spec.partition("@")
    if sep and not revision:
        return None
    try:
        validate_repo_id(name)
    except ValueError:
        return None
    return name, revision or None


def _load_hub(spec: str, name: str, revision: str | None):
    import datasets
    from datasets import config as ds_config
    from datasets.exceptions import DatasetNotFoundError

    try:
        dataset = datasets.load_dataset(name, revision=revision)
    except DatasetNotFoundError as err:
        raise ValueError(
            f"Dataset {spec!r} is not a local folder, nor a dataset on the Hub ({ds_config.HF_ENDPOINT}) that you can "
            f"access: {err} Check the id and revision (a private or gated dataset needs a token)."
        ) from None
    except ConnectionError as err:
        if ds_config.HF_HUB_OFFLINE:
            raise ValueError(
                f"Dataset {spec!r} is not in the datasets cache ({ds_config.HF_DATASETS_CACHE}) and HF_HUB_OFFLINE=1: "
                "run once online to cache it."
            ) from None
        raise ValueError(f"Dataset {spec!r} could not be fetched from the Hub: {err}") from None
    if isinstance(dataset, datasets.Dataset):  # a builder with one unnamed split
        dataset = datasets.DatasetDict(train=dataset)
    return dataset


def _open(spec: str, splits: dict[str, str]):
    """The DatasetDict a `--dataset` value names: a save_to_disk folder, an image folder or a Hub dataset id."""
    if os.path.isdir(spec):
        return _load_saved(spec) if _is_saved_dataset(spec) else _load_image_folder(spec, splits)
    hub = None if os.path.exists(spec) else _parse_hub_id(spec)
    if hub is None:
        raise ValueError(
            f"Unknown dataset {spec!r}: use 'digits-ld[:SETTING]', a folder written by DatasetDict.save_to_disk, an "
            "image folder, or a Hub dataset id 'org/name[@revision]'."
        )
    return _load_hub(spec, *hub)


def _select(dataset, spec: str, splits: dict[str, str]):
    """The `labeled` / `unlabeled` / `test` DatasetDict that the split specs (with `datasets` slicing) select."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"{spec!r} holds a single Dataset (columns {dataset.column_names}), not a DatasetDict with splits: save "
            "a datasets.DatasetDict(labeled=..., unlabeled=..., test=...) instead."
        )
    available = list(dataset)
    sizes = {name: len(ds) for name, ds in dataset.items()}
    roles = {}
    for role, value in splits.items():
        for name in _split_names(value):
            if name not in dataset:
                example = available[0] if available else "train"
                raise ValueError(
                    f"Dataset {spec!r} has no split {name!r} (named by {role}_split={value!r}); its splits are "
                    f"{available}. Pass {role}_split (--{role}_split) naming one of them, with optional slicing such "
                    f"as '{example}[:10%]'."
                )
        if value in dataset:
            roles[role] = dataset[value]
            continue
        try:
            instructions = datasets.ReadInstruction.from_spec(value).to_absolute(sizes)
        except (ValueError, AssertionError) as err:
            raise ValueError(
                f"{role}_split={value!r} is not a valid split spec ({err}): write e.g. 'train', 'train[:2%]', "
                "'train[100:200]' or 'train[:50%]+test'."
            ) from None
        parts = [dataset[i.splitname].select(range(i.from_, i.to)) for i in instructions]
        roles[role] = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return datasets.DatasetDict(roles)


def _resolve(spec: str, splits: dict[str, str]):
    return _select(_open(spec, splits), spec, splits)


def _check_domain_column(dataset, column: str | None) -> None:
    """An explicitly named domain column must exist in the test split (where it is read) and have a usable type."""
    if column is None:
        return
    cols = dataset["test"].column_names
    if column not in cols:
        raise ValueError(
            f"The test split has no domain column {column!r} (columns: {cols}); pass domain_column "
            "(--domain_column) naming the column that holds each sample's latent domain, or leave it unset."
        )
    for role in SPLITS:
        if column in dataset[role].column_names:
            _domain_kind(dataset[role].features[column], column, role)


def _default_domain_column(dataset) -> str | None:
    """`domain` where a split has such a column of a usable type; an unusable one is ignored with a warning."""
    having = [role for role in SPLITS if "domain" in dataset[role].column_names]
    try:
        for role in having:
            _domain_kind(dataset[role].features["domain"], "domain", role)
    except ValueError as err:
        logger.warning("Ignoring the 'domain' column: %s", err)
        return None
    return "domain" if having else None


def _where(spec: str, splits: dict[str, str]) -> dict[str, str]:
    return {role: f"split {value!r} ({role} split) of {spec!r}" for role, value in splits.items()}


def load_target(
    spec: str,
    labeled_per_class: int | None = None,
    seed: int = 0,
    *,
    image_column: str = "image",
    label_column: str = "label",
    domain_column: str | None = None,
    image_size: int = 32,
    labeled_split: str = "labeled",
    unlabeled_split: str = "unlabeled",
    test_split: str = "test",
    skip_bad_images: bool = False,
    lazy: bool | None = None,
    num_workers: int = 0,
) -> tuple[TargetData, DatasetDescription]:
    """Load a target task from `digits-ld[:SETTING]`, a `save_to_disk` folder, an image folder or a Hub dataset id.

    Args:
        spec: `digits-ld[:SETTING]` (the embedded benchmark), a folder written by `DatasetDict.save_to_disk`, an
            image folder (`<split>/<class>/<image>`; the unlabeled split needs no class folders), or a Hub dataset
            `org/name[@revision]` (read with `datasets.load_dataset`, cached: it loads with `HF_HUB_OFFLINE=1`
            after one online run).
        labeled_per_class: draw that many labeled samples per class (seeded): from the benchmark's target-train
            part (default 10), or from the labeled split (default: all of it).
        seed: the draw's seed.
        image_column, label_column: the columns of images and of `ClassLabel` labels (the unlabeled split may
            lack labels).
        domain_column: a latent-domain column (strings, integers or a `ClassLabel`), read for evaluation only. By
            default a column named `domain`, where there is one; a named column must exist in the test split.
        image_size: side of the square RGB uint8 images (any input size and mode is converted).
        labeled_split, unlabeled_split, test_split: the splits of each role, with `datasets` slicing
            (`train[:2%]`, `train[2%:]+validation`).
        skip_bad_images: leave out images that cannot be decoded (counted in the description's `skipped_images`;
            one decoding pass at load) instead of raising a `ValueError` that names split and row.
        lazy: keep images in the dataset's Arrow table and decode them per batch (`ImageSet`); the default for
            every source but the embedded 32 px Digits-LD, which is decoded once into tensors.
        num_workers: processes of the decoding pass of `skip_bad_images`.

    Returns:
        `(data, description)`: the `TargetData`, and a `DatasetDescription` (a `str` for cards and metrics, with
        `skipped_images` and `num_skipped_images`).

    >>> data, desc = load_target("org/pets@v1", labeled_split="train[:2%]", unlabeled_split="train[2%:]")  # doctest: +SKIP
    """
    splits = {"labeled": labeled_split, "unlabeled": unlabeled_split, "test": test_split}
    _check_split_specs(splits)
    options = dict(image_column=image_column, label_column=label_column, image_size=image_size)
    if _is_digits_ld(spec):
        from .data import load_digits_ld

        _digits_ld_defaults(splits)
        setting = spec.partition(":")[2] or "MUS"
        n = DIGITS_LD_LABELED_PER_CLASS if labeled_per_class is None else labeled_per_class
        _check_labeled_per_class(n)
        dd = load_digits_ld(setting, labeled_per_class=n, seed=seed)
        options["lazy"] = False if lazy is None else lazy
        data, _ = _convert(dd, domain_column=domain_column or "domain", skip_bad_images=False, **options)
        return data, DatasetDescription(f"Digits-LD {setting} ({n} labels per class)")
    dd = _resolve(spec, splits)
    check_dataset(dd, image_column, label_column, labeled_per_class)
    _check_domain_column(dd, domain_column)
    if labeled_per_class is not None:
        dd = _subsample_labeled(dd, label_column, labeled_per_class, seed)
    column = domain_column or _default_domain_column(dd)
    options |= dict(lazy=True if lazy is None else lazy, num_workers=num_workers)
    data, skipped = _convert(
        dd, domain_column=column, skip_bad_images=skip_bad_images, where=_where(spec, splits), **options
    )
    default = all(splits[r] == r for r in SPLITS)
    text = spec if default else f"{spec} (labeled {labeled_split}, unlabeled {unlabeled_split}, test {test_split})"
    return data, DatasetDescription(text, skipped)


def _digits_ld_defaults(splits: dict[str, str]) -> None:
    if any(splits[r] != r for r in SPLITS):
        raise ValueError(
            f"The embedded Digits-LD benchmark has fixed splits; got labeled_split={splits['labeled']!r}, "
            f"unlabeled_split={splits['unlabeled']!r}, test_split={splits['test']!r}. Leave them unset."
        )


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
    spec: str,
    labeled_per_class: int | None = None,
    image_column: str = "image",
    label_column: str = "label",
    *,
    domain_column: str | None = None,
    labeled_split: str = "labeled",
    unlabeled_split: str = "unlabeled",
    test_split: str = "test",
    training_domains: bool = False,
) -> list[str]:
    """Check a `--dataset` value without decoding any image; return the target label names.

    Cheap enough to run before any long work: it reads the split metadata and the label and domain columns only
    (a Hub dataset is downloaded into the datasets cache once, which `load_target` then reuses). Arguments as in
    `load_target`; `training_domains=True` also requires the domain column in the labeled and unlabeled splits (oracle
    routing reads it there).
    """
    splits = {"labeled": labeled_split, "unlabeled": unlabeled_split, "test": test_split}
    _check_split_specs(splits)
    _check_labeled_per_class(DIGITS_LD_LABELED_PER_CLASS if labeled_per_class is None else labeled_per_class)
    if _is_digits_ld(spec):
        from .data.digits_ld import LABEL_NAMES, _parse_setting

        _digits_ld_defaults(splits)
        _parse_setting(spec.partition(":")[2] or "MUS")
        return list(LABEL_NAMES)
    dd = _resolve(spec, splits)
    names = check_dataset(dd, image_column, label_column, labeled_per_class)
    _check_domain_column(dd, domain_column)
    if training_domains:
        column = domain_column or "domain"
        lacking = [splits[r] for r in ("labeled", "unlabeled") if column not in dd[r].column_names]
        if lacking:
            raise ValueError(
                f"Oracle routing reads the latent domain of the training data, but split(s) {lacking} of {spec!r} have "
                f"no {column!r} column; it is a reference for data with known domains (pass domain_column / "
                "--domain_column if yours has another name)."
            )
    return names


def hub_dataset_id(spec: str) -> tuple[str, str | None] | None:
    """`(repo_id, revision)` when `spec` names a Hub dataset (for cards: `datasets: [repo_id]`), else None.

    >>> hub_dataset_id("org/pets@v1")
    ('org/pets', 'v1')
    """
    if _is_digits_ld(spec) or os.path.exists(spec):
        return None
    return _parse_hub_id(spec)


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
