"""MR-BS: distil from the single teacher with the best accuracy on the labeled data."""

from __future__ import annotations

import logging

from hf_mrl.training.strategies.base import DistillStrategy

__all__ = ["BestSingle"]

logger = logging.getLogger(__name__)


class BestSingle(DistillStrategy):
    name = "mr-bs"
    card_name = "MR-BS"
    card_source = "the one teacher of a pool of {k} most accurate on the labeled images"
    card_how = (
        "MR-BS (best single teacher): the teacher most accurate on the labeled images is picked; the student distils its "
        "predicted probabilities on the unlabeled images and learns from the labels."
    )

    def __init__(self, trainer):
        super().__init__(trainer)
        r, y = trainer.reuse, trainer.data.labeled_labels
        accuracy = (r.probs_l.argmax(-1) == y[:, None]).float().mean(0)  # (K,)
        self.teacher = int(accuracy.argmax())
        logger.info("MR-BS distils teacher %d (labeled accuracy %.3f)", self.teacher, accuracy[self.teacher])

    def targets(self, idx_u):
        return self.trainer.reuse.probs_u[idx_u, self.teacher]
