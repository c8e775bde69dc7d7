"""The small base every training strategy (MRL and the baselines) builds on.

A strategy adds an unlabeled-data term to the labeled cross-entropy of the shared student loop in
`StudentTrainer.training_step`, and may act after each optimiser step (an outer step, an EMA update). It reads the
loop's public context only (`trainer.config`, `data`, `reuse`, `teacher_ids`, `student`, `accelerator`,
`batch_indices`, `inputs`) and owns its own state.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from hf_mrl.hub.summary import MethodText
from hf_mrl.training.losses import kd_loss

if TYPE_CHECKING:
    from hf_mrl.training.trainer import StudentTrainer

__all__ = ["Strategy", "DistillStrategy", "StudentEMA", "rampup"]


def rampup(step: int, max_steps: int, fraction: float) -> float:
    """Sigmoid ramp-up from 0 to 1 over the first `fraction` of training (Laine & Aila, 2017)."""
    length = fraction * max_steps
    if length <= 0 or step >= length:
        return 1.0
    t = 1.0 - step / length
    return float(torch.exp(torch.tensor(-5.0 * t * t)))


class StudentEMA:
    """An exponential moving average of the student's weights: the model a strategy evaluates and delivers.

    `model` is a frozen copy of the (unwrapped) student, registered for Accelerate checkpointing so that a resumed
    run continues the same average. `update(step)`, after the optimiser step `step`, moves every `state_dict` entry
    toward the student's, BatchNorm running statistics included: floating-point entries as
    `ema = d * ema + (1 - d) * student` with the warm-up decay `d = min(decay, (step + 1) / (step + 10))`
    (Tarvainen & Valpola, 2017), integer ones (BatchNorm's batch count) copied. `deliver()` loads the average into the
    student, so that what is evaluated and saved is the EMA model.

    Args:
        trainer: the student loop (its `student` and `accelerator`).
        decay: the asymptotic decay, in [0, 1).
    """

    def __init__(self, trainer: StudentTrainer, decay: float):
        self.trainer = trainer
        self.decay = float(decay)
        self.model = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.student)).requires_grad_(False)
        trainer.register_for_checkpointing(ema=self.model)

    def decay_at(self, step: int) -> float:
        """The decay of the update after step `step` (warmed up: small while the average holds few iterates)."""
        return min(self.decay, (step + 1) / (step + 10))

    @torch.no_grad()
    def update(self, step: int) -> None:
        student = self.trainer.accelerator.unwrap_model(self.trainer.student)
        decay = self.decay_at(step)
        for e, s in zip(self.model.state_dict().values(), student.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(s.detach(), alpha=1 - decay)
            else:
                e.copy_(s)

    @torch.no_grad()
    def deliver(self) -> None:
        """Replace the student's weights and BatchNorm statistics by the average's."""
        self.trainer.accelerator.unwrap_model(self.trainer.student).load_state_dict(self.model.state_dict())


class Strategy:
    """Labeled data only, and the base of every other strategy.

    Attributes:
        name: the `--method` value.
        needs_teachers: whether it reads the pool's outputs (`trainer.reuse`).
        uses_unlabeled: whether the student sees unlabeled batches.
        reuser: what the strategy ships besides the student (MRL's `AttentionReuser`), or None.
        card_name, card_source, card_how: how the model cards describe it (`hf_mrl.hub.summary.MethodText`): its
            short name in prose, what besides the labels its student learnt from (`{k}`: the number of teachers),
            and one sentence on how.
    """

    name = "supervised"
    needs_teachers = False
    uses_unlabeled = False
    reuser = None
    card_name: str | None = None
    card_source: str | None = None
    card_how: str | None = None

    @classmethod
    def card_text(cls) -> MethodText:
        """What the cards say of this method; every strategy says it in its own class."""
        if not (cls.card_name and cls.card_source and cls.card_how):
            raise TypeError(f"Strategy {cls.__name__} ({cls.name!r}) has no card text: set card_name, card_source "
                            "and card_how on the class.")  # fmt: skip
        return MethodText(cls.card_name, cls.needs_teachers, cls.uses_unlabeled, cls.card_source, cls.card_how)

    def __init__(self, trainer: StudentTrainer):
        self.trainer = trainer
        self.config = trainer.config

    def unlabeled_loss(
        self, logits_u: torch.Tensor, idx_u: torch.Tensor, images_u: torch.Tensor, gen: torch.Generator, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The unlabeled term for student logits (B, C) on the (weakly augmented) batch `images_u`."""
        raise NotImplementedError

    def before_update(
        self, step: int, x: torch.Tensor, logits: torch.Tensor, n_labeled: int, idx_u: torch.Tensor
    ) -> None:
        """After the backward of step `step`, before the student moves (inputs, detached logits, gradients)."""

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    def on_train_end(self) -> None:
        """After the last step (on every process)."""


class DistillStrategy(Strategy):
    """Soft distillation toward a per-sample target distribution built from the teachers' outputs."""

    needs_teachers = True
    uses_unlabeled = True

    def targets(self, idx_u: torch.Tensor) -> torch.Tensor:
        """Target distributions (B, C) for unlabeled samples `idx_u`."""
        raise NotImplementedError

    def unlabeled_loss(self, logits_u, idx_u, images_u, gen, step):
        with torch.no_grad():
            target = self.targets(idx_u).to(logits_u.device)
        kd = kd_loss(logits_u, target, self.config.kd_temperature)
        return self.config.kd_lambda * kd, {"kd_loss": kd.item()}
