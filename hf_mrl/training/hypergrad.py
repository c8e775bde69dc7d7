"""The outer gradient of a bi-level problem through s differentiable (unrolled) inner SGD steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call

__all__ = ["unrolled_hypergradient", "first_order_hypergradient", "functional_student"]

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


def first_order_hypergradient(
    params: Params,
    call: Callable[[Params, torch.Tensor], torch.Tensor],
    inner_grad: Params,
    inner_x: torch.Tensor,
    inner_term: Callable[[torch.Tensor], torch.Tensor],
    outer_loss: Callable[[Params], torch.Tensor],
    hyperparams: Sequence[torch.Tensor],
    inner_lr: float,
    jvp_mode: str = "fd",
    inner_logits: torch.Tensor | None = None,
    fd_scale: float = 1e-4,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The one-step hypergradient of `unrolled_hypergradient`, without a second-order graph through the student.

    With theta' = theta - a * g(theta, phi) and v = grad outer(theta') (a fixed vector),

        d outer(theta') / d phi = partial_phi outer - a * d/dphi [ v . g(theta, phi) ]
                                = partial_phi outer - a * d/dphi sum_b dT/dz_b (z, phi) . (dz_b/dtheta v),

    when phi reaches the inner loss only through a term T(z, phi) of the student's logits z = f(theta, x) on
    one batch. dz/dtheta v is a Jacobian-vector product: exact forward-mode AD (`jvp_mode="jvp"`) or a
    central difference of two gradient-free forwards (`"fd"`, step `fd_scale / |v|`; in float32 on a ReLU student
    about 1e-3 relative error). Either way the student is differentiated to first order only.

    Args:
        params: theta (not modified).
        call: `call(params, x)`, the student as a function (see `functional_student`).
        inner_grad: g = grad_theta of the inner loss at theta (e.g. the training step's own gradient).
        inner_x: the inner batch; its logits z = call(params, inner_x) feed `inner_term`.
        inner_term: T(z), the part of the inner loss that depends on phi, as a function of all of z.
        outer_loss: `outer_loss(theta')`; may also depend on phi directly.
        hyperparams: phi.
        inner_lr: a.
        jvp_mode: `fd` or `jvp`.
        inner_logits: z if already at hand (the training step's forward); computed otherwise.
        fd_scale: the finite-difference step, as a parameter-space distance.

    Returns:
        As `unrolled_hypergradient`: gradients per hyperparameter (zeros where unused), outer loss (detached).
    """
    if jvp_mode not in ("fd", "jvp"):
        raise ValueError(f"jvp_mode must be 'fd' or 'jvp'; got {jvp_mode!r}.")
    names = list(params)
    theta = {n: params[n].detach() for n in names}
    moved = {n: (theta[n] - inner_lr * inner_grad[n].detach()).requires_grad_(True) for n in names}
    out = outer_loss(moved)
    v = dict(zip(names, torch.autograd.grad(out, [moved[n] for n in names], retain_graph=True), strict=True))
    with torch.no_grad():
        if jvp_mode == "jvp":
            from torch.func import jvp

            z, u = jvp(lambda p: call(p, inner_x), (theta,), (v,))
        else:
            norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values())).item()
            if norm == 0.0:
                u = None
            else:
                eps = fd_scale / norm
                z_plus = call({n: theta[n] + eps * v[n] for n in names}, inner_x)
                z_minus = call({n: theta[n] - eps * v[n] for n in names}, inner_x)
                u = (z_plus - z_minus) / (2 * eps)
            z = inner_logits if inner_logits is not None else call(theta, inner_x)
    total = out
    if u is not None:
        z = z.detach().requires_grad_(True)
        (dz,) = torch.autograd.grad(inner_term(z), z, create_graph=True)
        total = total - inner_lr * (dz * u.to(dz.dtype)).sum()
    grads = torch.autograd.grad(total, list(hyperparams), allow_unused=True)
    grads = [torch.zeros_like(h) if g is None else g for h, g in zip(hyperparams, grads, strict=True)]
    return grads, out.detach()
