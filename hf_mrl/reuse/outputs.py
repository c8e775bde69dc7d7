"""What the reuse layer reads of the pool: teacher probabilities and embedding features for each split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hf_mrl.data.types import TargetData
from hf_mrl.pool.model_pool import ModelPool
from hf_mrl.reuse.embedding import Embedding

__all__ = ["TeacherOutputs", "SplitOutputs", "compute_teacher_outputs"]


@dataclass
class TeacherOutputs:
    """Teacher probabilities H (N, K, C) and raw psi features (N, p) for the labeled, unlabeled, test sets.

    Read a split by its name: `outputs.test.probs`, `outputs.split("labeled").feats`; the suffixed fields are the
    storage (`_l`, `_u`, `_t`: labeled, unlabeled, test; `t` is never "teacher" here).
    """

    probs_l: torch.Tensor
    probs_u: torch.Tensor
    probs_t: torch.Tensor
    feats_l: torch.Tensor
    feats_u: torch.Tensor
    feats_t: torch.Tensor

    def split(self, name: str) -> SplitOutputs:
        """The teachers' outputs on one split: `labeled`, `unlabeled` or `test`."""
        try:
            suffix = SPLITS[name]
        except KeyError:
            raise ValueError(f"Unknown split {name!r}; choose one of {list(SPLITS)}.") from None
        return SplitOutputs(getattr(self, f"probs_{suffix}"), getattr(self, f"feats_{suffix}"))

    @property
    def labeled(self) -> SplitOutputs:
        return self.split("labeled")

    @property
    def unlabeled(self) -> SplitOutputs:
        return self.split("unlabeled")

    @property
    def test(self) -> SplitOutputs:
        return self.split("test")


SPLITS = {"labeled": "l", "unlabeled": "u", "test": "t"}


@dataclass(frozen=True)
class SplitOutputs:
    """The teachers' probabilities (N, K, C) and the psi features (N, p) of one split."""

    probs: torch.Tensor
    feats: torch.Tensor


def compute_teacher_outputs(
    pool: ModelPool,
    embedding: Embedding,
    data: TargetData,
    progress: bool = False,
    accelerator=None,
    num_workers: int = 0,
) -> TeacherOutputs:
    """Run every teacher once over each set (cached), and the embedding on top.

    With a multi-process `accelerator`, every process must call this (a collective call): each runs the teachers
    on its share of the samples that no cache holds, and all get every result. Lazy images (`ImageSet`) are decoded
    by `num_workers` DataLoader processes, at their own size, for each teacher's own processor.
    """
    sets = {"l": data.labeled_images, "u": data.unlabeled_images, "t": data.test_images}
    probs = {
        k: pool.probs(v, progress=progress, accelerator=accelerator, num_workers=num_workers) for k, v in sets.items()
    }
    if accelerator is not None and accelerator.num_processes > 1:
        with accelerator.main_process_first():  # an encoder's features: computed and cached once, then read
            feats = {k: embedding(sets[k], probs[k], num_workers=num_workers) for k in sets}
    else:
        feats = {k: embedding(sets[k], probs[k], num_workers=num_workers) for k in sets}
    return TeacherOutputs(**{f"probs_{k}": v for k, v in probs.items()}, **{f"feats_{k}": v for k, v in feats.items()})
