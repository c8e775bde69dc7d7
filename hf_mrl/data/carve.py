"""Carving one split into labeled / unlabeled / test parts (stratified by label and domain), and the overlap check by row identity."""

from __future__ import annotations

import logging

import numpy as np

from hf_mrl.data.convert import CARVED_LABELED_PER_CLASS, SPLITS, _check_labeled_per_class, _domain_kind, check_dataset
from hf_mrl.data.sources import _default_splits, _open, _select

logger = logging.getLogger(__name__)


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
