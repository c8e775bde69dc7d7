"""Seven binary attributes of the digits 0-9, and Digits-LD tasks for them: the offline form of the paper's AwA table.

In the paper, a sample's attribute (Smart, Slow, Spots, ...) is a property of its animal class, shared by every
photo of the class, and the target data mix latent domains. Here an attribute is a property of the digit class,
and the images come from Digits-LD's latent domains (M handwritten, U low-resolution handwritten, S printed), so
the same pool / reuser / trainer / guard code runs on binary tasks exactly as it does on the digits table.

The attributes mix shape (Loop, Symmetric) and arithmetic (Even, Large, Prime, Fibonacci, Triple), as the paper's
mix visual (Spots, Bulbous, Lean) and behavioural (Smart, Slow, Solitary, Nestspot) ones; each splits the ten
digits 5/5 or 4/6, so that no task is nearly constant.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np

from hf_mrl.data import attribute_label_names, load_domain
from hf_mrl.data.digits_ld import _parse_setting, _split_indices
from hf_mrl.utils import atomic_dir, cache_root

__all__ = [
    "DIGIT_ATTRIBUTES",
    "attribute_digits",
    "attribute_labels",
    "build_attribute_task",
    "attribute_task_dir",
    "save_attribute_tasks",
]

# name -> the digits that have the attribute (label 1); every other digit is label 0.
DIGIT_ATTRIBUTES: dict[str, tuple[int, ...]] = {
    "Even": (0, 2, 4, 6, 8),  # divisible by two
    "Loop": (0, 4, 6, 8, 9),  # drawn with a closed loop (the printed 4's triangle counts)
    "Large": (5, 6, 7, 8, 9),  # greater than four
    "Prime": (2, 3, 5, 7),
    "Symmetric": (0, 1, 3, 8),  # a mirror axis, left-right (0, 1, 8) or top-bottom (3)
    "Fibonacci": (0, 1, 2, 3, 5, 8),
    "Triple": (0, 3, 6, 9),  # a multiple of three
}
_VERSION = 1  # bump when a definition or the split changes, so stale cached folders are never read


def attribute_digits(attribute: str) -> tuple[int, ...]:
    """The digits that have `attribute` (matched case-insensitively)."""
    for name, digits in DIGIT_ATTRIBUTES.items():
        if isinstance(attribute, str) and attribute.strip().lower() == name.lower():
            return digits
    raise ValueError(f"Unknown digit attribute {attribute!r}; choose from {list(DIGIT_ATTRIBUTES)}.")


def attribute_labels(attribute: str, digits) -> np.ndarray:
    """Binary labels (1: has the attribute) of an array of digit labels."""
    return np.isin(np.asarray(digits, dtype=np.int64), attribute_digits(attribute)).astype(np.int64)


def _canonical(attribute: str) -> str:
    digits = attribute_digits(attribute)
    return next(name for name, d in DIGIT_ATTRIBUTES.items() if d == digits)


def _relabel(ds: datasets.Dataset, attribute: str) -> datasets.Dataset:
    """`label` becomes the binary attribute (ClassLabel with its two names); the digit stays as `digit`."""
    digits = np.asarray(ds["label"], dtype=np.int64)
    ds = ds.rename_column("label", "digit")
    ds = ds.add_column("label", attribute_labels(attribute, digits).tolist())
    return ds.cast_column("label", datasets.ClassLabel(names=attribute_label_names(_canonical(attribute))))


def build_attribute_task(attribute: str, setting: str = "MUS", labeled_per_class: int | None = None, seed: int = 0):
    """One binary attribute task over the target parts of a Digits-LD setting's domains.

    Args:
        attribute (`str`): a key of `DIGIT_ATTRIBUTES` (case-insensitive).
        setting (`str`, defaults to `"MUS"`): the Digits-LD domains to mix.
        labeled_per_class (`int`, *optional*): labeled images per binary class, drawn with `seed` from target-train;
            the unlabeled split is then the rest of target-train. `None` (the benchmark form) keeps every
            target-train image in both `labeled` and `unlabeled`, for `load_target(..., labeled_per_class=n,
            seed=s)` (or the recipe's `--labeled_per_class n --seed s`) to draw the labeled subset per run.
        seed (`int`, defaults to 0): picks the labeled subset when `labeled_per_class` is given.

    Returns:
        `datasets.DatasetDict` with splits `labeled`, `unlabeled`, `test` (Digits-LD's fixed target-test part) and
        columns `image`, `label` (`ClassLabel`, e.g. `["not even", "even"]`), `digit` and `domain` (both for
        evaluation only).
    """
    codes = _parse_setting(setting)
    parts = {}
    for split in ("target_train", "target_test"):
        chunks = [load_domain(c).select(_split_indices(c)[split]) for c in codes]
        parts[split] = _relabel(datasets.concatenate_datasets(chunks) if len(chunks) > 1 else chunks[0], attribute)
    train, test = parts["target_train"], parts["target_test"]
    if labeled_per_class is None:
        return datasets.DatasetDict({"labeled": train, "unlabeled": train, "test": test})
    labels = np.asarray(train["label"])
    if isinstance(labeled_per_class, bool) or not isinstance(labeled_per_class, int) or labeled_per_class < 1:
        raise ValueError(f"labeled_per_class must be a positive integer or None; got {labeled_per_class!r}.")
    if labeled_per_class > np.bincount(labels, minlength=2).min():
        raise ValueError(
            f"labeled_per_class={labeled_per_class} exceeds the {np.bincount(labels, minlength=2).min()} "
            f"target-train images of the smaller class of {attribute!r} in setting {setting!r}."
        )
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(labels), dtype=bool)
    for value in (0, 1):
        chosen[rng.choice(np.flatnonzero(labels == value), size=labeled_per_class, replace=False)] = True
    return datasets.DatasetDict(
        {
            "labeled": train.select(np.flatnonzero(chosen)),
            "unlabeled": train.select(np.flatnonzero(~chosen)),
            "test": test,
        }
    )


def attribute_task_dir(root: str | os.PathLike | None = None) -> Path:
    """Where the benchmark-form task folders live: `$HF_MRL_CACHE/digit_attributes/v1` by default."""
    return Path(root) if root is not None else cache_root() / "digit_attributes" / f"v{_VERSION}"


def save_attribute_tasks(
    attributes=tuple(DIGIT_ATTRIBUTES), setting: str = "MUS", root: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write (or reuse) the benchmark form of each attribute task as `ROOT/SETTING/ATTRIBUTE` (`save_to_disk`).

    Returns `{attribute: folder}`; `folder` is what `recipes/train_mrl.py --dataset` and `BenchmarkSpec` read.
    """
    setting = "".join(_parse_setting(setting))
    out = {}
    for attribute in attributes:
        name = _canonical(attribute)
        folder = attribute_task_dir(root) / setting / name
        if not (folder / "dataset_dict.json").is_file():
            bars_were_on = not datasets.utils.are_progress_bars_disabled()
            datasets.utils.disable_progress_bars()  # a bar per split and attribute says nothing
            try:
                with atomic_dir(folder) as tmp:
                    build_attribute_task(name, setting).save_to_disk(str(tmp))
            finally:
                if bars_were_on:
                    datasets.utils.enable_progress_bars()
        out[name] = folder
    return out
