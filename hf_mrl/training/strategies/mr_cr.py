"""MR-CR: consistent reuse, one instance-independent weighting of the teachers fitted on the labeled data."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_mrl.training.strategies.base import DistillStrategy

__all__ = ["ConsistentReuse", "fit_global_weights"]


def fit_global_weights(probs: torch.Tensor, labels: torch.Tensor, steps: int = 300, lr: float = 0.1) -> torch.Tensor:
    """Simplex weights w (K,) minimising the labeled NLL of sum_k w_k H_k(x)."""
    logits = torch.zeros(probs.shape[1], requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        mix = torch.einsum("k,nkc->nc", logits.softmax(0), probs)  # (N, C)
        loss = F.nll_loss(mix.clamp_min(1e-8).log(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logits.detach().softmax(0)


class ConsistentReuse(DistillStrategy):
    name = "mr-cr"
    card_name = "MR-CR"
    card_source = "a pool of {k} teacher(s) mixed with one fixed weighting fitted on the labeled images"
    card_how = (
        "MR-CR (consistent reuse): one weighting of the teachers, the same for every input, is fitted on the labeled "
        "images; the student distils the weighted teacher mixture on the unlabeled images and learns from the labels."
    )

    def __init__(self, trainer):
        super().__init__(trainer)
        self.weights = fit_global_weights(trainer.reuse.probs_l, trainer.data.labeled_labels)

    def targets(self, idx_u):
        return torch.einsum("k,bkc->bc", self.weights, self.trainer.reuse.probs_u[idx_u])
