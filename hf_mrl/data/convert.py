"""From `datasets` splits to `TargetData`: the structure and label checks, images (decoded or lazy), labels, hidden labels and domains."""

from __future__ import annotations

import logging

import numpy as np
import torch

from hf_mrl.data.images import ImageSet
from hf_mrl.data.types import TargetData

logger = logging.getLogger(__name__)


SPLITS = ("labeled", "unlabeled", "test")


DIGITS_LD_LABELED_PER_CLASS = 10


CARVED_LABELED_PER_CLASS = 10  # labeled and unlabeled roles share a split and no count was given


DEFAULT_TEST_SIZE = 0.2


class DatasetDescription(str):
    """The short description `load_target` returns (a `str`, for cards and metrics), with what was skipped.

    `skipped_images` maps a role (`labeled`, `unlabeled`, `test`) to the rows of that split whose image could not be
    decoded and were left out (only with `skip_bad_images=True`). `splits` records the parts: the split each role
    read, which split was carved, the seed and test size, the size and classes of each part, and how many labeled rows
    are also test rows (`labeled_test_overlap`, 0 unless `allow_test_overlap`).
    """

    skipped_images: dict[str, list[int]]
    splits: dict | None

    def __new__(cls, text: str, skipped_images: dict[str, list[int]] | None = None, splits: dict | None = None):
        skipped = {role: rows for role, rows in (skipped_images or {}).items() if rows}
        if skipped:
            text += f" (skipped {sum(map(len, skipped.values()))} unreadable image(s))"
        self = super().__new__(cls, text)
        self.skipped_images = skipped
        self.splits = splits  # how the parts were made: see `_carve` (metrics.json `splits`)
        return self

    @property
    def num_skipped_images(self) -> int:
        return sum(len(rows) for rows in self.skipped_images.values())


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


def _check_labeled_per_class(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"labeled_per_class must be a positive integer; got {n!r}.")


def check_dataset(
    dataset,
    image_column: str = "image",
    label_column: str = "label",
    labeled_per_class: int | None = None,
    *,
    missing_hint: str = "",
) -> list[str]:
    """Validate a target DatasetDict's structure and labels without decoding images; return its label names.

    Raises `ValueError` naming the split and column for: not a DatasetDict, a missing split or column, an empty
    split, an image column that holds no images, a label column that is not a `ClassLabel`, missing (-1) or
    out-of-range labels, a class without any labeled sample (its message ends with `missing_hint`), or
    `labeled_per_class` above what a class has.
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
                    + missing_hint
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
