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


def _check_split_specs(splits: dict[str, str | None]) -> None:
    for role, value in splits.items():
        if value is None:  # chosen from the dataset's splits (`_default_splits`)
            continue
        if not isinstance(value, str) or not value.strip() or not all(_split_names(value)):
            raise ValueError(
                f"{role}_split must be a split name with optional slicing, such as 'train' or 'train[:2%]'; got "
                f"{value!r}."
            )


def check_test_size(value) -> float | int:
    """`test_size` as a fraction in (0, 1) or a count >= 1 (as `datasets.Dataset.train_test_split` takes it)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                value = text
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"test_size must be a fraction in (0, 1) or a number of samples; got {value!r}.")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        if not 0 < value < 1:
            raise ValueError(f"test_size must be a fraction in (0, 1) or a number of samples; got {value!r}.")
        return float(value)
    if value < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1) or a number of samples >= 1; got {value!r}.")
    return int(value)


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


# Folder names `datasets`' imagefolder builder reads as splits, and this toolkit's own role names.
_SPLIT_FOLDERS = ("train", "training", "validation", "valid", "val", "dev", "test", "testing", "eval", *SPLITS)


def _load_image_folder(folder: str, splits: dict[str, str | None]):
    """An image folder: `<split>/<class>/<image>` for each split folder (`train/`, `test/`, `labeled/`, `unlabeled/`,
    or any folder a split flag names), or `<class>/<image>` as one `train` split. A split folder with no class
    folders, or one read only by the unlabeled role, is loaded without labels."""
    import datasets

    named = {role: _split_names(value) if value else [] for role, value in splits.items()}
    wanted = set(sum(named.values(), [])) | set(_SPLIT_FOLDERS)
    own = sorted(n for n in os.listdir(folder) if n in wanted and os.path.isdir(os.path.join(folder, n)))

    def has_classes(name: str) -> bool:
        return any(e.is_dir() for e in os.scandir(os.path.join(folder, name)))

    try:
        if not own:
            return datasets.load_dataset("imagefolder", data_dir=folder)
        # Class names come from the folders of all labeled splits together, so that they share one ClassLabel.
        only_unlabeled = set(named["unlabeled"]) - set(named["labeled"] + named["test"])
        unlabeled = [n for n in own if n in only_unlabeled or n == "unlabeled" or not has_classes(n)]
        labeled = [n for n in own if n not in unlabeled]
        parts = {}
        if labeled:
            files = {n: os.path.join(folder, n, "**") for n in labeled}
            parts.update(datasets.load_dataset("imagefolder", data_files=files))
        if unlabeled:
            files = {n: os.path.join(folder, n, "**") for n in unlabeled}
            parts.update(datasets.load_dataset("imagefolder", data_files=files, drop_labels=True))
        return datasets.DatasetDict({n: parts[n] for n in own if n in parts})
    except (FileNotFoundError, ValueError) as err:  # EmptyDatasetError is a FileNotFoundError
        raise ValueError(
            f"Folder {folder!r} is neither a save_to_disk dataset (no dataset_dict.json) nor an image folder "
            f"datasets can read ({type(err).__name__}: {err}). An image folder holds <split>/<class>/<image> files, "
            "e.g. train/cat/1.png, test/cat/3.png (or labeled/cat/1.png, unlabeled/2.png, test/cat/3.png)."
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


def _load_hub(spec: str, name: str, revision: str | None, config: str | None = None):
    import datasets
    from datasets import config as ds_config
    from datasets.exceptions import DatasetNotFoundError

    try:
        dataset = datasets.load_dataset(name, config, revision=revision)
    except DatasetNotFoundError as err:
        raise ValueError(
            f"Dataset {spec!r} is not a local folder, nor a dataset on the Hub ({ds_config.HF_ENDPOINT}) that you can "
            f"access: {err} Check the id and revision (a private or gated dataset needs a token)."
        ) from None
    except ConnectionError as err:
        import difflib

        # A bare name is a valid Hub id: a folder here named almost like it is the likelier meaning.
        here = [e.name for e in os.scandir(".") if e.is_dir()] if "/" not in name else []
        close = difflib.get_close_matches(name, here, n=1, cutoff=0.75)
        hint = f" (and there is no such folder {name!r} here; did you mean {close[0]!r}?)" if close else ""
        if ds_config.HF_HUB_OFFLINE:
            raise ValueError(
                f"Dataset {spec!r} is not in the datasets cache ({ds_config.HF_DATASETS_CACHE}) and HF_HUB_OFFLINE=1: "
                f"run once online to cache it{hint}."
            ) from None
        raise ValueError(f"Dataset {spec!r} could not be fetched from the Hub: {err}{hint}") from None
    if isinstance(dataset, datasets.Dataset):  # a builder with one unnamed split
        dataset = datasets.DatasetDict(train=dataset)
    return dataset


def _open(spec: str, splits: dict[str, str | None], config: str | None = None):
    """The DatasetDict a `--dataset` value names: a save_to_disk folder, an image folder or a Hub dataset id."""
    if os.path.isdir(spec):
        return _load_saved(spec) if _is_saved_dataset(spec) else _load_image_folder(spec, splits)
    from .paths import missing_folder_message

    missing = missing_folder_message(spec.split("@", 1)[0])
    if missing:  # a typo in a local path, not a Hub id that is missing from the Hub or the cache
        raise ValueError(f"Dataset {spec!r}: {missing}.")
    hub = None if os.path.exists(spec) else _parse_hub_id(spec)
    if hub is None:
        raise ValueError(
            f"Unknown dataset {spec!r}: use 'digits-ld[:SETTING]', a folder written by DatasetDict.save_to_disk, an "
            "image folder, or a Hub dataset id 'org/name[@revision]'."
        )
    return _load_hub(spec, *hub, config)


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
    # A row's identity is its position in the dataset (splits laid end to end), whatever spec selected it: overlap
    # between roles is found from these, not from the split strings.
    offsets = dict(zip(available, np.cumsum([0] + [sizes[n] for n in available]).tolist(), strict=False))
    roles, rows = {}, {}
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
            rows[role] = offsets[value] + np.arange(sizes[value], dtype=np.int64)
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
        rows[role] = np.concatenate(
            [offsets[i.splitname] + np.arange(i.from_, i.to, dtype=np.int64) for i in instructions]
        )
    return datasets.DatasetDict(roles), rows, offsets


def _default_splits(dataset, spec: str, splits: dict[str, str | None]) -> dict[str, str]:
    """Fill the roles left unset from the dataset's own splits.

    A split named after a role serves it (`labeled`, `unlabeled`, `test`); otherwise the labeled role reads `train`
    (or the only split), the unlabeled role the same split, and the test role `test` when there is one, else the
    labeled split too. Roles that name the same split are carved from it (`_carve`).
    """
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return {r: v or r for r, v in splits.items()}  # `_select` names the problem
    available = list(dataset)
    out = {r: (v if v is not None else (r if r in available else None)) for r, v in splits.items()}
    if out["labeled"] is None:
        if "train" in available or len(available) == 1:
            out["labeled"] = "train" if "train" in available else available[0]
        else:
            example = available[0] if available else "train"
            raise ValueError(
                f"Dataset {spec!r} has splits {available}, none named 'labeled' or 'train': pass --labeled_split "
                f"naming the split with labels, e.g. {example!r}."
            )
    if out["unlabeled"] is None:
        out["unlabeled"] = out["labeled"]
    if out["test"] is None:
        out["test"] = "test" if "test" in available else out["labeled"]
    return out


def _stratified_take(strata: np.ndarray, n_take: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of `n_take` items drawn so that each stratum keeps its share (largest remainders, seeded)."""
    keys, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    quota = counts * n_take / len(strata)
    take = np.floor(quota).astype(np.int64)
    short = n_take - int(take.sum())
    if short:  # the strata with the largest remainders (ties broken at random) get one more
        order = np.lexsort((rng.random(len(keys)), -(quota - take)))
        take[order[:short]] += 1
    chosen = [rng.permutation(np.flatnonzero(inverse == k))[: take[k]] for k in range(len(keys))]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _domain_values(ds, column: str | None) -> list[str] | None:
    import datasets

    if not column or column not in ds.column_names:
        return None
    feature = ds.features[column]
    values = ds[column]
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(int(v)) if v is not None and v >= 0 else "" for v in values]
    return ["" if v is None else str(v) for v in values]


def _shares(values: list[str]) -> dict[str, float]:
    names, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    return {str(n): round(float(c) / max(1, len(values)), 4) for n, c in zip(names, counts, strict=True)}


def _carve(dd, rows, splits, label_column, domain_column, test_size, labeled_per_class, seed):
    """Split the roles that name one split into disjoint parts: a test part of `test_size`, stratified by label and
    domain; `labeled_per_class` per class from the rest (all of the rest when no unlabeled role shares the split and
    no count is given); the rest unlabeled. Returns the new DatasetDict and rows, and the roles of each carved split.
    """
    import datasets

    groups: dict[str, list[str]] = {}
    for role in SPLITS:
        groups.setdefault(splits[role].strip(), []).append(role)
    carved = {}
    for spec, group in groups.items():
        if len(group) < 2:
            continue
        ds, ids = dd[group[0]], rows[group[0]]
        where = f"split {spec!r} (read by the {', '.join(group)} roles)"
        if label_column not in ds.column_names or not isinstance(ds.features[label_column], datasets.ClassLabel):
            return dd, rows, carved  # check_dataset names the problem
        names = list(ds.features[label_column].names)
        labels = np.asarray([-1 if v is None else v for v in ds[label_column]], dtype=np.int64)
        rng = np.random.default_rng(seed)
        valid = np.flatnonzero(labels >= 0)  # rows without a label can only be unlabeled
        part: dict[str, np.ndarray] = {}
        rest = valid
        if "test" in group:
            n_test = test_size if isinstance(test_size, int) else int(round(test_size * len(valid)))
            if not 1 <= n_test < len(valid):
                raise ValueError(
                    f"test_size={test_size} leaves no test or no training part of {where}, which has {len(valid)} "
                    "labeled rows: pass --test_size as a fraction in (0, 1) or a smaller count."
                )
            strata = labels[valid].astype(str)
            domains = _domain_values(ds, domain_column)
            if domains is not None:
                strata = np.char.add(np.char.add(strata, "|"), np.asarray(domains, dtype=str)[valid])
            part["test"] = valid[_stratified_take(strata, n_test, rng)]
            rest = np.setdiff1d(valid, part["test"])
        if "labeled" in group:
            n = labeled_per_class
            if n is None and "unlabeled" in group:
                n = CARVED_LABELED_PER_CLASS
                logger.info(
                    "labeled_per_class not set: drawing %d labeled samples per class from %s; the rest is unlabeled.",
                    n,
                    where,
                )
            if n is None:
                part["labeled"] = rest
            else:
                _check_labeled_per_class(n)
                counts = np.bincount(labels[rest], minlength=len(names))
                c = int(counts.argmin())
                if counts[c] < n:
                    left = " after the test part" if "test" in group else ""
                    raise ValueError(
                        f"labeled_per_class={n} is more than {where} holds{left}: class {names[c]!r} has "
                        f"{int(counts[c])} sample(s). Lower --labeled_per_class"
                        + (" or --test_size." if "test" in group else ".")
                    )
                draws = [rng.choice(rest[labels[rest] == k], size=n, replace=False) for k in range(len(names))]
                part["labeled"] = np.sort(np.concatenate(draws))
        if "unlabeled" in group:
            taken = np.concatenate([part.get("test", []), part.get("labeled", [])]).astype(np.int64)
            part["unlabeled"] = np.setdiff1d(np.arange(len(ds)), taken)
        for role, idx in part.items():
            dd[role] = ds.select(idx.tolist())
            rows[role] = ids[idx]
        carved[spec] = group
    return dd, rows, carved


def _split_record(dd, rows, splits, carved, label_column, domain_column, seed, test_size, whole) -> dict:
    """metrics.json `splits`: what each role read and holds, and the labeled/test overlap by row identity."""
    record = {
        "labeled_split": splits["labeled"],
        "unlabeled_split": splits["unlabeled"],
        "test_split": splits["test"],
        "carved": dict(carved) or None,
        "seed": seed,
        "test_size": test_size if any("test" in g for g in carved.values()) else None,
        "sizes": {role: len(dd[role]) for role in SPLITS},
        "labeled_test_overlap": int(len(np.intersect1d(rows["labeled"], rows["test"]))),
        "unlabeled_test_overlap": int(len(np.intersect1d(rows["unlabeled"], rows["test"]))),
    }
    names = list(dd["labeled"].features[label_column].names)
    for role in ("labeled", "test"):
        counts = np.bincount(np.asarray(dd[role][label_column], dtype=np.int64).clip(0), minlength=len(names))
        record[f"{role}_classes"] = {n: int(c) for n, c in zip(names, counts, strict=True)}
    shares = {}
    for spec in carved:
        values = _domain_values(whole[spec], domain_column)
        if values is not None:
            shares[f"whole {spec}"] = _shares(values)
    for role in SPLITS:
        values = _domain_values(dd[role], domain_column)
        if values is not None:
            shares[role] = _shares(values)
    if shares:
        record["domain_shares"] = shares
    return record


def _overlap_error(spec, splits, offsets, overlap) -> ValueError:
    first = int(overlap[0])
    name = max((n for n, o in offsets.items() if o <= first), key=lambda n: offsets[n])
    return ValueError(
        f"{len(overlap)} row(s) of {spec!r} are in both the labeled part (labeled_split={splits['labeled']!r}) and the "
        f"test part (test_split={splits['test']!r}), e.g. row {first - offsets[name]} of split {name!r}: accuracy "
        "on them is not a test accuracy. Name disjoint splits or slices, or let the labeled, unlabeled and test roles "
        "name the same split to have it carved into disjoint parts (--test_size, --labeled_per_class); "
        "--allow_test_overlap measures on the overlapping rows anyway and reports it as such, not as test accuracy."
    )


def _roles(
    spec,
    splits,
    *,
    config,
    image_column,
    label_column,
    domain_column,
    labeled_per_class,
    seed,
    test_size,
    allow_test_overlap,
):
    """The labeled / unlabeled / test DatasetDict of a non-embedded `--dataset`: selected, checked, carved, and its
    split record; refuses labeled rows that are also test rows unless `allow_test_overlap`."""
    test_size = check_test_size(test_size)
    dataset = _open(spec, splits, config)
    splits = _default_splits(dataset, spec, splits)
    dd, rows, offsets = _select(dataset, spec, splits)
    whole = {}
    for role in SPLITS:
        whole.setdefault(splits[role].strip(), dd[role])
    # Before the label checks, so that overlapping slices are named as such; a labeled split shared with another
    # role is carved first (the overlap check after carving counts what is left).
    if all(splits["labeled"].strip() != splits[r].strip() for r in ("unlabeled", "test")):
        overlap = np.intersect1d(rows["labeled"], rows["test"])
        if len(overlap) and not allow_test_overlap:
            raise _overlap_error(spec, splits, offsets, overlap)
    sliced = "[" in splits["labeled"]
    hint = (
        f" labeled_split={splits['labeled']!r} is a slice, and slices are not stratified (on data sorted by class or "
        "domain a slice misses classes): let the labeled, unlabeled and test roles name the same split to have it "
        "carved, stratified (--test_size, --labeled_per_class)."
        if sliced
        else ""
    )
    check_dataset(dd, image_column, label_column, missing_hint=hint)  # structure first: carving reads the labels
    _check_domain_column(dd, domain_column)
    column = domain_column or _default_domain_column(dd)
    dd, rows, carved = _carve(dd, rows, splits, label_column, column, test_size, labeled_per_class, seed)
    carved_labeled = any("labeled" in g for g in carved.values())
    check_dataset(dd, image_column, label_column, None if carved_labeled else labeled_per_class)
    if labeled_per_class is not None and not carved_labeled:
        dd, keep = _subsample_labeled(dd, label_column, labeled_per_class, seed)
        rows["labeled"] = rows["labeled"][keep]
    record = _split_record(dd, rows, splits, carved, label_column, column, seed, test_size, whole)
    overlap = np.intersect1d(rows["labeled"], rows["test"])
    if len(overlap) and not allow_test_overlap:
        raise _overlap_error(spec, splits, offsets, overlap)
    if len(overlap):
        logger.warning(
            "%d labeled row(s) are also test rows (--allow_test_overlap): the accuracies are not test accuracies.",
            len(overlap),
        )
    return dd, splits, record, column


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
    labeled_split: str | None = None,
    unlabeled_split: str | None = None,
    test_split: str | None = None,
    test_size: float | int = DEFAULT_TEST_SIZE,
    allow_test_overlap: bool = False,
    dataset_config_name: str | None = None,
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
            part (default 10), from a split the labeled role shares with the unlabeled one (default 10), or from the
            labeled split (default: all of it).
        seed: the seed of the draws (the labeled samples, the carved test part).
        image_column, label_column: the columns of images and of `ClassLabel` labels (the unlabeled split may
            lack labels).
        domain_column: a latent-domain column (strings, integers or a `ClassLabel`), read for evaluation only. By
            default a column named `domain`, where there is one; a named column must exist in the test split.
        image_size: side of the square RGB uint8 images (any input size and mode is converted).
        labeled_split, unlabeled_split, test_split: the splits of each role, with `datasets` slicing
            (`train[:2%]`, `train[2%:]+validation`). Unset: the split named after the role, else `train` (or the only
            split) for labeled and unlabeled, and `test` (else that same split) for test. Roles that name the same
            split are carved from it into disjoint parts: a test part of `test_size` (stratified by label and domain),
            `labeled_per_class` labeled samples per class from the rest, the rest unlabeled.
        test_size: the carved test part: a fraction in (0, 1) or a number of samples.
        allow_test_overlap: accept labeled rows that are also test rows (found by row identity, however the splits
            are named or sliced; refused by default); the description's `splits` records how many.
        dataset_config_name: the configuration of a Hub dataset (`datasets.load_dataset(name, config)`).
        skip_bad_images: leave out images that cannot be decoded (counted in the description's `skipped_images`;
            one decoding pass at load) instead of raising a `ValueError` that names split and row.
        lazy: keep images in the dataset's Arrow table and decode them per batch (`ImageSet`); the default for
            every source but the embedded 32 px Digits-LD, which is decoded once into tensors.
        num_workers: processes of the decoding pass of `skip_bad_images`.

    Returns:
        `(data, description)`: the `TargetData`, and a `DatasetDescription` (a `str` for cards and metrics, with
        `skipped_images`, `num_skipped_images` and the `splits` record).

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
    dd, splits, record, column = _roles(
        spec,
        splits,
        config=dataset_config_name,
        image_column=image_column,
        label_column=label_column,
        domain_column=domain_column,
        labeled_per_class=labeled_per_class,
        seed=seed,
        test_size=test_size,
        allow_test_overlap=allow_test_overlap,
    )
    options |= dict(lazy=True if lazy is None else lazy, num_workers=num_workers)
    data, skipped = _convert(
        dd, domain_column=column, skip_bad_images=skip_bad_images, where=_where(spec, splits), **options
    )
    return data, DatasetDescription(_describe(spec, splits, record, dataset_config_name), skipped, record)


def _describe(spec: str, splits: dict[str, str], record: dict, config: str | None) -> str:
    name = spec if config is None else f"{spec} ({config})"
    if all(splits[r] == r for r in SPLITS):
        return name
    if record["carved"] and len(record["carved"]) == 1 and len(next(iter(record["carved"].values()))) == 3:
        sizes = record["sizes"]
        return (
            f"{name} (split {splits['test']!r} carved: {sizes['labeled']} labeled, {sizes['unlabeled']} unlabeled, "
            f"{sizes['test']} test)"
        )
    return f"{name} (labeled {splits['labeled']}, unlabeled {splits['unlabeled']}, test {splits['test']})"


def _digits_ld_defaults(splits: dict[str, str | None]) -> None:
    if any(splits[r] not in (None, r) for r in SPLITS):
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
    return datasets.DatasetDict({**dataset, "labeled": dataset["labeled"].select(keep.tolist())}), keep


def check_target(
    spec: str,
    labeled_per_class: int | None = None,
    image_column: str = "image",
    label_column: str = "label",
    *,
    domain_column: str | None = None,
    labeled_split: str | None = None,
    unlabeled_split: str | None = None,
    test_split: str | None = None,
    test_size: float | int = DEFAULT_TEST_SIZE,
    allow_test_overlap: bool = False,
    dataset_config_name: str | None = None,
    seed: int = 0,
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
    dd, splits, _, _ = _roles(
        spec,
        splits,
        config=dataset_config_name,
        image_column=image_column,
        label_column=label_column,
        domain_column=domain_column,
        labeled_per_class=labeled_per_class,
        seed=seed,
        test_size=test_size,
        allow_test_overlap=allow_test_overlap,
    )
    names = list(dd["labeled"].features[label_column].names)
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
