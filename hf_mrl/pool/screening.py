"""Screen a pool before training: score every teacher on the labeled data and flag the suspicious ones.

Nothing is dropped: the flags are reported (log, metrics.json) so the user decides, and the attention
can still turn away from a teacher per instance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["TeacherScore", "leep", "screen_teachers"]


@dataclass
class TeacherScore:
    """One teacher's scores on the labeled data.

    Attributes:
        accuracy: top-1 accuracy on the labeled data (classes it lacks count as errors).
        leep: LEEP transferability (Nguyen et al., 2020), the log-likelihood of the labels under the
            teacher's outputs re-mapped through their empirical co-occurrence with the labels; higher is better.
        leep_gain: leep minus the log-likelihood of the label prior alone (what an uninformative teacher gets).
        coverage: how many target classes the teacher can predict.
        flags: plain-language warnings.
    """

    id: str
    accuracy: float
    leep: float
    leep_gain: float
    coverage: int
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def leep(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """LEEP of one teacher from its probabilities (n, Z) over its own outputs and the labels (n,)."""
    probs = probs.double()
    onehot = torch.nn.functional.one_hot(labels, num_classes).double()  # (n, C)
    joint = probs.T @ onehot / len(labels)  # (Z, C): P(z, y)
    conditional = joint / joint.sum(1, keepdim=True).clamp_min(1e-12)  # P(y | z)
    likelihood = (probs @ conditional)[torch.arange(len(labels)), labels]  # (n,)
    return likelihood.clamp_min(1e-12).log().mean().item()


def _prior_loglik(labels: torch.Tensor, num_classes: int) -> float:
    prior = torch.bincount(labels, minlength=num_classes).double() / len(labels)
    return prior[labels].log().mean().item()


def screen_teachers(
    probs: torch.Tensor, labels: torch.Tensor, ids: list[str], coverage: torch.Tensor | None = None
) -> list[TeacherScore]:
    """Score teachers from their target-class probabilities on the labeled data.

    Args:
        probs: (n, K, C) teacher probabilities over the target classes on the labeled samples.
        labels: (n,) true labels.
        ids: the K teacher ids.
        coverage: (K, C) bool, which classes each teacher can predict (all when None).
    """
    n, k, c = probs.shape
    if len(ids) != k:
        raise ValueError(f"{len(ids)} ids for {k} teachers.")
    chance = 1.0 / c
    # A teacher is only called worse than chance when the gap exceeds two binomial standard errors.
    margin = 2.0 * math.sqrt(chance * (1 - chance) / max(n, 1))
    prior = _prior_loglik(labels, c)
    scores = []
    for j in range(k):
        p = probs[:, j]
        acc = (p.argmax(-1) == labels).float().mean().item()
        score = leep(p, labels, c)
        covered = int(coverage[j].sum()) if coverage is not None else c
        flags = []
        if acc <= chance + margin:
            flags.append(f"accuracy {acc:.2f} is no better than chance ({chance:.2f})")
        if score - prior < 0.05:
            flags.append("its outputs carry almost no information about the labels (LEEP near the label prior)")
        elif acc <= chance + margin or acc < 0.5 * (math.exp(score)):
            flags.append("informative but often wrong: its label order may not match the target's")
        if covered < c:
            flags.append(f"covers only {covered}/{c} target classes")
        for i in range(j):
            if torch.allclose(probs[:, i], p, atol=1e-4):
                flags.append(f"duplicates teacher {i + 1} ({ids[i]})")
                break
        scores.append(TeacherScore(ids[j], acc, score, score - prior, covered, flags))
    return scores
