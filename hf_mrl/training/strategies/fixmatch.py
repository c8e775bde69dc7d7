"""FixMatch (Sohn et al., 2020): confident predictions on a weak view supervise a strong view.

With `config.eval_ema_decay > 0` an exponential moving average of the student (`StudentEMA`) is kept and is the
model evaluated and delivered, as in the paper (decay 0.999); by default (0) the last iterate is delivered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_mrl.data.augment import strong_augment
from hf_mrl.training.strategies.base import Strategy, StudentEMA

__all__ = ["FixMatch"]


class FixMatch(Strategy):
    name = "fixmatch"
    card_name = "FixMatch"
    card_source = "its own confident predictions on weakly augmented unlabeled images"
    card_how = (
        "FixMatch (Sohn et al., 2020): the student learns from the labels and, on the unlabeled images, its confident "
        "predictions on a weakly augmented view become the targets of a strongly augmented view. No pretrained model was "
        "reused."
    )
    uses_unlabeled = True

    def __init__(self, trainer):
        super().__init__(trainer)
        decay = self.config.eval_ema_decay
        self.eval_ema = StudentEMA(trainer, decay) if decay > 0 else None

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        cfg, trainer = self.config, self.trainer
        with torch.no_grad():
            conf, pseudo = logits_u.softmax(-1).max(-1)
            mask = (conf >= cfg.confidence_threshold).float()
        strong = strong_augment(trainer.preprocess(images_u), gen).to(logits_u.device)
        loss = (F.cross_entropy(trainer.student(strong), pseudo, reduction="none") * mask).mean()
        return cfg.unlabeled_weight * loss, {"fixmatch_loss": loss.item(), "mask_rate": mask.mean().item()}

    def after_step(self, step):
        if self.eval_ema is not None:
            self.eval_ema.update(step)
        return {}

    def on_train_end(self) -> None:
        if self.eval_ema is not None:
            self.eval_ema.deliver()
