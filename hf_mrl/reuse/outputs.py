"""What the reuse layer reads of the pool: teacher probabilities and embedding features for each split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hf_mrl.data.types import TargetData
from hf_mrl.pool.model_pool import ModelPool
from hf_mrl.reuse.embedding import Embedding

__all__ = ["ReuseInputs", "compute_reuse_inputs"]


@dataclass
class ReuseInputs:
    """Teacher probabilities H (N, K, C) and raw psi features (N, p) for the labeled, unlabeled, test sets."""

    probs_l: torch.Tensor
    probs_u: torch.Tensor
    probs_t: torch.Tensor
    feats_l: torch.Tensor
    feats_u: torch.Tensor
    feats_t: torch.Tensor


def compute_reuse_inputs(
    pool: ModelPool,
    embedding: Embedding,
    data: TargetData,
    progress: bool = False,
    accelerator=None,
    num_workers: int = 0,
) -> ReuseInputs:
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
    return ReuseInputs(**{f"probs_{k}": v for k, v in probs.items()}, **{f"feats_{k}": v for k, v in feats.items()})
