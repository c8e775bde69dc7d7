"""Oracle routing (a reference, not a method): distil each sample from its true domain's teacher.

It reads the latent-domain labels of the training data, which no method may do, so it is a ceiling for
what instance-wise routing can reach. The teacher of a domain is the one most accurate on that domain's
labeled samples.
"""

from __future__ import annotations

import torch

from hf_mrl.training.strategies.base import DistillStrategy

__all__ = ["OracleRouting"]


class OracleRouting(DistillStrategy):
    name = "oracle"
    card_name = "oracle routing"
    card_source = "a pool of {k} teacher(s), each unlabeled image routed to the teacher of its true latent domain"
    card_how = (
        "oracle routing, a reference rather than a method: each unlabeled image is distilled from the teacher most "
        "accurate on the labeled images of its true latent domain, read from the domain labels of the training data "
        "(which real data do not have); the student also learns from the labels."
    )

    def __init__(self, trainer):
        super().__init__(trainer)
        data, r = trainer.data, trainer.reuse
        if data.labeled_domains is None or data.unlabeled_domains is None:
            raise ValueError("Oracle routing needs domain labels on the labeled and unlabeled data.")
        correct = (r.probs_l.argmax(-1) == data.labeled_labels[:, None]).float()  # (n, K)
        fallback = int(correct.mean(0).argmax())
        n_domains = int(max(data.labeled_domains.max(), data.unlabeled_domains.max())) + 1
        best = torch.full((n_domains,), fallback, dtype=torch.long)
        for d in range(n_domains):
            mask = data.labeled_domains == d
            if mask.any():
                best[d] = correct[mask].mean(0).argmax()
        self.teacher_of = best[data.unlabeled_domains]  # (m,)

    def targets(self, idx_u):
        return self.trainer.reuse.probs_u[idx_u, self.teacher_of[idx_u]]
