"""Where a dataset comes from: a Hub id, a `save_to_disk` folder, an image folder; its splits and their slices."""

from __future__ import annotations

import os
import re

import numpy as np

from hf_mrl.data.convert import SPLITS


def _is_digits_ld(spec: str) -> bool:
    return spec == "digits-ld" or spec.startswith("digits-ld:")


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
    from hf_mrl.paths import missing_folder_message

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


def hub_dataset_id(spec: str) -> tuple[str, str | None] | None:
    """`(repo_id, revision)` when `spec` names a Hub dataset (for cards: `datasets: [repo_id]`), else None.

    >>> hub_dataset_id("org/pets@v1")
    ('org/pets', 'v1')
    """
    if _is_digits_ld(spec) or os.path.exists(spec):
        return None
    return _parse_hub_id(spec)
