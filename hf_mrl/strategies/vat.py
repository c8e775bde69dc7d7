"""VAT: virtual adversarial training (Miyato et al., 2018): smoothness against the worst small perturbation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Strategy, rampup

__all__ = ["VirtualAdversarial"]


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / (d.flatten(1).norm(dim=1).view(-1, *([1] * (d.ndim - 1))) + 1e-12)


class VirtualAdversarial(Strategy):
    name = "vat"
    uses_unlabeled = True

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        cfg, student = self.config, self.trainer.student
        x = self.trainer.inputs(images_u, gen)
        p = logits_u.detach().softmax(-1)
        d = _unit(torch.randn(x.shape, generator=gen).to(x))
        d.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(student(x + 1e-6 * d), -1), p, reduction="batchmean")
        (grad,) = torch.autograd.grad(kl, d)
        r_adv = cfg.vat_epsilon * _unit(grad.detach())
        loss = F.kl_div(F.log_softmax(student(x + r_adv), -1), p, reduction="batchmean")
        weight = cfg.unlabeled_weight * rampup(step, cfg.max_steps, cfg.rampup_fraction)
        return weight * loss, {"vat_loss": loss.item()}
