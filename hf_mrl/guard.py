"""The never-worse guard: cross-validate the reuse student against the supervised-only student.

Each labeled sample is held out once (stratified folds); on every fold both methods train on the other
folds' labels (and the same unlabeled data and budget) and predict the held-out samples. The paired
per-sample differences give the mean gain of reuse and its standard error, and the decision:

- `keep`: reuse is not significantly worse (the gain's upper bound is above zero), deliver the reuse student;
- `fall_back`: reuse is significantly worse, deliver the supervised-only student.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch

from .config import MRLConfig
from .trainer import MRLTrainer, ReuseInputs, TargetData

__all__ = ["GuardReport", "stratified_folds", "cross_validate_reuse", "decide"]


@dataclass
class GuardReport:
    """Evidence and decision of the guard (written to metrics.json and the model card)."""

    folds: int
    held_out: int
    reuse_accuracy: float
    supervised_accuracy: float
    gain: float
    gain_stderr: float
    z: float
    decision: str

    def to_dict(self) -> dict:
        return asdict(self)


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """Fold index (n,) per labeled sample, each class spread over the folds as evenly as possible."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2; got {folds}.")
    counts = torch.bincount(labels)
    if int(counts[counts > 0].min()) < folds:
        raise ValueError(
            f"{folds} folds need at least {folds} labeled samples per class; the rarest class has "
            f"{int(counts[counts > 0].min())}. Use fewer folds."
        )
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        fold[idx] = torch.arange(len(idx)) % folds
    return fold


def decide(reuse_correct: torch.Tensor, supervised_correct: torch.Tensor, z_threshold: float = 1.645) -> tuple:
    """(gain, stderr, z, decision) from paired 0/1 correctness vectors; one-sided test at `z_threshold`."""
    diff = reuse_correct.double() - supervised_correct.double()
    n = len(diff)
    gain = diff.mean().item()
    stderr = diff.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("inf")
    z = gain / stderr if stderr > 0 else (0.0 if gain == 0 else math.copysign(float("inf"), gain))
    return gain, stderr, z, "fall_back" if z < -z_threshold else "keep"


def cross_validate_reuse(
    config: MRLConfig,
    data: TargetData,
    reuse: ReuseInputs,
    teacher_ids: list[str],
    folds: int = 3,
    student_spec: dict | None = None,
) -> GuardReport:
    """Run the fold-wise comparison of `config.method` against supervised-only and decide."""
    fold = stratified_folds(data.labeled_labels, folds, seed=config.seed)
    reuse_ok, sup_ok = torch.zeros(len(fold), dtype=torch.bool), torch.zeros(len(fold), dtype=torch.bool)
    for f in range(folds):
        train, held = fold != f, fold == f
        sub = dataclasses.replace(
            data,
            labeled_images=data.labeled_images[train],
            labeled_labels=data.labeled_labels[train],
            labeled_domains=None if data.labeled_domains is None else data.labeled_domains[train],
        )
        sub_reuse = dataclasses.replace(reuse, probs_l=reuse.probs_l[train], feats_l=reuse.feats_l[train])
        for method, ok in ((config.method, reuse_ok), ("supervised", sup_ok)):
            trainer = MRLTrainer(
                dataclasses.replace(config, method=method),
                sub,
                sub_reuse,
                teacher_ids=teacher_ids,
                student_spec=student_spec,
            )
            trainer.train(progress=False)
            pred = trainer.predict(data.labeled_images[held])
            ok[held] = pred == data.labeled_labels[held]
    gain, stderr, z, decision = decide(reuse_ok, sup_ok)
    return GuardReport(
        folds=folds,
        held_out=len(fold),
        reuse_accuracy=reuse_ok.float().mean().item(),
        supervised_accuracy=sup_ok.float().mean().item(),
        gain=gain,
        gain_stderr=stderr,
        z=z,
        decision=decision,
    )
