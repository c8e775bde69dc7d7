"""The bi-level MRL trainer (and the supervised-only baseline), driven by Accelerate.

Inner problem: student steps on CE(labeled) + lambda * Omega_phi(unlabeled), Omega a soft distillation
toward the attention reuser's prediction R_phi. Outer problem: every `outer_every` steps, one Adam
step on the prototypes phi along the gradient of the labeled loss of an unrolled student step. By
default the unrolled step is the training step itself (its batch and gradient), and the hypergradient is
first order in the student (`hf_mrl.hypergrad.first_order_hypergradient`), so an outer step costs about
one labeled forward/backward and two forwards.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from .augment import translate as _translate
from .config import MRLConfig
from .embedding import Embedding
from .hypergrad import first_order_hypergradient, functional_student, unrolled_hypergradient
from .losses import kd_loss
from .pool import ModelPool
from .reuser import AttentionReuser
from .student import create_student, student_preprocess

__all__ = ["TargetData", "ReuseInputs", "MRLTrainer", "compute_reuse_inputs", "kd_loss", "make_accelerator"]

logger = logging.getLogger(__name__)


def make_accelerator(**kwargs) -> Accelerator:
    """An Accelerator that also goes multi-process on a machine without GPU.

    Accelerate only picks its multi-CPU (gloo) mode when asked for the CPU explicitly; without this,
    `accelerate launch --num_processes 2` on a CPU machine would run two unrelated single processes.
    """
    kwargs.setdefault("cpu", not torch.cuda.is_available())
    return Accelerator(**kwargs)


@dataclass
class TargetData:
    """The target task as tensors: uint8 images (N, 3, H, W), int64 labels (N,), optional domains (N,)."""

    label_names: list[str]
    labeled_images: torch.Tensor
    labeled_labels: torch.Tensor
    unlabeled_images: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_domains: torch.Tensor | None = None
    domain_names: list[str] | None = None
    # Latent-domain labels of the training data: read only by oracle routing, a reference, never by a method.
    labeled_domains: torch.Tensor | None = None
    unlabeled_domains: torch.Tensor | None = None
    # True labels of the unlabeled set, when the data have them: validation for benchmarks and ablations only.
    unlabeled_labels: torch.Tensor | None = None

    def __post_init__(self):
        c = len(self.label_names)
        if len(self.labeled_labels) == 0:
            raise ValueError("The labeled set is empty: MRL needs a few labeled samples per class.")
        if len(self.unlabeled_images) == 0:
            raise ValueError("The unlabeled set is empty: MRL distils on unlabeled samples.")
        if len(self.labeled_images) != len(self.labeled_labels):
            raise ValueError("labeled_images and labeled_labels differ in length.")
        missing = sorted(set(range(c)) - set(self.labeled_labels.tolist()))
        if missing:
            names = [self.label_names[i] for i in missing]
            raise ValueError(f"Classes {names} have no labeled sample; label at least one sample of each class.")
        if self.labeled_labels.min() < 0 or self.labeled_labels.max() >= c:
            raise ValueError(
                f"Labels must lie in [0, {c}); got {self.labeled_labels.min()}..{self.labeled_labels.max()}."
            )


@dataclass
class ReuseInputs:
    """Teacher probabilities H (N, K, C) and raw psi features (N, p) for the labeled, unlabeled, test sets."""

    probs_l: torch.Tensor
    probs_u: torch.Tensor
    probs_t: torch.Tensor
    feats_l: torch.Tensor
    feats_u: torch.Tensor
    feats_t: torch.Tensor


def compute_reuse_inputs(
    pool: ModelPool, embedding: Embedding, data: TargetData, progress: bool = False, accelerator=None
) -> ReuseInputs:
    """Run every teacher once over each set (cached), and the embedding on top.

    With a multi-process `accelerator`, every process must call this (a collective call): each runs the teachers
    on its share of the samples that no cache holds, and all get every result.
    """
    sets = {"l": data.labeled_images, "u": data.unlabeled_images, "t": data.test_images}
    probs = {k: pool.probs(v, progress=progress, accelerator=accelerator) for k, v in sets.items()}
    if accelerator is not None and accelerator.num_processes > 1:
        with accelerator.main_process_first():  # an encoder's features: computed and cached once, then read
            feats = {k: embedding(sets[k], probs[k]) for k in sets}
    else:
        feats = {k: embedding(sets[k], probs[k]) for k in sets}
    return ReuseInputs(**{f"probs_{k}": v for k, v in probs.items()}, **{f"feats_{k}": v for k, v in feats.items()})


class _ReuseGate(torch.nn.Module):
    """s = sigmoid(logit): the reuse strength, an outer variable next to the prototypes."""

    def __init__(self, init: float, trainable: bool = True):
        super().__init__()
        init = min(max(init, 1e-4), 1 - 1e-4)
        self.logit = torch.nn.Parameter(torch.tensor(math.log(init / (1 - init))), requires_grad=trainable)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)


class _Step:
    """Training progress, saved with the Accelerate state."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"step": self.value}

    def load_state_dict(self, state):
        self.value = int(state["step"])


class MRLTrainer:
    """Trains a student by MRL, or by supervised learning only (`config.method="supervised"`).

    Args:
        config: the hyperparameters.
        data: the target task.
        reuse: teacher probabilities and psi features (required for `mrl`), from `compute_reuse_inputs`.
        teacher_ids: the pool's ids, recorded in the reuser config.
        accelerator: shared across trainers in one process; created when None.
        student_spec: `{"architecture": ..., "model_args": ...}` for `create_student`.

    >>> trainer = MRLTrainer(MRLConfig(max_steps=10), data, reuse, teacher_ids=pool.ids)  # doctest: +SKIP
    >>> student = trainer.train(); predictions = trainer.predict(data.test_images)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: MRLConfig,
        data: TargetData,
        reuse: ReuseInputs | None = None,
        teacher_ids: list[str] | None = None,
        accelerator: Accelerator | None = None,
        student_spec: dict | None = None,
    ):
        self.config = config
        self.data = data
        self.reuse = reuse
        self.accelerator = accelerator or make_accelerator()
        from .strategies import get_strategy

        strategy_cls = get_strategy(config.method)
        if strategy_cls.needs_teachers and reuse is None:
            raise ValueError(f"method={config.method!r} needs teacher outputs: pass reuse=compute_reuse_inputs(...).")
        if config.method == "mrl" and not teacher_ids:
            raise ValueError("method='mrl' needs teacher_ids (the pool's ids) to record in the reuser.")
        self.teacher_ids = list(teacher_ids or [])
        torch.manual_seed(config.seed)
        image_size = data.labeled_images.shape[-1]
        self.student = create_student(data.label_names, image_size=image_size, **(student_spec or {}))
        self.preprocess = student_preprocess(self.student)
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.student, self.optimizer = self.accelerator.prepare(self.student, self.optimizer)
        self.step = _Step()
        self.accelerator.register_for_checkpointing(self.step)
        self.reuser: AttentionReuser | None = None
        self.strategy = strategy_cls(self)
        self.history: list[dict[str, float]] = []
        self._pending_outer = None
        self.replicas_in_sync = True

    def _init_reuser(self) -> None:
        r, cfg = self.reuse, self.config
        self.reuser = AttentionReuser(
            teachers=self.teacher_ids,
            label_names=self.data.label_names,
            embed_dim=r.feats_u.shape[1],
            embedding=Embedding(cfg.embedding).spec,
            temperature=cfg.attention_temperature,
            use_bias=cfg.use_bias,
        )
        self.reuser.fit_standardizer(r.feats_u)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.reuser.init_prototypes(r.feats_l, r.probs_l, self.data.labeled_labels, generator=gen)
        self.reuser.to(self.accelerator.device)
        # The reuser is tiny and its gradient is reduced by hand, so it is not wrapped in DDP.
        # Reuse strength s in (0, 1) scales the distillation term; the outer problem can turn it toward 0
        # when distilling the reuser raises the labeled loss (a pool that cannot help).
        self.reuse_gate = _ReuseGate(cfg.reuse_strength_init, trainable=cfg.learn_reuse_strength)
        self.reuse_gate.to(self.accelerator.device)
        self.outer_params = [p for p in (*self.reuser.parameters(), *self.reuse_gate.parameters()) if p.requires_grad]
        self.outer_optimizer = torch.optim.Adam(self.outer_params, lr=cfg.outer_lr)
        self.accelerator.register_for_checkpointing(self.reuser, self.reuse_gate, self.outer_optimizer)

    @property
    def reuse_strength(self) -> float:
        """The current reuse strength s (1.0 when the method has no reuser)."""
        return self.reuse_gate().item() if self.reuser is not None else 1.0

    # -- batches ---------------------------------------------------------------------------------
    def _batch_indices(self, step: int, stream: int = 0) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
        """Global batch for `step`, sliced to this process; a function of (seed, stream, step) only, so
        a resumed run sees exactly the batches an uninterrupted one would. Outer steps draw from their
        own streams so they never reuse a training step's batch."""
        key = hashlib.sha256(f"{self.config.seed}/{stream}/{step}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
        n, m = len(self.data.labeled_labels), len(self.data.unlabeled_images)
        idx_l = torch.randint(0, n, (self.config.batch_size,), generator=gen)
        idx_u = torch.randint(0, m, (self.config.unlabeled_batch_size,), generator=gen)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return gen, idx_l[rank::world], idx_u[rank::world]

    def _inputs(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = self.preprocess(images)
        if self.config.augment:
            x = _translate(x, gen)
        return x.to(self.accelerator.device)

    def _reuse_targets(self, idx: torch.Tensor, labeled: bool = False) -> torch.Tensor:
        r, dev = self.reuse, self.accelerator.device
        feats, probs = (r.feats_l, r.probs_l) if labeled else (r.feats_u, r.probs_u)
        return self.reuser(feats[idx].to(dev), probs[idx].to(dev))["probs"]

    # -- one step ----------------------------------------------------------------------------------
    def training_step(self, step: int) -> dict[str, float]:
        """One student step: labeled CE plus the strategy's unlabeled term, then the strategy's after-step."""
        acc = self.accelerator
        gen, idx_l, idx_u = self._batch_indices(step)
        x_l = self._inputs(self.data.labeled_images[idx_l], gen)
        y_l = self.data.labeled_labels[idx_l].to(acc.device)
        self.student.train()
        logs: dict[str, float] = {}
        if self.strategy.uses_unlabeled:
            images_u = self.data.unlabeled_images[idx_u]
            x_u = self._inputs(images_u, gen)
            logits = self.student(torch.cat([x_l, x_u]))
            ce = F.cross_entropy(logits[: len(x_l)], y_l)
            unlabeled, extra = self.strategy.unlabeled_loss(logits[len(x_l) :], idx_u, images_u, gen, step)
            loss = ce + unlabeled
            logs.update(ce_loss=ce.item(), **extra)
        else:
            loss = F.cross_entropy(self.student(x_l), y_l)
            logs["ce_loss"] = loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        if self.strategy.uses_unlabeled:
            self.strategy.before_update(step, torch.cat([x_l, x_u]), logits.detach(), len(x_l), idx_u)
        self.optimizer.step()
        logs["loss"] = loss.item()
        logs.update(self.strategy.after_step(step))
        return logs

    def outer_step(self, step: int) -> dict[str, float]:
        """One hypergradient step on the prototypes, bias and reuse strength, averaged over processes.

        Uses the hypergradient that the training step of `step` prepared (`prepare_outer_step`) if there is
        one, and computes it on batches of its own otherwise.
        """
        acc = self.accelerator
        pending, self._pending_outer = getattr(self, "_pending_outer", None), None
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
        model = self.accelerator.unwrap_model(self.student)
        grad = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        if any(g is None for g in grad.values()):
            return
        scaler = getattr(self.accelerator, "scaler", None)
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
        cfg, acc = self.config, self.accelerator
        model = acc.unwrap_model(self.student)
        model.train()
        params, call = functional_student(model)
        dev = acc.device
        gen_o, idx_lo, _ = self._batch_indices(step, stream=1 + cfg.unroll_steps)
        x_lo = self._inputs(self.data.labeled_images[idx_lo], gen_o)
        y_lo = self.data.labeled_labels[idx_lo].to(dev)

        def outer_loss(theta):
            loss = F.cross_entropy(call(theta, x_lo), y_lo)
            if cfg.direct_weight > 0:
                r = self._reuse_targets(idx_lo, labeled=True)
                loss = loss + cfg.direct_weight * F.nll_loss(r.clamp_min(1e-8).log(), y_lo)
            return loss

        def batch(gen, idx_l, idx_u):  # inputs as training_step draws them: labeled, then unlabeled
            x_l = self._inputs(self.data.labeled_images[idx_l], gen)
            x_u = self._inputs(self.data.unlabeled_images[idx_u], gen)
            return torch.cat([x_l, x_u]), self.data.labeled_labels[idx_l].to(dev), idx_u

        def term(z, n_labeled, idx_u):  # the part of the inner loss that depends on phi
            kd = kd_loss(z[n_labeled:], self._reuse_targets(idx_u), cfg.kd_temperature)
            return cfg.kd_lambda * self.reuse_gate() * kd

        def inner_loss(theta, x, y, idx_u):
            z = call(theta, x)
            return F.cross_entropy(z[: len(y)], y) + term(z, len(y), idx_u), z

        if cfg.hypergradient == "unrolled":
            batches = [batch(*self._batch_indices(step, stream=1 + t)) for t in range(cfg.unroll_steps)]
            return unrolled_hypergradient(
                params,
                lambda theta, t: inner_loss(theta, *batches[t])[0],
                outer_loss,
                self.outer_params,
                cfg.inner_lr,
                cfg.unroll_steps,
            )
        if inner is None:
            x, y, idx_u = batch(*self._batch_indices(step, stream=1))
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

    # -- the loop ----------------------------------------------------------------------------------
    def train(self, checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True):
        """Run to `max_steps`; checkpoint under `checkpoint_dir`, resume from its latest state if asked.

        Returns the (unwrapped) student.
        """
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        if resume and checkpoint_dir is not None:
            latest = latest_checkpoint(checkpoint_dir)
            if latest is not None:
                acc.load_state(str(latest))
                logger.info("Resumed %s training from %s (step %d)", cfg.method, latest, self.step.value)
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step.value,
            desc=cfg.method,
            disable=not (progress and acc.is_local_main_process),
            mininterval=0.1 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not 10 a second
        )
        while self.step.value < cfg.max_steps:
            logs = self.training_step(self.step.value)
            self.step.value += 1
            self.history.append(logs)
            bar.update(1)
            if self.step.value % 20 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
            done = self.step.value == cfg.max_steps
            every = cfg.checkpoint_every and self.step.value % cfg.checkpoint_every == 0
            if checkpoint_dir is not None and (done or every):
                self.save_checkpoint(checkpoint_dir)
        bar.close()
        self._check_replicas()
        return acc.unwrap_model(self.student)

    def _check_replicas(self) -> None:
        """Every process must end with the same prototypes; diverged replicas mean a broken reduction."""
        acc = self.accelerator
        self.replicas_in_sync = True
        if acc.num_processes > 1 and self.reuser is not None:
            phi = torch.cat([p.detach().flatten() for p in self.reuser.parameters()])
            gathered = acc.gather(phi[None].contiguous())  # (world, K * p + K)
            self.replicas_in_sync = bool((gathered == gathered[0]).all())
            if not self.replicas_in_sync:
                raise RuntimeError("The attention prototypes differ across processes after training.")

    def save_checkpoint(self, checkpoint_dir: str | os.PathLike) -> Path:
        """Accelerate state at the current step; written to a temp name, then renamed (all-or-nothing)."""
        acc = self.accelerator
        final = Path(checkpoint_dir) / f"step_{self.step.value:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)  # a leftover of a crash mid-save
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            old = final.with_name(final.name + ".old")
            if final.exists():
                os.replace(final, old)  # never a moment without a complete checkpoint of this step
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Student predictions on uint8 images, sharded over processes and gathered in order."""
        from torch.utils.data import DataLoader, TensorDataset

        acc = self.accelerator
        loader = acc.prepare(DataLoader(TensorDataset(images), batch_size=batch_size))
        self.student.eval()
        preds = []
        for (x,) in loader:
            logits = self.student(self.preprocess(x.cpu()).to(acc.device))
            preds.append(acc.gather_for_metrics(logits.argmax(-1)))
        return torch.cat(preds).cpu()

    @torch.no_grad()
    def reuse_predictions(self, which: str = "t") -> dict[str, torch.Tensor]:
        """The reuser's predictions and weights on a precomputed set (`l`, `u` or `t`)."""
        r = self.reuse
        feats, probs = getattr(r, f"feats_{which}"), getattr(r, f"probs_{which}")
        out = self.reuser.cpu()(feats, probs)
        self.reuser.to(self.accelerator.device)
        return {"predictions": out["probs"].argmax(-1), "weights": out["weights"]}


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete `step_N` folder, or None."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    steps = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step_\d+", p.name)]
    return max(steps, key=lambda p: int(p.name.split("_")[1]), default=None)
