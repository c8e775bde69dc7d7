"""PL: pseudo-labelling (Lee, 2013): the student's own confident predictions become targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_mrl.training.strategies.base import Strategy, rampup

__all__ = ["PseudoLabel"]


class PseudoLabel(Strategy):
    name = "pl"
    card_name = "pseudo-labelling"
    card_source = "its own confident predictions on the unlabeled images"
    card_how = (
        "pseudo-labelling (Lee, 2013): the student learns from the labels and from its own confident predictions on the "
        "unlabeled images, used as targets. No pretrained model was reused."
    )
    uses_unlabeled = True

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        cfg = self.config
        with torch.no_grad():
            conf, pseudo = logits_u.softmax(-1).max(-1)
            mask = (conf >= cfg.confidence_threshold).float()
        loss = (F.cross_entropy(logits_u, pseudo, reduction="none") * mask).mean()
        weight = cfg.unlabeled_weight * rampup(step, cfg.max_steps, cfg.rampup_fraction)
        return weight * loss, {"pl_loss": loss.item(), "mask_rate": mask.mean().item()}
