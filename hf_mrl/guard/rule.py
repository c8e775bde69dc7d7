"""The guard's statistics: folds, the corrected repeated-CV bound, the decision, latent clusters and the sequential looks (see `hf_mrl.guard` for the rule and why it is valid)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import torch

from hf_mrl.utils import kmeans

# The decisions `GuardReport.decision` can take; `ReuseTrainer` delivers the supervised student on "fall_back".
GUARD_DECISIONS = ("keep", "fall_back")


# Non-inferiority margin, in accuracy (0.02 = 2 points): well under the Supervised student's seed-to-seed spread on
# the benchmark (4.6 points on Digits-LD MUS at 10 labels per class), so a loss inside it cannot be told from
# re-running supervised-only with another seed, and well under the 5-point loss the guard must catch.
DEFAULT_MARGIN = 0.02


DEFAULT_CONFIDENCE = 0.95


MIN_CLUSTER = 15  # scored samples per latent cluster below which a cluster is reported but not tested


# Sequential guard. Share of 1 - confidence spent on the interim keep looks (the end of each repeat but the last);
# the final look, the full rule, gets the rest. 30%: the one interim look of the default design then tests at 98.5%
# (t with 2 df: 5.6 corrected standard errors), which settles the clear gains of the benchmark's honest pools
# (simulated: 82% of +64-point cases, 51% of +45) while the final look moves only from 95% to 96.5%.
INTERIM_ALPHA_SHARE = 0.30


# Between-training sd of one method's held-out accuracy that the harm boundary allows for (see the module
# docstring); Supervised's seed-to-seed sd on the benchmark is 4.6 points. It affects early fall-backs only.
TRAINING_SD_FLOOR = 0.10


@dataclass
class GuardReport:
    """Evidence and decision of the guard (written to metrics.json and the model card). Accuracies in [0, 1].

    `gain` = reuse - supervised held-out accuracy (mean over repeats); `loss_upper` the one-sided upper confidence
    bound of the loss (-gain), at level `bound_confidence` (the look's share of the error; `confidence` is the
    guarantee of the whole rule); `z` the non-inferiority statistic (margin - loss) / stderr (a t with `df` degrees
    of freedom, 0: normal); `trainings` the student trainings the decision rests on (two per fold pair looked at,
    both methods), `trainings_full` those of the full design; `looks` the looks taken of `max_looks`,
    `stopped_at` `"interim"` or `"final"` (the full rule); `rule` `"sequential"` or `"full"`; `clusters` the
    per-latent-cluster checks; `reason` the decision in words.
    """

    folds: int
    held_out: int
    method_accuracy: float
    supervised_accuracy: float
    gain: float
    gain_stderr: float
    z: float
    decision: str
    margin: float = DEFAULT_MARGIN
    confidence: float = DEFAULT_CONFIDENCE
    repeats: int = 1
    df: int = 0
    loss_upper: float = float("nan")
    unscored: int = 0
    trainings: int = 0
    clusters: list[dict] = field(default_factory=list)
    reason: str = ""
    trainings_full: int = 0
    looks: int = 1
    max_looks: int = 1
    stopped_at: str = "final"
    rule: str = "full"
    bound_confidence: float = DEFAULT_CONFIDENCE
    # the full design only: what the sequential rule decides on the same evidence (`replay_sequential`)
    sequential_replay: dict | None = None

    def cost_sentence(self) -> str:
        """The guard's cost in one sentence (model cards, logs)."""
        if not self.held_out:
            return "The guard trained nothing: no labeled image could be held out."
        if self.rule != "sequential":
            return f"The guard ran its full design: {self.trainings} student trainings."
        where = f"at interim look {self.looks}" if self.stopped_at == "interim" else "at the final look"
        return (
            f"The sequential guard settled {where} of {self.max_looks}, after {self.trainings} of the full "
            f"design's {self.trainings_full} student trainings."
        )

    def to_dict(self) -> dict:
        """The fields, and `cost`: `cost_sentence()` (what the model cards print)."""
        return asdict(self) | {"cost": self.cost_sentence()}


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """Fold index (n,) per labeled sample, each class spread over the folds as evenly as possible.

    A class with a single labeled sample gets fold -1: trained on in every fold, never held out (it cannot be held
    out without removing the class from training). Every other class needs at least `folds` samples.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2; got {folds}.")
    counts = torch.bincount(labels)
    multi = counts[counts > 1]
    if len(multi) and int(multi.min()) < folds:
        raise ValueError(
            f"{folds} folds need at least {folds} labeled samples per class; the rarest class has "
            f"{int(multi.min())}. Use fewer folds."
        )
    gen = torch.Generator().manual_seed(seed)
    fold = torch.full_like(labels, -1)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < 2:
            continue
        idx = idx[torch.randperm(len(idx), generator=gen)]
        fold[idx] = torch.arange(len(idx)) % folds
    return fold


def repeated_folds(labels: torch.Tensor, folds: int, repeats: int, seed: int = 0) -> torch.Tensor:
    """(repeats, n) fold indices: `repeats` independent stratified splits (the first is `stratified_folds(seed)`)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}.")
    return torch.stack([stratified_folds(labels, folds, seed=seed + 100_003 * r) for r in range(repeats)])


def _t_quantile(p: float, df: int) -> float:
    if df <= 0:
        return float("inf")
    from scipy.stats import t

    return float(t.ppf(p, df))


def _fold_losses(method_ok: torch.Tensor, sup_ok: torch.Tensor, fold: torch.Tensor, mask=None) -> list[float]:
    """Per (repeat, fold) mean loss (supervised - reuse correctness) over its held-out samples (within `mask`)."""
    out = []
    for r in range(fold.shape[0]):
        for f in fold[r].unique().tolist():
            if f < 0:
                continue
            held = fold[r] == f
            if mask is not None:
                held = held & mask
            if held.any():
                out.append((sup_ok[r][held].double() - method_ok[r][held].double()).mean().item())
    return out


def corrected_bound(losses: list[float], folds: int, confidence: float, upper: bool = True) -> tuple:
    """(mean, corrected stderr, df, bound): Nadeau-Bengio corrected resampled t bound of the mean of `losses`.

    `losses` are J per-(repeat, fold) means; Var(mean) = (1/J + 1/(folds - 1)) * s^2. A one-sided bound at
    `confidence`: upper (mean + t * se) or lower (mean - t * se). With J < 2 the bound is infinite.
    """
    j = len(losses)
    if j == 0:
        return float("nan"), float("inf"), 0, (float("inf") if upper else float("-inf"))
    x = torch.tensor(losses, dtype=torch.float64)
    mean = x.mean().item()
    if j < 2:
        return mean, float("inf"), 0, (float("inf") if upper else float("-inf"))
    se = math.sqrt((1 / j + 1 / (folds - 1)) * x.var(unbiased=True).item())
    t = _t_quantile(confidence, j - 1)
    return mean, se, j - 1, (mean + t * se if upper else mean - t * se)


def decide(
    method_correct: torch.Tensor,
    supervised_correct: torch.Tensor,
    fold: torch.Tensor,
    margin: float = DEFAULT_MARGIN,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple:
    """(gain, stderr, z, decision, loss_upper, df) of the overall non-inferiority test.

    `method_correct`, `supervised_correct`: held-out 0/1 correctness, (repeats, n) or (n,); `fold`: the same shape,
    -1 for unscored samples. Keep when the upper bound of the loss is below `margin`.
    """
    method_correct, supervised_correct, fold = (
        t if t.ndim == 2 else t[None] for t in (method_correct, supervised_correct, fold)
    )
    folds = int(fold.max()) + 1
    losses = _fold_losses(method_correct, supervised_correct, fold)
    mean, se, df, upper = corrected_bound(losses, max(folds, 2), confidence)
    if not losses:
        return float("nan"), float("inf"), float("-inf"), "fall_back", float("inf"), 0
    if se > 0 and math.isfinite(se):
        z = (margin - mean) / se
    else:
        z = math.copysign(float("inf"), margin - mean) if margin != mean else 0.0
    return -mean, se, z, "keep" if upper < margin else "fall_back", upper, df


def latent_clusters(feats: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Seeded k-means (k-means++ start) of standardised features (n, p) -> cluster index (n,)."""
    x = feats.double()
    x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-8)
    return kmeans(x, k, seed, iters, init="k-means++")


def _cluster_checks(method_ok, sup_ok, fold, clusters, margin, confidence, min_cluster) -> list[dict]:
    """Per latent cluster: size, gain, corrected lower bound of the loss (Bonferroni over tested clusters), harm."""
    folds = int(fold.max()) + 1
    scored = fold[0] >= 0
    ids = clusters.unique().tolist()
    sizes = {c: int(((clusters == c) & scored).sum()) for c in ids}
    tested = [c for c in ids if sizes[c] >= min_cluster]
    level = 1 - (1 - confidence) / max(1, len(tested))
    out = []
    for c in ids:
        mask = clusters == c
        entry = {"cluster": int(c), "size": sizes[c], "tested": c in tested}
        losses = _fold_losses(method_ok, sup_ok, fold, mask)
        mean, se, df, lower = corrected_bound(losses, max(folds, 2), level, upper=False)
        entry.update(gain=-mean, gain_stderr=se, loss_lower=lower, confidence=level)
        entry["harmful"] = bool(c in tested and lower > margin)
        out.append(entry)
    return out


# -- the sequential rule -------------------------------------------------------------------------------------------
def _z(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def look_levels(confidence: float, repeats: int, share: float | None = None) -> tuple[float, float]:
    """(one-sided alpha of each interim keep look, alpha of the final look). The interim keep looks (the end of
    every repeat but the last) share `share` (default `INTERIM_ALPHA_SHARE`) of 1 - confidence evenly; the final
    look has the rest, so that they sum to 1 - confidence."""
    share = INTERIM_ALPHA_SHARE if share is None else share
    alpha = 1 - confidence
    if repeats <= 1:
        return 0.0, alpha
    return share * alpha / (repeats - 1), (1 - share) * alpha


def interim_bound(
    method_ok: torch.Tensor,
    sup_ok: torch.Tensor,
    fold: torch.Tensor,
    cells: list[tuple[int, int]],
    mask: torch.Tensor | None = None,
    sd_floor: float = TRAINING_SD_FLOOR,
) -> tuple[float, float, int]:
    """(mean loss, sd, distinct samples) of the evidence in `cells` ((repeat, fold) pairs looked at), within `mask`.

    mean: over every (cell, held-out sample); sd^2 = max(sampling + training allowance, corrected fold spread), as
    the module docstring says. No evidence: (nan, inf, 0).
    """
    folds = max(2, int(fold.max()) + 1)
    n = fold.shape[1]
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    fold_means = []
    for r, f in cells:
        held = fold[r] == f
        if mask is not None:
            held = held & mask
        if not held.any():
            continue
        d = sup_ok[r][held].double() - method_ok[r][held].double()
        fold_means.append(d.mean().item())
        total[held] += d
        count[held] += 1
    seen = count > 0
    m = int(seen.sum())
    if m == 0:
        return float("nan"), float("inf"), 0
    mean = (total.sum() / count.sum()).item()
    per_sample = total[seen] / count[seen]  # a sample scored in several repeats is one sample, not several
    sampling = per_sample.var(unbiased=True).item() / m if m > 1 else float("inf")
    k = len(fold_means)
    var = sampling + 2 * sd_floor**2 * (1 / folds + (1 - 1 / folds) / k)
    if k >= 2:
        spread = torch.tensor(fold_means, dtype=torch.float64).var(unbiased=True).item()
        var = max(var, (1 / k + 1 / (folds - 1)) * spread)
    return mean, math.sqrt(var), m


def sequential_look(
    method_ok: torch.Tensor,
    sup_ok: torch.Tensor,
    fold: torch.Tensor,
    looks: int,
    margin: float = DEFAULT_MARGIN,
    confidence: float = DEFAULT_CONFIDENCE,
    clusters: torch.Tensor | None = None,
    min_cluster: int = MIN_CLUSTER,
    sd_floor: float = TRAINING_SD_FLOOR,
) -> GuardReport | None:
    """The sequential guard's look at the first `looks` fold pairs (repeat-major order): a report when the decision
    is settled (`keep` / `fall_back`), None to go on. See the module docstring for the rule.

    `method_ok`, `sup_ok`, `fold`: (repeats, n) as in `guard_report`; only the cells looked at are read.
    """
    fold = fold if fold.ndim == 2 else fold[None]
    method_ok = method_ok if method_ok.ndim == 2 else method_ok[None]
    sup_ok = sup_ok if sup_ok.ndim == 2 else sup_ok[None]
    cells = _cells(fold)
    k_max, repeats = len(cells), fold.shape[0]
    per_repeat = k_max // repeats
    keep_a, final_a = look_levels(confidence, repeats)
    common = dict(max_looks=k_max, rule="sequential", trainings_full=2 * k_max, confidence=confidence, looks=looks)
    if looks >= k_max:
        report = guard_report(method_ok, sup_ok, fold, margin, 1 - final_a, clusters, min_cluster)
        return dataclasses.replace(report, bound_confidence=1 - final_a, stopped_at="final", **common)
    if looks % per_repeat == 0:
        # end of a repeat: the full rule on the repeats so far, at the interim level
        r = looks // per_repeat
        report = guard_report(method_ok[:r], sup_ok[:r], fold[:r], margin, 1 - keep_a, clusters, min_cluster)
        if report.decision == "keep":
            reason = f"interim look {looks} of {k_max} (repeat {r} of {repeats} done): {report.reason}"
            return dataclasses.replace(
                report, bound_confidence=1 - keep_a, stopped_at="interim", reason=reason, **common
            )
    mean, sd, m = interim_bound(method_ok, sup_ok, fold, cells[:looks], sd_floor=sd_floor)
    lower = mean - _z(confidence) * sd
    if not (m and lower > margin):
        return None
    held = torch.zeros(fold.shape, dtype=torch.bool)
    for r, f in cells[:looks]:
        held[r] |= fold[r] == f
    return GuardReport(
        folds=int(fold.max()) + 1,
        held_out=m,
        method_accuracy=method_ok[held].float().mean().item(),
        supervised_accuracy=sup_ok[held].float().mean().item(),
        gain=-mean,
        gain_stderr=sd,
        z=(margin - mean) / sd,
        decision="fall_back",
        margin=margin,
        repeats=-(-looks // per_repeat),  # the repeats begun
        df=0,
        loss_upper=mean + _z(confidence) * sd,
        unscored=int((fold[0] < 0).sum()),
        trainings=2 * looks,
        reason=(
            f"interim look {looks} of {k_max}: harm established (loss lower bound {100 * lower:+.1f} points > "
            f"margin {100 * margin:.1f})"
        ),
        stopped_at="interim",
        bound_confidence=confidence,
        **common,
    )


def _cells(fold: torch.Tensor) -> list[tuple[int, int]]:
    """The (repeat, fold) cells of a (repeats, n) assignment in look order: repeat 0's folds first."""
    return [(r, f) for r in range(fold.shape[0]) for f in fold[r].unique().tolist() if f >= 0]


def no_evidence_report(
    n: int, folds: int, repeats: int, margin: float = DEFAULT_MARGIN, confidence: float = DEFAULT_CONFIDENCE
) -> GuardReport:
    """The report when no labeled sample can be held out (every class has one label): fall back, no training."""
    return GuardReport(
        folds=folds,
        held_out=0,
        method_accuracy=float("nan"),
        supervised_accuracy=float("nan"),
        gain=float("nan"),
        gain_stderr=float("inf"),
        z=float("-inf"),
        decision="fall_back",
        margin=margin,
        confidence=confidence,
        repeats=repeats,
        loss_upper=float("inf"),
        unscored=n,
        trainings=0,
        trainings_full=2 * repeats * folds,
        looks=0,
        max_looks=repeats * folds,
        reason="no class has two labeled samples, so nothing can be held out: no evidence that reuse is not worse",
    )


def guard_report(
    method_correct: torch.Tensor,
    supervised_correct: torch.Tensor,
    folds: torch.Tensor,
    margin: float = DEFAULT_MARGIN,
    confidence: float = DEFAULT_CONFIDENCE,
    clusters: torch.Tensor | None = None,
    min_cluster: int = MIN_CLUSTER,
) -> GuardReport:
    """The guard's evidence and decision from the two methods' held-out correctness ((repeats, n) or (n,)).

    `folds`: the fold assignment, the same shape (-1: never held out).
    `clusters`: latent cluster per labeled sample (n,), or None for no per-cluster check.
    """
    if isinstance(folds, int):
        raise TypeError("guard_report needs the fold assignment tensor, not a fold count.")
    fold = folds if folds.ndim == 2 else folds[None]
    method_ok = method_correct if method_correct.ndim == 2 else method_correct[None]
    sup_ok = supervised_correct if supervised_correct.ndim == 2 else supervised_correct[None]
    scored = fold[0] >= 0
    k = int(fold.max()) + 1
    gain, se, z, decision, upper, df = decide(method_ok, sup_ok, fold, margin, confidence)
    checks = []
    if clusters is not None:
        checks = _cluster_checks(method_ok, sup_ok, fold, clusters, margin, confidence, min_cluster)
    harmful = [c["cluster"] for c in checks if c["harmful"]]
    if decision == "keep" and harmful:
        decision = "fall_back"
        reason = f"overall loss bound {100 * upper:+.1f} points is under the margin, but latent cluster(s) {harmful} lose more than it"
    elif decision == "keep":
        reason = f"loss upper bound {100 * upper:+.1f} points < margin {100 * margin:.1f}"
    else:
        reason = f"loss upper bound {100 * upper:+.1f} points >= margin {100 * margin:.1f}: not shown non-inferior"
    n_scored = int(scored.sum())
    return GuardReport(
        folds=k,
        held_out=n_scored,
        method_accuracy=method_ok[:, scored].float().mean().item() if n_scored else float("nan"),
        supervised_accuracy=sup_ok[:, scored].float().mean().item() if n_scored else float("nan"),
        gain=gain,
        gain_stderr=se,
        z=z,
        decision=decision,
        margin=margin,
        confidence=confidence,
        repeats=fold.shape[0],
        df=df,
        loss_upper=upper,
        unscored=int((~scored).sum()),
        trainings=2 * fold.shape[0] * k,
        clusters=checks,
        reason=reason,
        trainings_full=2 * fold.shape[0] * k,
        bound_confidence=confidence,
    )


def _look_bound(method_ok, sup_ok, fold, looks: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The loss upper bound of the evidence at look `looks` (progress bar and log, when the look did not settle)."""
    mean, sd, _ = interim_bound(method_ok, sup_ok, fold, _cells(fold)[:looks])
    return mean + _z(confidence) * sd
