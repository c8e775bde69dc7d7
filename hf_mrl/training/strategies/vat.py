"""VAT: virtual adversarial training (Miyato et al., 2018): smoothness against the worst small perturbation.

One input x (one random translation of the unlabeled batch) serves the target p(y | x), the power-iteration probe
and the adversarial pass, so the divergence is exactly zero at r = 0 and its gradient at r = 0 is VAT's direction.
The extra passes (target, probe, adversarial) run with the BatchNorm running statistics frozen: they normalise with
the batch's own statistics, as in training, but leave the running averages used at evaluation untouched (Miyato et
al.'s `update_batch_stats=False`); the student's one ordinary forward per step remains the only one that updates
them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hf_mrl.training.strategies.base import Strategy, rampup

__all__ = ["VirtualAdversarial", "frozen_bn_stats", "vat_loss"]


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, *([1] * (d.ndim - 1)))


@contextmanager
def frozen_bn_stats(model: torch.nn.Module) -> Iterator[None]:
    """Forward passes inside leave every BatchNorm's running mean / variance / batch count as they were."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    try:
        yield
    finally:
        # through `.data`: a restore must not bump the buffers' version counters, which autograd checks when the
        # passes' graphs are differentiated later
        for m, (mean, var, count) in zip(bns, saved, strict=True):
            m.running_mean.data.copy_(mean)
            m.running_var.data.copy_(var)
            m.num_batches_tracked.data.copy_(count)


def _kl(model: torch.nn.Module, x: torch.Tensor, p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(model(x + r))), mean over the batch."""
    return F.kl_div(F.log_softmax(model(x + r), -1), p, reduction="batchmean")


def vat_loss(
    model: torch.nn.Module, x: torch.Tensor, epsilon: float, gen: torch.Generator, xi: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LDS loss, r_adv): one power iteration from a random direction of norm `xi`, on the single input `x`.

    The divergence is zero with a zero gradient at r = 0, so the probe's gradient is second order (~ xi * H d):
    `xi` must be large enough for it to survive float32 (Miyato et al.'s 1e-6 is for a first-order target that this
    code no longer has; common PyTorch ports use xi = 10 on images of norm ~30; ours are 3 x 32 x 32 in [-1, 1]).
    """
    with frozen_bn_stats(model):
        with torch.no_grad():
            p = model(x).softmax(-1)
        d = _unit(torch.randn(x.shape, generator=gen).to(x))
        d.requires_grad_(True)
        (grad,) = torch.autograd.grad(_kl(model, x, p, xi * d), d)
        r_adv = epsilon * _unit(grad.detach())
        return _kl(model, x, p, r_adv), r_adv


class VirtualAdversarial(Strategy):
    name = "vat"
    card_name = "VAT"
    card_source = "smoothness of its predictions around the unlabeled images"
    card_how = (
        "virtual adversarial training (VAT, Miyato et al., 2018): the student learns from the labels and keeps its "
        "predictions on the unlabeled images stable under the small input perturbation that changes them most. No "
        "pretrained model was reused."
    )
    uses_unlabeled = True

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        cfg = self.config
        x = self.trainer.inputs(images_u, gen)
        loss, _ = vat_loss(self.trainer.student, x, cfg.vat_epsilon, gen)
        weight = cfg.unlabeled_weight * rampup(step, cfg.max_steps, cfg.rampup_fraction)
        return weight * loss, {"vat_loss": loss.item()}
