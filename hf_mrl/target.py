"""Turn a `datasets.DatasetDict` (labeled / unlabeled / test splits) into the tensors the trainer uses."""

from __future__ import annotations

import numpy as np
import torch

from .trainer import TargetData

__all__ = ["load_target", "target_from_datasets"]

SPLITS = ("labeled", "unlabeled", "test")


def _images(ds, column: str, image_size: int) -> torch.Tensor:
    from PIL import Image

    arrays = []
    for img in ds[column]:
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        img = img.convert("RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(img))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


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
    feature = dataset["labeled"].features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(f"Column {label_column!r} must be a datasets.ClassLabel with class names; got {feature}.")
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
        domain_names=domain_names,
    )


def load_target(spec: str, labeled_per_class: int, seed: int, **kwargs) -> tuple[TargetData, str]:
    """`digits-ld[:SETTING]` (the embedded benchmark) or a `save_to_disk` DatasetDict folder.

    Returns the data and a short description for cards and metrics.
    """
    import os

    if spec.startswith("digits-ld"):
        from .data import load_digits_ld

        setting = spec.partition(":")[2] or "MUS"
        dd = load_digits_ld(setting, labeled_per_class=labeled_per_class, seed=seed)
        return target_from_datasets(dd, **kwargs), f"Digits-LD {setting} ({labeled_per_class} labels per class)"
    if os.path.isdir(spec):
        import datasets

        return target_from_datasets(datasets.load_from_disk(spec), **kwargs), spec
    raise ValueError(
        f"Unknown dataset {spec!r}: use 'digits-ld[:SETTING]' or a folder written by DatasetDict.save_to_disk "
        "with splits labeled / unlabeled / test."
    )
