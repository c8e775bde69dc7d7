"""Animals with Attributes 2 (AwA2) as binary attribute tasks, read from the published directory layout.

The paper's second table classifies seven binary attributes of animal photos (Smart, Slow, Bulbous, Solitary,
Nestspot, Lean, Spots). AwA2 is not downloadable from here (no network, and it is 13 GB); users who have it point
:func:`load_awa2_attribute` at the unpacked folder::

    ROOT/
        classes.txt                     "1\\tantelope" lines: index and class (folder) name
        predicates.txt                  "1\\tblack" lines: index and attribute name (85 of them)
        predicate-matrix-binary.txt     one row per class, one 0/1 per predicate, space separated
        JPEGImages/<class>/*.jpg        the photos of each class

An image's label is its class's row of the predicate matrix at the chosen attribute: every photo of a class shares
it, as in the paper. Nothing is decoded or copied when a task is built: the dataset holds the image paths (a
`datasets.Image` feature) and each image is read when a split is converted to tensors. `save_to_disk` (datasets 5)
embeds the JPEG bytes, so a saved task folder is self-contained (about the size of its images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

__all__ = [
    "AWA2_ATTRIBUTES",
    "AwA2Metadata",
    "attribute_label_names",
    "load_awa2",
    "load_awa2_attribute",
    "read_awa2_metadata",
]


# The paper's seven attributes, in its table's column order; AwA2 spells them in lower case.
AWA2_ATTRIBUTES = ("Smart", "Slow", "Bulbous", "Solitary", "Nestspot", "Lean", "Spots")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Fixed, so the test part of an attribute task never depends on the seed that draws the labeled subset.
SPLIT_SEED = 20210819

_LAYOUT = (
    "Expected the published AwA2 layout: ROOT/classes.txt ('1\\tantelope' lines), ROOT/predicates.txt ('1\\tblack' "
    "lines), ROOT/predicate-matrix-binary.txt (one row of space-separated 0/1 per class, one column per predicate) "
    "and ROOT/JPEGImages/<class>/*.jpg."
)


@dataclass(frozen=True)
class AwA2Metadata:
    """The class names, predicate names and binary class x predicate matrix of an AwA2 folder.

    Args:
        root: the AwA2 folder.
        classes: class (and image folder) names, in `classes.txt` order, e.g. `"grizzly+bear"`.
        predicates: attribute names in `predicates.txt` order, e.g. `"smart"`.
        matrix: `(len(classes), len(predicates))` int64 array of 0/1.
    """

    root: Path
    classes: tuple[str, ...]
    predicates: tuple[str, ...]
    matrix: np.ndarray

    def predicate_index(self, attribute: str) -> int:
        """Column of `attribute` in the matrix, matched case-insensitively (`"Smart"` finds `"smart"`)."""
        if not isinstance(attribute, str):
            raise TypeError(f"An attribute is a predicate name (str); got {type(attribute).__name__}.")
        lowered = [p.lower() for p in self.predicates]
        key = attribute.strip().lower()
        if key not in lowered:
            raise ValueError(
                f"Unknown AwA2 attribute {attribute!r}; the paper's are {list(AWA2_ATTRIBUTES)} and "
                f"{self.root / 'predicates.txt'} lists: {', '.join(self.predicates)}."
            )
        return lowered.index(key)


def attribute_label_names(attribute: str) -> list[str]:
    """The two class names of a binary attribute task: `["not smart", "smart"]` for `"Smart"`.

    Index 0 is "does not have the attribute" (matrix value 0), index 1 "has it" (value 1). Teachers for the task
    must use these names (`id2label` / timm `label_names`) for the pool to map their outputs.
    """
    name = attribute.strip().lower()
    return [f"not {name}", name]


def _read_indexed_names(path: Path) -> tuple[str, ...]:
    """`classes.txt` / `predicates.txt`: '<1-based index><whitespace><name>' lines, in index order."""
    if not path.is_file():
        raise ValueError(f"Missing AwA2 file {path}. {_LAYOUT}")
    names = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"Line {n} of {path} is {line!r}; expected '<index>\\t<name>', e.g. '1\\tantelope'.")
        if int(parts[0]) != len(names) + 1:
            raise ValueError(
                f"Line {n} of {path} has index {parts[0]}; expected {len(names) + 1} (1-based, in order)."
            )
        names.append(parts[1])
    if not names:
        raise ValueError(f"AwA2 file {path} lists no names. {_LAYOUT}")
    return tuple(names)


def read_awa2_metadata(root: str | Path) -> AwA2Metadata:
    """Read and cross-check `classes.txt`, `predicates.txt` and `predicate-matrix-binary.txt` of an AwA2 folder.

    Raises:
        `ValueError`: a missing file or folder (naming it and the expected layout), a malformed line, or a matrix
            whose shape does not match the class and predicate counts, or that holds values other than 0 and 1.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"AwA2 folder {root} does not exist. {_LAYOUT}")
    classes = _read_indexed_names(root / "classes.txt")
    predicates = _read_indexed_names(root / "predicates.txt")
    matrix_path = root / "predicate-matrix-binary.txt"
    if not matrix_path.is_file():
        raise ValueError(f"Missing AwA2 file {matrix_path}. {_LAYOUT}")
    rows = [line.split() for line in matrix_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    shape = (len(classes), len(predicates))
    if len(rows) != shape[0] or any(len(r) != shape[1] for r in rows):
        got = (len(rows), sorted({len(r) for r in rows}))
        raise ValueError(
            f"{matrix_path} has {got[0]} rows of {got[1]} values; expected {shape[0]} rows (one per class in "
            f"classes.txt) of {shape[1]} values (one per predicate in predicates.txt)."
        )
    try:
        matrix = np.asarray(rows, dtype=np.int64)
    except ValueError:
        raise ValueError(
            f"{matrix_path} must hold only 0 and 1 (the binary matrix, not the continuous one)."
        ) from None
    if not np.isin(matrix, (0, 1)).all():
        raise ValueError(f"{matrix_path} must hold only 0 and 1 (the binary matrix, not the continuous one).")
    matrix.setflags(write=False)
    return AwA2Metadata(root=root, classes=classes, predicates=predicates, matrix=matrix)


def _image_paths(meta: AwA2Metadata, classes: tuple[str, ...]) -> list[list[str]]:
    """Sorted image paths of each class folder (sorted so that splits are reproducible across file systems)."""
    images_dir = meta.root / "JPEGImages"
    if not images_dir.is_dir():
        raise ValueError(f"Missing AwA2 folder {images_dir}. {_LAYOUT}")
    out = []
    for name in classes:
        folder = images_dir / name
        if not folder.is_dir():
            raise ValueError(
                f"Class {name!r} (from classes.txt) has no image folder {folder}: each class needs "
                "JPEGImages/<class>/ with its .jpg files, or pass `classes=` to use a subset of the classes."
            )
        files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"Image folder {folder} of class {name!r} holds no .jpg files.")
        out.append(files)
    return out


def _check_classes(meta: AwA2Metadata, classes) -> tuple[str, ...]:
    if classes is None:
        return meta.classes
    classes = tuple(classes)
    unknown = [c for c in classes if c not in meta.classes]
    if unknown or not classes:
        raise ValueError(f"Unknown AwA2 classes {unknown}; choose from classes.txt: {', '.join(meta.classes)}.")
    return classes


def load_awa2(
    root: str | Path,
    attributes=AWA2_ATTRIBUTES,
    labeled_per_class: int = 10,
    test_fraction: float = 0.3,
    seed: int = 0,
    classes=None,
) -> dict[str, datasets.DatasetDict]:
    """One binary task per attribute (see :func:`load_awa2_attribute`), keyed by the attribute names given."""
    if isinstance(attributes, str):
        attributes = [attributes]
    meta = read_awa2_metadata(root)
    return {
        a: load_awa2_attribute(meta, a, labeled_per_class, test_fraction, seed, classes=classes) for a in attributes
    }


def load_awa2_attribute(
    root: str | Path | AwA2Metadata,
    attribute: str,
    labeled_per_class: int = 10,
    test_fraction: float = 0.3,
    seed: int = 0,
    classes=None,
) -> datasets.DatasetDict:
    """One binary attribute task over AwA2, in the form `recipes/train_mrl.py --dataset` reads.

    Args:
        root (`str`, `Path` or `AwA2Metadata`): the AwA2 folder (see the module docstring for its layout).
        attribute (`str`): a predicate name, matched case-insensitively, e.g. one of `AWA2_ATTRIBUTES`.
        labeled_per_class (`int`, defaults to 10): labeled images per binary class ("not smart" / "smart"), drawn
            with `seed` from the non-test images.
        test_fraction (`float`, defaults to 0.3): share of each animal class held out as the test split; fixed
            (`SPLIT_SEED`), independent of `seed`, so every seed is scored on the same images.
        seed (`int`, defaults to 0): picks the labeled subset.
        classes (sequence of `str`, *optional*): use only these animal classes (default: all of `classes.txt`).

    Returns:
        `datasets.DatasetDict` with splits `labeled`, `unlabeled` (the rest of the non-test images) and `test`, and
        columns `image` (`datasets.Image`, stored as a path and decoded on access), `label` (`ClassLabel` with
        :func:`attribute_label_names`) and `class` (`ClassLabel` of the animal classes; for evaluation only, never
        read in training).

    Raises:
        `ValueError`: a missing file or class folder, an unknown attribute or class, a `test_fraction` outside
        (0, 1), or `labeled_per_class` above what a binary class has (or an attribute constant over the classes).

    Example:
        >>> from hf_mrl.data import load_awa2_attribute  # doctest: +SKIP
        >>> task = load_awa2_attribute("~/data/Animals_with_Attributes2", "Smart", labeled_per_class=10)  # doctest: +SKIP
        >>> task.save_to_disk("awa2-smart")  # then: accelerate launch recipes/train_mrl.py --dataset awa2-smart ...
    """
    meta = root if isinstance(root, AwA2Metadata) else read_awa2_metadata(root)
    column = meta.predicate_index(attribute)
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}.")
    if isinstance(labeled_per_class, bool) or not isinstance(labeled_per_class, (int, np.integer)):
        raise ValueError(f"labeled_per_class must be a positive integer; got {labeled_per_class!r}.")
    if labeled_per_class < 1:
        raise ValueError(f"labeled_per_class must be a positive integer; got {labeled_per_class!r}.")
    classes = _check_classes(meta, classes)
    paths = _image_paths(meta, classes)
    label_names = attribute_label_names(attribute)

    # Per animal class: a fixed test share; the rest is the pool the labeled subset is drawn from.
    split_rng = np.random.default_rng(SPLIT_SEED)
    pool_rows: list[tuple[str, int, int]] = []  # (path, label, class index)
    test_rows: list[tuple[str, int, int]] = []
    for files, name in zip(paths, classes, strict=True):
        c = meta.classes.index(name)
        label = int(meta.matrix[c, column])
        order = split_rng.permutation(len(files))
        n_test = int(round(len(files) * test_fraction))
        test_rows += [(files[i], label, c) for i in sorted(order[:n_test])]
        pool_rows += [(files[i], label, c) for i in sorted(order[n_test:])]

    labels = np.asarray([r[1] for r in pool_rows], dtype=np.int64)
    available = np.bincount(labels, minlength=2)
    if labeled_per_class > available.min():
        short = label_names[int(available.argmin())]
        raise ValueError(
            f"labeled_per_class={labeled_per_class} is more than attribute {attribute!r} allows: {short!r} has "
            f"{int(available.min())} non-test image(s) over the chosen classes. Lower labeled_per_class or use "
            "more classes."
        )
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(pool_rows), dtype=bool)
    for value in (0, 1):
        chosen[rng.choice(np.flatnonzero(labels == value), size=labeled_per_class, replace=False)] = True

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=label_names),
            "class": datasets.ClassLabel(names=list(meta.classes)),
        }
    )

    def build(rows) -> datasets.Dataset:
        columns = {"image": [r[0] for r in rows], "label": [r[1] for r in rows], "class": [r[2] for r in rows]}
        return datasets.Dataset.from_dict(columns, features=features)

    return datasets.DatasetDict(
        {
            "labeled": build([r for r, keep in zip(pool_rows, chosen, strict=True) if keep]),
            "unlabeled": build([r for r, keep in zip(pool_rows, chosen, strict=True) if not keep]),
            "test": build(test_rows),
        }
    )
