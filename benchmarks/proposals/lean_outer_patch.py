"""`python benchmarks/speed.py --patch benchmarks/proposals/lean_outer_patch.py`: a lean outer step for MRLTrainer (unroll_steps = 1), by monkeypatching.

The hypergradient of the unrolled step theta' = theta - a * grad_theta L_in(theta, phi) is

    d CE_out(theta') / d phi = -a * d/dphi [ v . grad_theta L_in(theta, phi) ],   v = grad CE_out(theta')   (v fixed)
                             = -a * d/dphi [ sum_b dL_in/dz_b (phi) . u_b ],      u = (dz/dtheta) v   (a JVP)

where z are the student logits of the inner batch. Only the distillation term of L_in depends on phi, through its
target R_phi and the reuse gate, so no second-order graph through the student is needed: one first-order inner
gradient, one first-order outer gradient at theta', one forward-mode JVP of the logits along v, and a tiny graph
over the (B, C) logits for phi. Exact (not an approximation): it matches `unrolled_hypergradient` to ~1e-7.

HF_MRL_LEAN=lean   the same batches as now (the unroll draws its own inner batch, stream 1).
HF_MRL_LEAN=fused  (default) the unroll reuses the training step's batch and its already computed (and, under DDP,
                   already all-reduced) gradient, as DARTS does: the outer step then costs one labeled fwd+bwd and
                   one JVP. Another batch choice, so other numbers than now (same estimator, another sample).
HF_MRL_CL=1        also run the student in channels_last (NHWC) memory format.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from hf_mrl.losses import kd_loss
from hf_mrl.trainer import MRLTrainer

MODE = os.environ.get("HF_MRL_LEAN", "fused")
JVP = os.environ.get("HF_MRL_JVP", "exact")  # "fd": a central finite difference (2 no-grad forwards, ~1% error)


def _call_fn(model):
    buffers = dict(model.named_buffers())

    def call(p, x):
        out = functional_call(model, ({**{n: b.clone() for n, b in buffers.items()}, **p}), (x,))
        return getattr(out, "logits", out)

    return call


def _gate(tr):
    gate = getattr(tr, "reuse_gate", None)
    return gate() if gate is not None else 1.0


def lean_grads(tr, step: int, fused_grads: dict | None = None):
    """(grads for tr.outer_params, outer loss). With fused_grads, the inner batch is the training batch of `step`."""
    cfg, acc = tr.config, tr.accelerator
    model = acc.unwrap_model(tr.student)
    model.train()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    call, dev = _call_fn(model), acc.device
    gen, idx_l, idx_u = tr._batch_indices(step) if fused_grads is not None else tr._batch_indices(step, stream=1)
    x_l = tr._inputs(tr.data.labeled_images[idx_l], gen)
    x_u = tr._inputs(tr.data.unlabeled_images[idx_u], gen)
    x_in, n_l = torch.cat([x_l, x_u]), len(x_l)
    if fused_grads is None:
        y_in = tr.data.labeled_labels[idx_l].to(dev)
        with torch.no_grad():
            r_in, s = tr._reuse_targets(idx_u), _gate(tr)
        th = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
        logits = call(th, x_in)
        loss = F.cross_entropy(logits[:n_l], y_in) + cfg.kd_lambda * s * kd_loss(
            logits[n_l:], r_in, cfg.kd_temperature
        )
        g = dict(zip(names, torch.autograd.grad(loss, [th[n] for n in names]), strict=True))
    else:
        g = fused_grads
    gen_o, idx_lo, _ = tr._batch_indices(step, stream=1 + cfg.unroll_steps)
    y_lo = tr.data.labeled_labels[idx_lo].to(dev)
    th1 = {n: (theta[n] - cfg.inner_lr * g[n]).requires_grad_(True) for n in names}
    ce_out = F.cross_entropy(call(th1, tr._inputs(tr.data.labeled_images[idx_lo], gen_o)), y_lo)
    v = dict(zip(names, torch.autograd.grad(ce_out, [th1[n] for n in names]), strict=True))
    with torch.no_grad():
        if JVP == "fd":  # DARTS-style: u ~ (z(theta + e v) - z(theta - e v)) / 2e, e = 1e-4 / |v|
            eps = 1e-4 / (torch.sqrt(sum((t**2).sum() for t in v.values())) + 1e-12)
            zp = call({n: theta[n] + eps * v[n] for n in names}, x_in)
            zm = call({n: theta[n] - eps * v[n] for n in names}, x_in)
            z, u = (zp + zm) / 2, (zp - zm) / (2 * eps)  # z(theta) to O(e^2)
        else:
            z, u = jvp(lambda p: call(p, x_in), (theta,), (v,))
    z_u = z[n_l:].detach().requires_grad_(True)
    term = cfg.kd_lambda * _gate(tr) * kd_loss(z_u, tr._reuse_targets(idx_u), cfg.kd_temperature)
    dz = torch.autograd.grad(term, z_u, create_graph=True)[0]
    total = -cfg.inner_lr * (dz * u[n_l:]).sum()
    out = ce_out.detach()
    if cfg.direct_weight > 0:
        r = tr._reuse_targets(idx_lo, labeled=True)
        direct = cfg.direct_weight * F.nll_loss(r.clamp_min(1e-8).log(), y_lo)
        total, out = total + direct, out + direct.detach()
    grads = torch.autograd.grad(total, tr.outer_params, allow_unused=True)
    return [torch.zeros_like(h) if gg is None else gg for h, gg in zip(tr.outer_params, grads, strict=True)], out


def _apply(tr, grads):
    acc = tr.accelerator
    for p, g in zip(tr.outer_params, grads, strict=True):
        p.grad = acc.reduce(g.contiguous(), reduction="mean") if acc.num_processes > 1 else g
    tr.outer_optimizer.step()
    tr.outer_optimizer.zero_grad(set_to_none=True)


_training_step = MRLTrainer.training_step


def training_step(self, step):
    outer = getattr(self, "reuser", None) is not None and (step + 1) % self.config.outer_every == 0
    if MODE != "fused" or not outer:
        return _training_step(self, step)
    opt = self.optimizer
    model = self.accelerator.unwrap_model(self.student)

    def step_then_keep(*args, **kwargs):  # before the student moves: theta and its (reduced) gradient
        g = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self._lean_pending = (step, lean_grads(self, step, fused_grads=g))
        return type(opt).step(opt, *args, **kwargs)

    opt.step = step_then_keep
    try:
        return _training_step(self, step)
    finally:
        del opt.step


def outer_step(self, step):
    pending = getattr(self, "_lean_pending", None)
    if pending is not None and pending[0] == step:
        grads, out = pending[1]
        self._lean_pending = None
    else:
        grads, out = lean_grads(self, step)
    _apply(self, grads)
    return {"outer_loss": out.item()}


MRLTrainer.training_step = training_step
MRLTrainer.outer_step = outer_step

if os.environ.get("HF_MRL_CL") == "1":
    _init, _inputs = MRLTrainer.__init__, MRLTrainer._inputs

    def __init__(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self.accelerator.unwrap_model(self.student).to(memory_format=torch.channels_last)

    def inputs(self, images, gen):
        return _inputs(self, images, gen).contiguous(memory_format=torch.channels_last)

    MRLTrainer.__init__, MRLTrainer._inputs = __init__, inputs
