"""The never-worse guard: a non-inferiority test of the reuse student against the supervised-only student.

**What it decides.** Deliver the reuse student only when its cross-validated loss against supervised-only is, with
confidence, smaller than a stated margin; otherwise deliver the supervised-only student. In symbols, with
L = (supervised accuracy - reuse accuracy) the loss of reuse in accuracy points:

- `keep` when the one-sided upper confidence bound of L (level `confidence`, 95% by default) is below `margin`
  **and** no latent cluster of the labeled data shows a loss confidently above `margin` (see below);
- `fall_back` otherwise, including when there is no held-out evidence at all.

The burden of proof is on reuse (non-inferiority): a pool that helps a little but not provably is not delivered,
and a true loss larger than the margin is caught at least half the time whatever the sample size.

**The estimate and its variance.** `repeats` x `folds` stratified cross-validation: in each repeat every labeled
sample is held out once; on every (repeat, fold) both methods train on the other folds' labels (same unlabeled data
and budget) and the fold's mean difference d_j of 0/1 correctness is recorded. The J = repeats x folds values of
d_j share training data, so their plain variance understates the uncertainty; the guard uses the corrected resampled
t-test of Nadeau & Bengio (2003): Var(mean d) ~ (1/J + n_test/n_train) * s^2, with s^2 the sample variance of the
d_j and n_test/n_train = 1/(folds - 1), against a Student t with J - 1 degrees of freedom.

**Latent clusters.** Harm confined to one latent domain can hide in the average. When psi features of the labeled
data are given (the reuser's embedding, `TeacherOutputs.feats_l`), they are standardised and split by a seeded k-means
into as many clusters as teachers (at most one per `min_cluster` scored samples); in each cluster the same corrected
test is run on the cluster's samples, Bonferroni-corrected over the clusters, and a cluster whose *lower* bound of L
is above the margin (confident harm there) makes the guard fall back. Smaller clusters are reported, not tested.

**Classes with one label.** A class with a single labeled sample cannot be held out without removing it from
training: such samples are trained on in every fold and never scored (`unscored` in the report). The decision rests
on the other classes. When no class has two labels there is no evidence and the guard falls back (switch it off with
`guard_folds=0` to deliver the reuse student unchecked).

**Cost.** repeats x folds trainings of each method (2 x 3 = 6 per method by default, 12 student trainings in all;
the supervised side does not depend on the pool and can be shared across pools), on (folds - 1)/folds of the labels.
The models judged are the fold models: the test estimates the risk of the *training procedure* at that label count,
which is what the delivered student (trained on all labels) is one draw of.

**The sequential guard (`sequential=True`, the run's default).** The fold pairs (the method and supervised-only
trained without the same fold) are trained in a fixed order, repeat 0's folds first, and the evidence is looked at
after each completed prefix of that order: look k uses the first k pairs, whatever order the workers finish them in,
so the decision does not depend on timing. K = repeats x folds looks at most; a look can stop the guard:

- `keep` at the end of every repeat but the last (look folds, 2 x folds, ...): the full rule above (corrected
  resampled t, latent clusters) on the repeats completed so far, at the stricter level 1 - a with
  a = `INTERIM_ALPHA_SHARE` x (1 - confidence) / (repeats - 1) (1.5% by default: one interim keep look);
- `fall_back` at any interim look when harm is established: mean_k - z(confidence) * sd_k > margin (below).
  Stopping to fall back can only lower the chance of delivering, so it spends no alpha;
- at the final look, the full rule at the level left, 1 - (1 - INTERIM_ALPHA_SHARE) x (1 - confidence)
  (96.5% by default). Close cases therefore get the whole design.

Why the error stays at 1 - confidence: the reuse student is delivered at exactly one look, so P(deliver | loss >=
margin) <= sum over keep looks of P(keep there | loss >= margin) (a union bound: it holds whatever the dependence
between looks) <= (repeats - 1) * a + (1 - INTERIM_ALPHA_SHARE) * (1 - confidence) = 1 - confidence, given that each
keep look's test holds its level. Each keep look is the current full rule, on fewer repeats, so it holds its level
exactly as far as the full rule does: Nadeau-Bengio's correction, which is what accounts for fold dependence (the
fold estimates share training data and, across repeats, held-out samples; the corrected variance
(1/J + 1/(folds - 1)) s^2 is built for that, and its t has J - 1 degrees of freedom). Interim keeps are allowed only
at the end of a repeat because the fold spread s is the only evidence of the training procedure's own variance
(each fold model is ONE training draw): a bound over held-out samples alone ignores it, which is why an earlier
interim rule (an unmerged attempt: Clopper-Pearson on the samples of the first pairs) delivered 6.8% of the time
at a loss equal to the margin in its own simulation. A look after one or two pairs cannot estimate that variance,
so it may only fall back. `benchmarks/guard_error.py` simulates the whole rule at the default run's size (240
settings: supervised accuracy 0.2-0.9, between-training sd 0-0.2, per-sample and across-fold correlation):
P(deliver | loss = margin) at most 4.2%, against 4.9% for the full rule alone, whose worst case (training draws
correlated across folds, sd 0.2) is also the sequential rule's (results/robustness/sequential_error.json).

The harm boundary uses sd_k^2 = max(v_samples + 2 * s_f^2 * (1/folds + (1 - 1/folds) / k), nb_k): v_samples the
held-out sampling variance (per-sample mean loss over the repeats seen, over the distinct samples seen), plus an
allowance for training variance (s_f = `TRAINING_SD_FLOOR`, 10 points of accuracy per method per training, with the
Nadeau-Bengio dependence factor), or, from two pairs on, the corrected fold spread nb_k when it is larger. A wrong
allowance here can only cost power (an early fall-back), never a wrong delivery.

**Stopping a losing training early (issue 21, item 2).** Once a look settles, trainings still queued are never started
and running ones are terminated (their results could no longer change the decision). Cutting a single fold training
short mid-way is not done: it would need the held-out fold evaluated during training (the student loop has no such
hook), and a fold model stopped on its held-out result is no longer a draw of the procedure whose risk the test
estimates (the held-out labels would have chosen it), which breaks the looks' validity.

Why there is no third decision, `blend`. What is delivered is ONE timm student, and whatever is delivered must
carry cross-validated evidence that it is not worse than supervised-only. None of the blends we considered meets
both conditions at an affordable price:

- an output ensemble of the two students (or of student and reuser) is two models, not one student;
- weight-space interpolation of the two students is one model, but they are trained from scratch (same
  initialisation, different losses) and are not linearly connected. Measured on Digits-LD MUS, seed 0, 250 steps:
  supervised 40.8%, reuse 94.8%, the mid-point (alpha 0.5) 34.0%, below both (40.6% after re-estimating the
  batch-norm statistics on the target images, which also pulls the reuse end down to 86.6%). A blend that can be
  worse than both ends is not a hedge;
- re-training a student at an intermediate reuse strength (or distilling the two-student ensemble into one) is a
  new candidate: it needs its own cross-validation (the guard's cost again, 3 more trainings per fold count), and
  picking the best of three candidates on the same ~100 held-out labels is a multiple comparison that the one-sided
  test above would no longer cover.

The continuous blend is already inside training: the learned reuse strength s in (0, 1) scales the distillation
term and is set by the outer problem on the labeled loss, so a pool that does not help is turned down during
training, and the guard only has to decide between the two students that exist.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from hf_mrl.data.types import TargetData
from hf_mrl.guard.beside import GuardBeside
from hf_mrl.guard.rule import (  # noqa: F401
    DEFAULT_CONFIDENCE,
    DEFAULT_MARGIN,
    GUARD_DECISIONS,
    INTERIM_ALPHA_SHARE,
    MIN_CLUSTER,
    TRAINING_SD_FLOOR,
    GuardReport,
    _cells,
    _cluster_checks,
    _fold_losses,
    _look_bound,
    _t_quantile,
    _z,
    corrected_bound,
    decide,
    guard_report,
    interim_bound,
    latent_clusters,
    look_levels,
    no_evidence_report,
    repeated_folds,
    sequential_look,
    stratified_folds,
)
from hf_mrl.guard.workers import (  # noqa: F401
    _correctness,
    _fold_job,
    _init_worker,
    _run_jobs,
    _watch_parent,
    _worker_pool,
    default_workers,
    fold_correctness,
)
from hf_mrl.reuse.outputs import TeacherOutputs
from hf_mrl.training.config import MRLConfig

__all__ = [
    "DEFAULT_CONFIDENCE",
    "GuardBeside",
    "DEFAULT_MARGIN",
    "GUARD_DECISIONS",
    "GuardReport",
    "INTERIM_ALPHA_SHARE",
    "TRAINING_SD_FLOOR",
    "interim_bound",
    "look_levels",
    "sequential_look",
    "corrected_bound",
    "cross_validate_reuse",
    "decide",
    "default_workers",
    "fold_correctness",
    "guard_report",
    "latent_clusters",
    "no_evidence_report",
    "repeated_folds",
    "replay_sequential",
    "stratified_folds",
]


logger = logging.getLogger(__name__)


def _clusters_for(reuse: TeacherOutputs | None, n_scored: int, seed: int, min_cluster: int) -> torch.Tensor | None:
    """Latent clusters of the labeled data from psi: one per teacher, at most one per `min_cluster` scored samples."""
    if reuse is None or getattr(reuse, "feats_l", None) is None:
        return None
    k = min(reuse.probs_l.shape[1], n_scored // min_cluster)
    if k < 2:
        return None
    return latent_clusters(reuse.feats_l, k, seed=seed)


def cross_validate_reuse(
    config: MRLConfig,
    data: TargetData,
    reuse: TeacherOutputs | None,
    teacher_ids: list[str] | None,
    folds: int = 3,
    student_spec: dict | None = None,
    supervised_correct: torch.Tensor | None = None,
    workers: int = 1,
    progress: bool = False,
    repeats: int = 2,
    margin: float = DEFAULT_MARGIN,
    confidence: float = DEFAULT_CONFIDENCE,
    min_cluster: int = MIN_CLUSTER,
    sequential: bool = False,
    schedule: dict | None = None,
) -> GuardReport:
    """Run the repeated fold-wise comparison of `config.method` against supervised-only and decide.

    `reuse` and `teacher_ids` may be None for a method that reads no teacher (no per-cluster check then).

    `supervised_correct`: the supervised side, `fold_correctness` of `method="supervised"` on the same data and
    `repeated_folds(data.labeled_labels, folds, repeats, seed=config.seed)`, when already computed (it does not
    depend on the pool); trained here when None.

    `sequential`: look after each fold pair and stop once settled (`sequential_look`); else the full design.

    `schedule`: how the trainings share the machine (`capacity`, `stop`, `threads` of the workers' job runner), e.g.
    while the run's own trainings go on beside them; it changes when trainings run, never what they compute.
    """
    fold = repeated_folds(data.labeled_labels, folds, repeats, seed=config.seed)
    if int((fold[0] >= 0).sum()) == 0:
        return no_evidence_report(len(data.labeled_labels), folds, repeats, margin, confidence)
    if supervised_correct is not None and tuple(supervised_correct.shape) != tuple(fold.shape):
        raise ValueError(
            f"supervised_correct has shape {tuple(supervised_correct.shape)}; the folds need {tuple(fold.shape)}."
        )
    clusters = _clusters_for(reuse, int((fold[0] >= 0).sum()), config.seed, min_cluster)
    if sequential:
        return _sequential_guard(
            config,
            data,
            reuse,
            teacher_ids,
            fold,
            student_spec,
            supervised_correct,
            workers,
            progress,
            margin,
            confidence,
            clusters,
            min_cluster,
            schedule,
        )
    configs = (
        [config] if supervised_correct is not None else [config, dataclasses.replace(config, method="supervised")]
    )
    results = _correctness(configs, data, reuse, teacher_ids, fold, student_spec, workers, progress, schedule)
    method_ok = results[0]
    if supervised_correct is None:
        supervised_correct = results[1]
    report = guard_report(method_ok, supervised_correct.bool(), fold, margin, confidence, clusters, min_cluster)
    replay = replay_sequential(method_ok, supervised_correct.bool(), fold, margin, confidence, clusters, min_cluster)
    report.sequential_replay = {
        k: getattr(replay, k) for k in ("decision", "looks", "trainings", "stopped_at", "loss_upper", "reason")
    }
    return report


def replay_sequential(
    method_ok: torch.Tensor,
    sup_ok: torch.Tensor,
    fold: torch.Tensor,
    margin: float = DEFAULT_MARGIN,
    confidence: float = DEFAULT_CONFIDENCE,
    clusters: torch.Tensor | None = None,
    min_cluster: int = MIN_CLUSTER,
) -> GuardReport:
    """The sequential guard's report on evidence already complete (the full design's): the fold trainings are the
    same either way, so this is exactly what `sequential=True` would have decided, at what cost."""
    fold = fold if fold.ndim == 2 else fold[None]
    for look in range(1, len(_cells(fold)) + 1):
        report = sequential_look(method_ok, sup_ok, fold, look, margin, confidence, clusters, min_cluster)
        if report is not None:
            return report
    raise RuntimeError("the last look always decides")


def _sequential_guard(
    config,
    data,
    reuse,
    teacher_ids,
    fold,
    student_spec,
    supervised_correct,
    workers,
    progress,
    margin,
    confidence,
    clusters,
    min_cluster,
    schedule=None,
) -> GuardReport:
    """Train the fold pairs in look order (method, then supervised, cell by cell) and look after each completed
    prefix of cells; stop the trainings once a look settles."""
    cells = _cells(fold)
    sup_config = dataclasses.replace(config, method="supervised")
    jobs, owner = [], []  # owner[i] = (cell index, "method" | "sup")
    for j, (r, f) in enumerate(cells):
        jobs.append((config, data, reuse, teacher_ids, fold[r], f, student_spec))
        owner.append((j, "method"))
        if supervised_correct is None:
            jobs.append((sup_config, data, None, None, fold[r], f, student_spec))
            owner.append((j, "sup"))
    method_ok = torch.zeros(fold.shape, dtype=torch.bool)
    sup_ok = torch.zeros(fold.shape, dtype=torch.bool) if supervised_correct is None else supervised_correct.bool()
    missing = [1 + (supervised_correct is None)] * len(cells)  # trainings still to come per cell
    state = {"looks": 0, "report": None}

    def on_result(i, ok, bar) -> bool:
        j, side = owner[i]
        r, f = cells[j]
        (method_ok if side == "method" else sup_ok)[r][fold[r] == f] = ok
        missing[j] -= 1
        # look at every newly completed prefix, in order: the looks do not depend on which worker finished first
        while state["looks"] < len(cells) and missing[state["looks"]] == 0:
            state["looks"] += 1
            report = sequential_look(
                method_ok, sup_ok, fold, state["looks"], margin, confidence, clusters, min_cluster
            )
            bound = (
                report.loss_upper
                if report is not None
                else _look_bound(method_ok, sup_ok, fold, state["looks"], confidence)
            )
            bar.set_postfix_str(f"look {state['looks']}/{len(cells)}, loss bound {100 * bound:+.1f} pts")
            logger.info(
                "Guard: look %d of %d: loss bound %+.1f points%s",
                state["looks"],
                len(cells),
                100 * bound,
                "" if report is None else f": {report.decision}",
            )
            if report is not None:
                state["report"] = report
                return True
        return False

    _run_jobs(jobs, workers, progress, f"guard (up to {len(cells)} looks)", on_result, **(schedule or {}))
    report = state["report"]
    if report is None:  # only when stopped from outside: the last look always decides
        raise RuntimeError("the sequential guard was stopped before it decided")
    return report
