"""Read a target task (labeled / unlabeled / test splits) from where users keep it into the tensors the trainer uses.

Sources: the embedded Digits-LD benchmark (`digits-ld[:SETTING]`), a `save_to_disk` folder, an image folder, or a
Hub dataset id (`org/name[@revision]`, through `datasets.load_dataset`: cached, so it loads again with
`HF_HUB_OFFLINE=1`). Splits are named with `datasets` slicing (`train[:2%]`).
"""

from __future__ import annotations

import logging

from hf_mrl.data.carve import (  # noqa: F401
    _carve,
    _check_domain_column,
    _default_domain_column,
    _domain_values,
    _overlap_error,
    _roles,
    _shares,
    _split_record,
    _stratified_take,
    _subsample_labeled,
    check_test_size,
)
from hf_mrl.data.convert import (  # noqa: F401
    CARVED_LABELED_PER_CLASS,
    DEFAULT_TEST_SIZE,
    DIGITS_LD_LABELED_PER_CLASS,
    SPLITS,
    DatasetDescription,
    _check_labeled_per_class,
    _convert,
    _domain_kind,
    _domains,
    _hidden_labels,
    _images,
    _labels,
    check_dataset,
    target_from_datasets,
)
from hf_mrl.data.sources import (  # noqa: F401
    _SPLIT_FOLDERS,
    _check_split_specs,
    _default_splits,
    _is_digits_ld,
    _is_saved_dataset,
    _load_hub,
    _load_image_folder,
    _load_saved,
    _open,
    _parse_hub_id,
    _saved_split_is_empty,
    _saved_splits,
    _select,
    _split_names,
    hub_dataset_id,
)
from hf_mrl.data.types import TargetData

__all__ = [
    "DatasetDescription",
    "check_dataset",
    "check_target",
    "hub_dataset_id",
    "load_target",
    "target_from_datasets",
]


logger = logging.getLogger(__name__)


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
        from hf_mrl.data import load_digits_ld

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
        from hf_mrl.data.digits_ld import LABEL_NAMES, _parse_setting

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
