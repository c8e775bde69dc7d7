"""Map a teacher's own label names onto the target task's label names."""

from __future__ import annotations

import logging
import re

import torch

__all__ = ["LabelMapping", "is_generic", "map_labels", "normalize_label"]

logger = logging.getLogger(__name__)

_GENERIC = re.compile(r"^label_?\d+$")


def normalize_label(name: str) -> str:
    """Canonical form used to match label names across models (case, spaces, `-`/`_` ignored)."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def is_generic(names: list[str]) -> bool:
    """Whether label names are the placeholders transformers writes when none are given (`LABEL_0`, `LABEL_1`...)."""
    return bool(names) and all(_GENERIC.match(normalize_label(n).replace(" ", "_")) for n in names)


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
    """Match label names; raise `ValueError` when there is no meaningful mapping.

    Names match after `normalize_label` (case, spaces, `-` and `_` ignored). There is no mapping, and so an error,
    when the teacher shares no label with the target, or when both sides only have placeholder names (`LABEL_0`,
    ...): those would pair classes by output position, not by meaning. A teacher whose labels cover only part of
    the target is fine (its missing classes get probability 0).

    Args:
        teacher_labels: the teacher's label names in output order (its `id2label`).
        target_labels: the target task's label names in class-index order.
        teacher_name: used in error messages.

    >>> map_labels(["cat", "dog", "0"], ["0", "Dog"]).index
    [2, 1]
    """
    target_labels = [str(t) for t in target_labels]
    teacher_labels = [str(t) for t in teacher_labels]
    if not target_labels:
        raise ValueError("The target task has no label names; pass the class names of the target dataset.")
    norm_target = [normalize_label(t) for t in target_labels]
    if any(not t for t in norm_target):
        raise ValueError(f"Target label names must be non-empty; got {target_labels[:8]}.")
    if len(set(norm_target)) != len(norm_target):
        raise ValueError(f"Target label names are not unique after normalisation: {target_labels}.")
    if not teacher_labels:
        raise ValueError(
            f"{teacher_name} has no label names: give the checkpoint an `id2label` (or timm label_names)."
        )
    if is_generic(teacher_labels) and is_generic(target_labels):
        raise ValueError(
            f"{teacher_name} and the target task both have placeholder label names ({teacher_labels[0]}, ...): "
            "matching them would pair classes by output position, not by meaning. Give the checkpoint real "
            "`id2label` names and the dataset real ClassLabel names."
        )
    lookup: dict[str, int] = {}
    for i, name in enumerate(teacher_labels):
        key = normalize_label(name)
        if key in lookup and key in norm_target:
            logger.warning(
                "%s has two outputs named like target class %r (%r and %r): using the first, output %d.",
                teacher_name,
                key,
                teacher_labels[lookup[key]],
                name,
                lookup[key],
            )
        lookup.setdefault(key, i)
    index = [lookup.get(t, -1) for t in norm_target]
    if all(i < 0 for i in index):
        if is_generic(teacher_labels):
            hint = " Its labels are generic (LABEL_0, ...): give the checkpoint real `id2label` names."
        elif is_generic(target_labels):
            hint = " The target's labels are generic (LABEL_0, ...): give the dataset's ClassLabel real names."
        else:
            hint = " Check that it was trained for the same classes, or drop it from the pool."
        shown = list(teacher_labels[:8]) + (["..."] if len(teacher_labels) > 8 else [])
        raise ValueError(
            f"{teacher_name} shares no label with the target task: its labels are {shown}, "
            f"the target's are {list(target_labels[:8])}.{hint}"
        )
    return LabelMapping(index, list(teacher_labels), list(target_labels))
