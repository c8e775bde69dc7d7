"""TE, as a mean teacher (Tarvainen & Valpola, 2017): consistency with an EMA of the student.

Temporal ensembling keeps one ensemble prediction per sample; the mean teacher averages weights instead,
which needs no per-sample state and is the variant the same authors recommend. As in the paper, the model evaluated
and delivered is the EMA (teacher) model: its weights and BatchNorm statistics replace the student's when training
ends (`StudentEMA`, shared with FixMatch's evaluation EMA).
"""

from __future__ import annotations

import torch

from hf_mrl.training.strategies.base import Strategy, StudentEMA, rampup

__all__ = ["MeanTeacher"]


class MeanTeacher(Strategy):
    name = "mean-teacher"
    card_name = "mean teacher"
    card_source = "consistency with a moving average of its own weights on the unlabeled images"
    card_how = (
        "mean teacher (Tarvainen & Valpola, 2017): the student learns from the labels and keeps its predictions on the "
        "unlabeled images close to those of an exponential moving average of its own weights. No pretrained model was "
        "reused."
    )
    uses_unlabeled = True

    def __init__(self, trainer):
        super().__init__(trainer)
        self.student_ema = StudentEMA(trainer, self.config.ema_decay)
        self.ema = self.student_ema.model  # the teacher

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        cfg = self.config
        with torch.no_grad():
            self.ema.eval()  # its BatchNorm statistics are themselves an average of the student's
            target = self.ema(self.trainer.inputs(images_u, gen)).softmax(-1)  # another weak view
        loss = ((logits_u.softmax(-1) - target) ** 2).sum(-1).mean()
        weight = cfg.unlabeled_weight * rampup(step, cfg.max_steps, cfg.rampup_fraction)
        return weight * loss, {"consistency_loss": loss.item()}

    def after_step(self, step):
        self.student_ema.update(step)
        return {}

    def on_train_end(self) -> None:
        """Evaluate (and deliver) the EMA weights, as Tarvainen & Valpola do."""
        self.student_ema.deliver()
