"""The outer gradient of a bi-level problem through s differentiable (unrolled) inner SGD steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call

__all__ = ["unrolled_hypergradient", "functional_student"]

Params = dict[str, torch.Tensor]


def functional_student(model: torch.nn.Module) -> tuple[Params, Callable[[Params, torch.Tensor], torch.Tensor]]:
    """The model's trainable parameters and a call `f(params, x)` that runs it with those parameters.

    Buffers (BatchNorm statistics) are cloned per call so the unrolled step does not move the real
    model's running statistics.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def call(p: Params, x: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**{n: b.clone() for n, b in buffers.items()}, **p}), (x,))
        return getattr(out, "logits", out)

    return params, call


def unrolled_hypergradient(
    params: Params,
    inner_loss: Callable[[Params, int], torch.Tensor],
    outer_loss: Callable[[Params], torch.Tensor],
    hyperparams: Sequence[torch.Tensor],
    inner_lr: float,
    steps: int = 1,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """d outer(theta_s(phi)) / d phi, where theta_{t+1} = theta_t - inner_lr * grad inner(theta_t, phi).

    Args:
        params: the student's parameters theta_0 (leaves of the student; they receive no gradient here).
        inner_loss: `inner_loss(theta, t)`, differentiable in theta and in the hyperparameters phi.
        outer_loss: `outer_loss(theta)`, the upper-level objective on the unrolled parameters.
        hyperparams: phi, the tensors to differentiate with respect to.
        inner_lr: alpha, the step size of the unrolled SGD steps.
        steps: s, the number of unrolled steps.

    Returns:
        The gradients for each of `hyperparams` (zeros where phi does not reach the outer loss) and
        the outer loss value (detached).
    """
    names = list(params)
    theta = dict(params)
    for t in range(steps):
        loss = inner_loss(theta, t)
        grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=True)
        theta = {n: theta[n] - inner_lr * g for n, g in zip(names, grads, strict=True)}
    out = outer_loss(theta)
    grads = torch.autograd.grad(out, list(hyperparams), allow_unused=True)
    grads = [torch.zeros_like(h) if g is None else g for h, g in zip(hyperparams, grads, strict=True)]
    return grads, out.detach()
