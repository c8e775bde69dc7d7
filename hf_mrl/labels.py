"""Map a teacher's own label names onto the target task's label names."""

from __future__ import annotations

import re

import torch

__all__ = ["LabelMapping", "map_labels", "normalize_label"]

_GENERIC = re.compile(r"^label_?\d+$")


def normalize_label(name: str) -> str:
    """Canonical form used to match label names across models (case, spaces, `-`/`_` ignored)."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


class LabelMapping:
    """Where each target class sits among a teacher's outputs.

    `index[c]` is the teacher output index of target class `c`, or -1 when the teacher lacks it.
    """

    def __init__(self, index: list[int], teacher_labels: list[str], target_labels: list[str]):
        self.index = index
        self.teacher_labels = teacher_labels
        self.target_labels = target_labels

    @property
    def coverage(self) -> list[bool]:
        return [i >= 0 for i in self.index]

    @property
    def num_covered(self) -> int:
        return sum(self.coverage)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, C_teacher) -> probabilities over the target classes (B, C).

        The softmax is renormalised over the covered target classes, so a teacher's extra classes
        do not take mass away; uncovered target classes get probability 0.
        """
        covered = torch.tensor([i for i in self.index if i >= 0], device=logits.device)
        sub = torch.softmax(logits.float()[:, covered], dim=-1)  # (B, C_covered)
        out = logits.new_zeros(logits.shape[0], len(self.index), dtype=torch.float32)
        cols = torch.tensor([c for c, i in enumerate(self.index) if i >= 0], device=logits.device)
        out[:, cols] = sub
        return out

    def __repr__(self) -> str:
        return f"LabelMapping(covered={self.num_covered}/{len(self.index)})"


def map_labels(teacher_labels: list[str], target_labels: list[str], teacher_name: str = "teacher") -> LabelMapping:
    """Match label names; raise `ValueError` when the teacher shares no label with the target.

    Args:
        teacher_labels: the teacher's label names in output order (its `id2label`).
        target_labels: the target task's label names in class-index order.
        teacher_name: used in error messages.

    >>> map_labels(["cat", "dog", "0"], ["0", "Dog"]).index
    [2, 1]
    """
    if not target_labels:
        raise ValueError("The target task has no label names; pass the class names of the target dataset.")
    norm_target = [normalize_label(t) for t in target_labels]
    if len(set(norm_target)) != len(norm_target):
        raise ValueError(f"Target label names are not unique after normalisation: {target_labels}.")
    lookup: dict[str, int] = {}
    for i, name in enumerate(teacher_labels):
        lookup.setdefault(normalize_label(name), i)
    index = [lookup.get(t, -1) for t in norm_target]
    if all(i < 0 for i in index):
        generic = all(_GENERIC.match(normalize_label(n).replace(" ", "_")) for n in teacher_labels)
        hint = (
            " Its labels are generic (LABEL_0, ...): give the checkpoint real `id2label` names."
            if generic
            else " Check that it was trained for the same classes, or drop it from the pool."
        )
        shown = list(teacher_labels[:8]) + (["..."] if len(teacher_labels) > 8 else [])
        raise ValueError(
            f"{teacher_name} shares no label with the target task: its labels are {shown}, "
            f"the target's are {list(target_labels[:8])}.{hint}"
        )
    return LabelMapping(index, list(teacher_labels), list(target_labels))
