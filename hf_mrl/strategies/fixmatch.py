"""FixMatch (Sohn et al., 2020): confident predictions on a weak view supervise a strong view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..augment import strong_augment
from .base import Strategy

__all__ = ["FixMatch"]


class FixMatch(Strategy):
    name = "fixmatch"
    uses_unlabeled = True

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        cfg, trainer = self.config, self.trainer
        with torch.no_grad():
            conf, pseudo = logits_u.softmax(-1).max(-1)
            mask = (conf >= cfg.confidence_threshold).float()
        strong = strong_augment(trainer.preprocess(images_u), gen).to(logits_u.device)
        loss = (F.cross_entropy(trainer.student(strong), pseudo, reduction="none") * mask).mean()
        return cfg.unlabeled_weight * loss, {"fixmatch_loss": loss.item(), "mask_rate": mask.mean().item()}
