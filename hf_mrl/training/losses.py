"""Loss functions shared by the strategies."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss"]


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(target || softmax(student / T)), averaged over the batch."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    kl = (target_probs * (target_probs.clamp_min(1e-8).log() - log_q)).sum(-1)
    return temperature**2 * kl.mean()
