"""MRL: distil toward the attention reuser R_phi, whose prototypes follow the labeled hypergradient."""

from __future__ import annotations

import torch

from .base import DistillStrategy

__all__ = ["AttentionReuse"]


class AttentionReuse(DistillStrategy):
    name = "mrl"

    def __init__(self, trainer):
        super().__init__(trainer)
        trainer._init_reuser()

    def targets(self, idx_u: torch.Tensor) -> torch.Tensor:
        return self.trainer._reuse_targets(idx_u)

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        loss, logs = super().unlabeled_loss(logits_u, idx_u, images_u, gen, step)
        strength = self.trainer.reuse_strength
        return strength * loss, {**logs, "reuse_strength": strength}

    def before_update(self, step, x, logits, n_labeled, idx_u):
        if (step + 1) % self.config.outer_every == 0:
            self.trainer.prepare_outer_step(step, x, logits, n_labeled, idx_u)

    def after_step(self, step):
        if (step + 1) % self.config.outer_every == 0:
            return self.trainer.outer_step(step)
        return {}
