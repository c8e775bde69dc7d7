"""The target task as the library holds it: images (tensors or `ImageSet`s), labels and optional domains."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from hf_mrl.data.images import ImageSet, row_keys

__all__ = ["TargetData"]


@dataclass
class TargetData:
    """The target task: images (uint8 tensors (N, 3, H, W), or `ImageSet`s decoded per batch), int64 labels (N,),
    optional domains (N,)."""

    label_names: list[str]
    labeled_images: torch.Tensor | ImageSet
    labeled_labels: torch.Tensor
    unlabeled_images: torch.Tensor | ImageSet
    test_images: torch.Tensor | ImageSet
    test_labels: torch.Tensor
    test_domains: torch.Tensor | None = None
    domain_names: list[str] | None = None
    # Latent-domain labels of the training data: read only by oracle routing, a reference, never by a method.
    labeled_domains: torch.Tensor | None = None
    unlabeled_domains: torch.Tensor | None = None
    # True labels of the unlabeled set, when the data have them: validation for benchmarks and ablations only.
    unlabeled_labels: torch.Tensor | None = None

    def __post_init__(self):
        c = len(self.label_names)
        if len(self.labeled_labels) == 0:
            raise ValueError("The labeled set is empty: MRL needs a few labeled samples per class.")
        if len(self.unlabeled_images) == 0:
            raise ValueError("The unlabeled set is empty: MRL distils on unlabeled samples.")
        if len(self.labeled_images) != len(self.labeled_labels):
            raise ValueError("labeled_images and labeled_labels differ in length.")
        missing = sorted(set(range(c)) - set(self.labeled_labels.tolist()))
        if missing:
            names = [self.label_names[i] for i in missing]
            raise ValueError(f"Classes {names} have no labeled sample; label at least one sample of each class.")
        if self.labeled_labels.min() < 0 or self.labeled_labels.max() >= c:
            raise ValueError(
                f"Labels must lie in [0, {c}); got {self.labeled_labels.min()}..{self.labeled_labels.max()}."
            )

    @property
    def lazy(self) -> bool:
        """Whether the images stay in their dataset and are decoded per batch."""
        return any(isinstance(x, ImageSet) for x in (self.labeled_images, self.unlabeled_images, self.test_images))

    def fingerprint(self, num_workers: int = 0) -> dict:
        """Per split: row count and a hash of its samples' content keys (the teacher cache's), and of the labels.

        Recorded with a run's checkpoints so that a resume on replaced data is refused. For lazy images the keys are
        the originals' (computed once per `ImageSet`, and reused by the teacher pass).
        """
        out = {"labels": list(self.label_names)}
        for split in ("labeled", "unlabeled", "test"):
            images = getattr(self, f"{split}_images")
            keys = images.keys(num_workers) if isinstance(images, ImageSet) else row_keys(images)
            h = hashlib.sha256(np.ascontiguousarray(keys).tobytes())
            labels = self.labeled_labels if split == "labeled" else self.test_labels if split == "test" else None
            if labels is not None:
                h.update(labels.numpy().astype("int64").tobytes())
            out[split] = {"rows": len(images), "sha256": h.hexdigest()[:32]}
        return out

    def at_size(self, size: int) -> TargetData:
        """The same task with its lazy images decoded at `size` (tensors are left as they are)."""
        changes = {
            name: getattr(self, name).resized(size)
            for name in ("labeled_images", "unlabeled_images", "test_images")
            if isinstance(getattr(self, name), ImageSet)
        }
        return dataclasses.replace(self, **changes) if changes else self
