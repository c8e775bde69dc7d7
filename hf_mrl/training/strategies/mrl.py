"""MRL: distil toward the attention reuser R_phi, whose prototypes follow the labeled hypergradient.

Inner problem: student steps on CE(labeled) + s * lambda * Omega_phi(unlabeled), Omega a soft distillation toward
the reuser's prediction R_phi. Outer problem: every `outer_every` steps, one Adam step on the prototypes, bias and
reuse strength s along the gradient of the labeled loss of an unrolled student step. By default the unrolled step is
the training step itself (its batch and gradient) and the hypergradient is first order in the student
(`hf_mrl.training.hypergrad.first_order_hypergradient`): an outer step costs about one labeled forward/backward and two
forwards. The reuser, the gate and the outer optimiser live here; the student loop knows nothing of them.

With `outer_labels="heldout"` the outer objective is scored on labels the inner step has not trained on: the labeled
set is split once into `outer_folds` folds, and during the `outer_every` steps of outer cycle c (steps
c * outer_every .. (c + 1) * outer_every - 1) fold c mod outer_folds is left out of the inner CE; outer step c draws
its labeled batch from that fold only. The strategy does this by routing the trainer's `batch_indices` through
`inner_batch_indices` (still a function of seed, stream and step only, so a resumed run sees the same batches).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from hf_mrl.data.images import batch_rows
from hf_mrl.reuse.embedding import Embedding
from hf_mrl.reuse.reuser import AttentionReuser
from hf_mrl.training.hypergrad import first_order_hypergradient, functional_student, unrolled_hypergradient
from hf_mrl.training.losses import kd_loss
from hf_mrl.training.strategies.base import DistillStrategy

__all__ = ["MRL", "label_folds"]


def label_folds(labels: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """Split labeled indices into `min(folds, n)` disjoint folds covering them all, interleaving the classes.

    A seeded permutation, stably sorted by class, dealt round robin: every fold gets labels of as many classes as
    its size allows, and folds differ in size by at most one.
    """
    n = len(labels)
    if n < 2:
        raise ValueError(f"outer_labels='heldout' needs at least 2 labeled samples; got {n}.")
    key = hashlib.sha256(f"{seed}/label-folds".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
    perm = torch.randperm(n, generator=gen)
    order = perm[torch.sort(labels[perm].cpu(), stable=True).indices]
    k = min(int(folds), n)
    return [order[i::k].sort().values for i in range(k)]


class _ReuseGate(torch.nn.Module):
    """s = sigmoid(logit): the reuse strength, an outer variable next to the prototypes."""

    def __init__(self, init: float, trainable: bool = True):
        super().__init__()
        init = min(max(init, 1e-4), 1 - 1e-4)
        self.logit = torch.nn.Parameter(torch.tensor(math.log(init / (1 - init))), requires_grad=trainable)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)


class MRL(DistillStrategy):
    name = "mrl"
    card_name = "MRL"
    card_source = "an attention-weighted pool of {k} teacher(s)"
    card_how = (
        "an attention reuser weights the teachers per input; the student distils the weighted teacher mixture on the "
        "unlabeled images and learns from the labels, while the reuser's prototypes follow the hypergradient of the "
        "student's labeled loss (bi-level)."
    )

    def __init__(self, trainer):
        super().__init__(trainer)
        if not trainer.teacher_ids:
            raise ValueError("method='mrl' needs teacher_ids (the pool's ids) to record in the reuser.")
        r, cfg, acc = trainer.reuse, self.config, trainer.accelerator
        self.reuser = AttentionReuser(
            teachers=trainer.teacher_ids,
            label_names=trainer.data.label_names,
            embed_dim=r.feats_u.shape[1],
            embedding=Embedding(cfg.embedding).spec,
            temperature=cfg.attention_temperature,
            use_bias=cfg.use_bias,
        )
        self.reuser.fit_standardizer(r.feats_u)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.reuser.init_prototypes(r.feats_l, r.probs_l, trainer.data.labeled_labels, generator=gen)
        if cfg.prototype_init != "labeled":
            with torch.no_grad():
                self.reuser.bias.zero_()
                if cfg.prototype_init == "uniform":
                    self.reuser.prototypes.zero_()
                else:  # random
                    self.reuser.prototypes.copy_(torch.randn(self.reuser.prototypes.shape, generator=gen))
        self._init_phi = (self.reuser.prototypes.detach().clone(), self.reuser.bias.detach().clone())
        self.reuser.to(acc.device)
        self.folds = None  # (labeled index tensors per fold) under outer_labels="heldout"
        self._base_batch_indices = trainer.batch_indices
        if cfg.outer_labels == "heldout":
            self.folds = label_folds(trainer.data.labeled_labels, cfg.outer_folds, cfg.seed)
            trainer.batch_indices = self.inner_batch_indices
        # The reuser is tiny and its gradient is reduced by hand, so it is not wrapped in DDP.
        # Reuse strength s in (0, 1) scales the distillation term; the outer problem can turn it toward 0
        # when distilling the reuser raises the labeled loss (a pool that cannot help).
        self.reuse_gate = _ReuseGate(cfg.reuse_strength_init, trainable=cfg.learn_reuse_strength).to(acc.device)
        self.outer_params = [p for p in (*self.reuser.parameters(), *self.reuse_gate.parameters()) if p.requires_grad]
        self.outer_optimizer = torch.optim.Adam(self.outer_params, lr=cfg.outer_lr)
        trainer.register_for_checkpointing(
            reuser=self.reuser, reuse_gate=self.reuse_gate, outer_optimizer=self.outer_optimizer
        )
        self._pending_outer = None
        self.replicas_in_sync = True

    # -- which labels the inner and the outer problem see ------------------------------------------------
    def heldout_fold(self, step: int) -> torch.Tensor | None:
        """Indices of the labeled fold left out of the inner CE at training step `step` (None: `shared`)."""
        if self.folds is None:
            return None
        return self.folds[(step // self.config.outer_every) % len(self.folds)]

    def _redraw(self, pool: torch.Tensor, step: int, stream: int, tag: str) -> torch.Tensor:
        """A global labeled batch drawn from `pool`, a function of (seed, stream, step), sliced to this process."""
        key = hashlib.sha256(f"{self.config.seed}/{stream}/{step}/{tag}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
        idx = pool[torch.randint(0, len(pool), (self.config.batch_size,), generator=gen)]
        acc = self.trainer.accelerator
        return idx[acc.process_index :: acc.num_processes]

    def inner_batch_indices(self, step: int, stream: int = 0):
        """The trainer's batch for `step`, its labeled part drawn from outside the fold held out at `step`."""
        gen, idx_l, idx_u = self._base_batch_indices(step, stream)
        held = self.heldout_fold(step)
        if held is None:
            return gen, idx_l, idx_u
        keep = torch.ones(len(self.trainer.data.labeled_labels), dtype=torch.bool)
        keep[held] = False
        return gen, self._redraw(keep.nonzero().squeeze(1), step, stream, "inner"), idx_u

    def outer_batch_indices(self, step: int):
        """The labeled batch that scores outer step `step`: the held-out fold, or (`shared`) any labels."""
        stream = 1 + self.config.unroll_steps
        gen, idx_l, idx_u = self._base_batch_indices(step, stream)
        held = self.heldout_fold(step)
        if held is None:
            return gen, idx_l, idx_u
        return gen, self._redraw(held, step, stream, "outer"), idx_u

    @torch.no_grad()
    def phi_movement(self) -> dict[str, float]:
        """How far the prototypes and bias are from their initialisation (logged on the last step).

        `proto_l2_from_init`: mean over teachers of |P_k - P_k(0)|; `proto_rel_l2_from_init`: that over the mean
        |P_k(0)| (NaN from a zero init); `proto_cos_to_init`: mean cosine of P_k with P_k(0) (NaN from a zero init);
        `bias_l2_from_init`: |b - b(0)|.
        """
        p0, b0 = self._init_phi
        p = self.reuser.prototypes.detach().cpu()
        d = (p - p0).norm(dim=1).mean().item()
        n0 = p0.norm(dim=1)
        nan = float("nan")
        rel = d / n0.mean().item() if n0.min() > 0 else nan
        cos = F.cosine_similarity(p, p0, dim=1).mean().item() if n0.min() > 0 else nan
        bias = (self.reuser.bias.detach().cpu() - b0).norm().item()
        return {
            "proto_l2_from_init": d,
            "proto_rel_l2_from_init": rel,
            "proto_cos_to_init": cos,
            "bias_l2_from_init": bias,
        }

    @property
    def reuse_strength(self) -> float:
        """The current reuse strength s."""
        return self.reuse_gate().item()

    def reuse_targets(self, idx: torch.Tensor, labeled: bool = False) -> torch.Tensor:
        """R_phi (B, C) on labeled or unlabeled samples `idx`, differentiable in phi."""
        r, dev = self.trainer.reuse, self.trainer.accelerator.device
        feats, probs = (r.feats_l, r.probs_l) if labeled else (r.feats_u, r.probs_u)
        return self.reuser(feats[idx].to(dev), probs[idx].to(dev))["probs"]

    def targets(self, idx_u: torch.Tensor) -> torch.Tensor:
        return self.reuse_targets(idx_u)

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        loss, logs = super().unlabeled_loss(logits_u, idx_u, images_u, gen, step)
        strength = self.reuse_strength
        return strength * loss, {**logs, "reuse_strength": strength}

    def before_update(self, step, x, logits, n_labeled, idx_u):
        if (step + 1) % self.config.outer_every == 0:
            self.prepare_outer_step(step, x, logits, n_labeled, idx_u)

    def after_step(self, step):
        logs = self.outer_step(step) if (step + 1) % self.config.outer_every == 0 else {}
        if step + 1 == self.config.max_steps:
            logs = {**logs, **self.phi_movement()}
        return logs

    # -- the outer problem ---------------------------------------------------------------------------
    def outer_step(self, step: int) -> dict[str, float]:
        """One hypergradient step on the prototypes, bias and reuse strength, averaged over processes.

        Uses the hypergradient that the training step of `step` prepared (`prepare_outer_step`) if there is
        one, and computes it on batches of its own otherwise.
        """
        acc = self.trainer.accelerator
        pending, self._pending_outer = self._pending_outer, None
        if pending is not None and pending[0] == step:
            grads, outer = pending[1]
        else:
            grads, outer = self.hypergradient(step)
        for p, g in zip(self.outer_params, grads, strict=True):
            p.grad = acc.reduce(g.contiguous(), reduction="mean") if acc.num_processes > 1 else g
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        return {"outer_loss": outer.item()}

    def prepare_outer_step(self, step: int, x: torch.Tensor, logits: torch.Tensor, n_labeled: int, idx_u) -> None:
        """Between the backward and the update of training step `step`: the hypergradient through this very
        step (its batch, its logits and its gradient, already reduced over processes), for `outer_step`."""
        if self.config.hypergradient == "unrolled":
            return
        acc = self.trainer.accelerator
        model = acc.unwrap_model(self.trainer.student)
        grad = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        if any(g is None for g in grad.values()):
            return
        scaler = getattr(acc, "scaler", None)
        if scaler is not None:  # fp16: the gradients are still multiplied by the loss scale
            scale = scaler.get_scale()
            grad = {n: g / scale for n, g in grad.items()}
        if not all(torch.isfinite(g).all() for g in grad.values()):
            return  # an overflowing fp16 step: the scaler skips it, and so does the outer step
        self._pending_outer = (step, self.hypergradient(step, (x, logits, n_labeled, idx_u, grad)))

    def hypergradient(self, step: int, inner: tuple | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """d outer / d (prototypes, bias, reuse strength) for the outer step after `step`, and the outer loss.

        `inner` = (inputs, logits, number labeled, unlabeled indices, gradient) of the training step to unroll;
        without it the unrolled step draws its own batch (stream 1) and computes its gradient here.
        """
        cfg, tr = self.config, self.trainer
        acc, data = tr.accelerator, tr.data
        model = acc.unwrap_model(tr.student)
        model.train()
        params, call = functional_student(model)
        dev = acc.device
        gen_o, idx_lo, _ = self.outer_batch_indices(step)
        x_lo = tr.inputs(batch_rows(data.labeled_images, idx_lo), gen_o)
        y_lo = data.labeled_labels[idx_lo].to(dev)

        def outer_loss(theta):
            loss = F.cross_entropy(call(theta, x_lo), y_lo)
            if cfg.direct_weight > 0:
                r = self.reuse_targets(idx_lo, labeled=True)
                loss = loss + cfg.direct_weight * F.nll_loss(r.clamp_min(1e-8).log(), y_lo)
            return loss

        def batch(gen, idx_l, idx_u):  # inputs as training_step draws them: labeled, then unlabeled
            x_l = tr.inputs(batch_rows(data.labeled_images, idx_l), gen)
            x_u = tr.inputs(batch_rows(data.unlabeled_images, idx_u), gen)
            return torch.cat([x_l, x_u]), data.labeled_labels[idx_l].to(dev), idx_u

        def term(z, n_labeled, idx_u):  # the part of the inner loss that depends on phi
            kd = kd_loss(z[n_labeled:], self.reuse_targets(idx_u), cfg.kd_temperature)
            return cfg.kd_lambda * self.reuse_gate() * kd

        def inner_loss(theta, x, y, idx_u):
            z = call(theta, x)
            return F.cross_entropy(z[: len(y)], y) + term(z, len(y), idx_u), z

        if cfg.hypergradient == "unrolled":
            batches = [batch(*tr.batch_indices(step, stream=1 + t)) for t in range(cfg.unroll_steps)]
            return unrolled_hypergradient(
                params,
                lambda theta, t: inner_loss(theta, *batches[t])[0],
                outer_loss,
                self.outer_params,
                cfg.inner_lr,
                cfg.unroll_steps,
            )
        if inner is None:
            x, y, idx_u = batch(*tr.batch_indices(step, stream=1))
            theta = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            loss, z = inner_loss(theta, x, y, idx_u)
            grad = dict(zip(theta, torch.autograd.grad(loss, list(theta.values())), strict=True))
            inner = (x, z.detach(), len(y), idx_u, grad)
        x, logits, n_labeled, idx_u, grad = inner

        # Finite differences of low-precision forwards are noise: under mixed precision the JVP is exact.
        mode = "jvp" if acc.mixed_precision != "no" else cfg.hypergradient
        return first_order_hypergradient(
            params,
            call,
            grad,
            x,
            lambda z: term(z, n_labeled, idx_u),
            outer_loss,
            self.outer_params,
            cfg.inner_lr,
            mode,
            inner_logits=logits,
        )

    # -- after training --------------------------------------------------------------------------------
    def on_train_end(self) -> None:
        """Every process must end with the same prototypes; diverged replicas mean a broken reduction."""
        acc = self.trainer.accelerator
        self.replicas_in_sync = True
        if acc.num_processes > 1:
            phi = torch.cat([p.detach().flatten() for p in self.reuser.parameters()])
            gathered = acc.gather(phi[None].contiguous())  # (world, K * p + K)
            self.replicas_in_sync = bool((gathered == gathered[0]).all())
            if not self.replicas_in_sync:
                raise RuntimeError("The attention prototypes differ across processes after training.")

    @torch.no_grad()
    def reuse_predictions(self, split: str = "test") -> dict[str, torch.Tensor]:
        """The reuser's predictions and weights on a split's precomputed outputs (`labeled`, `unlabeled`, `test`)."""
        part = self.trainer.reuse.split(split)
        out = self.reuser.cpu()(part.feats, part.probs)
        self.reuser.to(self.trainer.accelerator.device)
        return {"predictions": out["probs"].argmax(-1), "weights": out["weights"]}
