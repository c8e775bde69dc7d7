"""Scoring downloaded candidates on the labeled set, and finding label permutations."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_mrl.pool.endpoint import (
    CallBudget,
    EndpointError,
    EndpointOptions,
    is_endpoint,
)
from hf_mrl.pool.labels import label_keys, load_label_map
from hf_mrl.pool.model_pool import ModelPool, Teacher, TeacherLoadError
from hf_mrl.pool.screening import screen_teachers
from hf_mrl.pool.selection.discover import Candidate
from hf_mrl.pool.selection.metadata import _pool_label_map
from hf_mrl.utils import cache_root


@dataclass
class _Outputs:
    labeled: torch.Tensor  # (n, K, C) probabilities over the target classes
    unlabeled: torch.Tensor  # (m, K, C)
    coverage: torch.Tensor  # (K, C) bool


def _relabelling(pred: torch.Tensor, labels: torch.Tensor, c: int) -> tuple[float, dict[int, int], torch.Tensor]:
    """The one-to-one relabelling of predictions that best explains the labels, and how much better than none.

    Counts are taken in excess of what the prediction and label frequencies alone give (a teacher that says 3 to
    everything explains nothing); the assignment is greedy on that excess (largest cell first). Returns the gain in
    excess samples over the identity, the map true class -> predicted class, and the confusion matrix.
    """
    confusion = torch.zeros(c, c)
    confusion.index_put_((labels, pred), torch.ones(len(labels)), accumulate=True)
    excess = confusion - confusion.sum(1, keepdim=True) * confusion.sum(0, keepdim=True) / len(labels)
    free = excess.clone()
    free[confusion.sum(1) == 0] = -math.inf
    mapping: dict[int, int] = {}
    for _ in range(int((confusion.sum(1) > 0).sum())):
        t, p = divmod(int(free.argmax()), c)
        mapping[t] = p
        free[t, :], free[:, p] = -math.inf, -math.inf
    gain = sum(excess[t, p].item() - excess[t, t].item() for t, p in mapping.items())
    return gain, mapping, confusion


def permuted_labels(
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    min_gain: float = 0.1,
    alpha: float = 0.01,
    rounds: int = 200,
    seed: int = 0,
) -> list[tuple[int, int, float]] | None:
    """Whether a teacher's predictions on the labeled set look like the target classes under a shuffled label order.

    The one-to-one relabelling of its predictions that best explains the labels (`_relabelling`) must explain at
    least `min_gain` of the labeled samples more than its own labels do, move at least two classes, and do so
    significantly: more than all but a fraction `alpha` of `rounds` simulated honest teachers with as many errors,
    spread like its predictions (noisy errors also gain something by relabelling, by chance; a shuffle's errors are
    structured). An expert of one latent domain keeps its shuffle on that domain's samples only; the test needs no
    more than that, where a per-class majority vote would drown in the other domains' noise.

    Returns the moved classes as `(true class, predicted class, share of its samples predicted so)`, or None.

    >>> y = torch.arange(3).repeat(10)
    >>> permuted_labels(torch.eye(3)[(y + 1) % 3], y)  # 0 -> 1, 1 -> 2, 2 -> 0
    [(0, 1, 1.0), (1, 2, 1.0), (2, 0, 1.0)]
    >>> permuted_labels(torch.eye(3)[torch.zeros_like(y)], y) is None  # everything is 0: no shuffle, just useless
    True
    """
    n, c = probs.shape
    pred = probs.argmax(-1)
    gain, mapping, confusion = _relabelling(pred, labels, c)
    moved = sorted(t for t, p in mapping.items() if p != t and confusion[t, p] > confusion[t, t])
    if len(moved) < 2 or gain < min_gain * n:
        return None
    # The null is an honest but noisy teacher: right where it is right, each error a class drawn from how often it
    # predicts each class (a shuffle's errors all go one way; a teacher that says 3 to everything errs the same under
    # both). The gain is compared with that of `rounds` such teachers.
    wrong = (pred != labels).nonzero().flatten()
    freq = torch.bincount(pred, minlength=c).float()[None, :].repeat(len(wrong), 1)  # (w, C)
    freq[torch.arange(len(wrong)), labels[wrong]] = 0  # an error is another class
    ok = freq.sum(1) > 0
    gen = torch.Generator().manual_seed(seed)
    beaten = 0
    for _ in range(rounds):
        simulated = pred.clone()
        simulated[wrong[ok]] = torch.multinomial(freq[ok], 1, generator=gen).squeeze(1)
        beaten += _relabelling(simulated, labels, c)[0] >= gain
    if (1 + beaten) / (1 + rounds) > alpha:
        return None
    counts = confusion.sum(1)
    return [(t, mapping[t], round(confusion[t, mapping[t]].item() / counts[t].item(), 3)) for t in moved]


def permuted_among_peers(
    unlabeled: torch.Tensor, *, min_confidence: float = 0.5, min_samples: int = 30, related: float = 0.7
) -> list[tuple[int, int, list[tuple[int, int, float]]] | None]:
    """Permuted labels seen on the unlabeled sample, against the other candidates: for when the labeled set holds
    too few samples of a teacher's domain for `permuted_labels` (a USPS expert and 9 labeled USPS digits).

    For each pair of candidates, on the samples both are sure of (top probability at least `min_confidence`, at
    least `min_samples` of them), they are *the same* when they agree on at least `related` of them, and *permuted*
    when they agree on at most 1 - `related` but a one-to-one relabelling (`_relabelling`) makes them agree on at
    least `related`, moving at least half the classes (two noisy experts can differ by a few systematic confusions).
    A candidate permuted against at least two peers, and against more peers than it is the same as, is flagged: the
    shuffled one is the odd one out among teachers that see the data alike.

    Args:
        unlabeled: (m, K, C) probabilities on the unlabeled sample.

    Returns:
        Per candidate, None or `(peers permuted against, the peer it agrees with most after relabelling, moved
        classes as (peer's class, its class, share))`.
    """
    m, k, c = unlabeled.shape
    conf, pred = unlabeled.max(-1)  # (m, K)
    sure = conf >= min_confidence
    permuted = torch.zeros(k, k, dtype=torch.bool)
    same = torch.zeros(k, k, dtype=torch.bool)
    best: dict[int, tuple[float, int, list]] = {}
    for i in range(k):
        for j in range(i + 1, k):
            both = sure[:, i] & sure[:, j]
            if int(both.sum()) < min_samples:
                continue
            pi, pj = pred[both, i], pred[both, j]
            agree = (pi == pj).float().mean().item()
            if agree >= related:
                same[i, j] = same[j, i] = True
                continue
            if agree > 1 - related:
                continue
            for a, b, x, y in ((i, j, pi, pj), (j, i, pj, pi)):  # b's predictions against a's as labels
                _, mapping, confusion = _relabelling(y, x, c)
                relabelled = sum(confusion[t, p].item() for t, p in mapping.items()) / len(x)
                moved = [t for t, p in mapping.items() if p != t and confusion[t, p] > confusion[t, t]]
                if relabelled >= related and len(moved) >= max(2, c // 2):
                    permuted[a, b] = True
                    if relabelled > best.get(b, (0.0,))[0]:
                        counts = confusion.sum(1)
                        pairs = [
                            (t, mapping[t], round(confusion[t, mapping[t]].item() / counts[t].item(), 3))
                            for t in sorted(moved)
                        ]
                        best[b] = (relabelled, a, pairs)
    out: list = []
    for j in range(k):
        n_perm, n_same = int(permuted[:, j].sum()), int(same[:, j].sum())
        out.append((n_perm, best[j][1], best[j][2]) if n_perm >= 2 and n_perm > n_same else None)
    return out


def _describe_permutation(
    moved: list[tuple[int, int, float]], label_names: Sequence[str], against: str = "true -> predicted", limit: int = 6
) -> str:
    shown = ", ".join(f"{label_names[t]}->{label_names[p]}" for t, p, _ in moved[:limit])
    more = f" and {len(moved) - limit} more" if len(moved) > limit else ""
    mass = sum(share for _, _, share in moved) / len(moved)
    return (
        f"labels permuted: looks like {shown}{more} ({against}, {mass:.0%} of those classes' samples): its "
        "id2label is probably in the wrong order; a per-teacher --label_map entry can fix it"
    )


def score_candidates(
    candidates: Sequence[Candidate],
    label_names: Sequence[str],
    labeled_images: torch.Tensor,
    labeled_labels: torch.Tensor,
    unlabeled_images: torch.Tensor,
    *,
    cache_dir: str | os.PathLike | None = None,
    duplicate_tolerance: float = 0.01,
    label_map: str | os.PathLike | dict | None = None,
    check_permutations: bool = True,
    token=None,
    endpoint: EndpointOptions | None = None,
) -> tuple[list[Candidate], _Outputs]:
    """Load each candidate with `Teacher.load` and score it on the target; returns the survivors and their outputs.

    Scores: accuracy, LEEP and LEEP gain on the labeled set (`screening.screen_teachers`), mean top probability on
    the unlabeled sample. Rejected here: candidates that fail to load, whose labels look permuted
    (`permuted_labels`), that are no better than chance, or are near-duplicates (mean absolute difference of their
    probabilities below `duplicate_tolerance`) of an earlier, more downloaded candidate. Labels are mapped onto the
    target's as a training `ModelPool` with the same `label_map` maps them. Teacher outputs are cached per sample
    under `cache_dir` as in training. Endpoint candidates (`endpoint:URL`) are called on the same images, under
    one call budget shared by all of them (`endpoint.max_calls`).
    """
    label_names = [str(n) for n in label_names]
    label_map = load_label_map(label_map)
    logits_dir = Path(cache_dir or cache_root() / "selection") / "logits"
    loaded, lab, unl, cov = [], [], [], []
    budget = CallBudget((endpoint or EndpointOptions()).max_calls)
    for c in candidates:
        try:
            if is_endpoint(c.id):
                pool = ModelPool([c.id], label_names, cache_dir=logits_dir, label_map=label_map, endpoint=endpoint)
                pool.budget = pool.teachers[0].budget = budget
                lab.append(pool.probs(labeled_images)[:, 0])
                unl.append(pool.probs(unlabeled_images)[:, 0])
                cov.append(pool.coverage[0])
                loaded.append(c)
                continue
            teacher = Teacher.load(c.id, token=token)  # no pickle, no remote code
            known = label_keys(teacher.label_names, teacher.label_descriptions)
            pool = ModelPool(
                [teacher], label_names, cache_dir=logits_dir, label_map=_pool_label_map(label_map, c, known)
            )
            lab.append(pool.probs(labeled_images)[:, 0])
            unl.append(pool.probs(unlabeled_images)[:, 0])
            cov.append(pool.coverage[0])
        except (TeacherLoadError, ValueError, EndpointError) as err:
            reason = getattr(err, "reason", "load_failed" if not isinstance(err, EndpointError) else "call_failed")
            c.reject("scored", f"could not be loaded ({reason}): {err}")
            continue
        loaded.append(c)
        del teacher, pool
    if not loaded:
        empty = torch.empty(0)
        return [], _Outputs(empty, empty, empty)
    labeled, unlabeled = torch.stack(lab, 1), torch.stack(unl, 1)  # (n, K, C), (m, K, C)
    coverage = torch.stack(cov)
    scores = screen_teachers(labeled, labeled_labels, [c.id for c in loaded], coverage)
    both = torch.cat([labeled, unlabeled])  # (n + m, K, C)
    peers = permuted_among_peers(unlabeled) if check_permutations else [None] * len(loaded)
    keep = []
    for j, (c, s) in enumerate(zip(loaded, scores, strict=True)):
        c.scores = {
            "accuracy": round(s.accuracy, 4),
            "leep": round(s.leep, 4),
            "leep_gain": round(s.leep_gain, 4),
            "confidence": round(unlabeled[:, j].max(-1).values.mean().item(), 4),
        }
        c.flags = [f for f in s.flags if not f.startswith("duplicates")]
        twin = next(
            (i for i in keep if (both[:, i] - both[:, j]).abs().sum(-1).mean().item() / 2 < duplicate_tolerance), None
        )
        if twin is not None:
            c.scores["duplicate_of"] = loaded[twin].id
            c.reject("scored", f"near-duplicate of {loaded[twin].id} (almost identical outputs)")
            continue
        # Before the chance test: a shuffled expert keeps its fixed points right and can pass it (an earlier K=6
        # run selected one); and "permuted" tells the user what is wrong and that a label map can fix it.
        moved = permuted_labels(labeled[:, j], labeled_labels) if check_permutations else None
        if moved is not None:
            c.scores["permutation"] = [[label_names[t], label_names[p], m] for t, p, m in moved]
            c.flags.append("labels permuted")
            c.reject("scored", _describe_permutation(moved, label_names))
            continue
        if peers[j] is not None:
            n_peers, ref, moved = peers[j]
            c.scores["permutation"] = [[label_names[t], label_names[p], m] for t, p, m in moved]
            c.scores["permuted_against"] = loaded[ref].id
            c.flags.append("labels permuted")
            c.reject(
                "scored",
                _describe_permutation(moved, label_names, f"{loaded[ref].repo_id} (and {n_peers - 1} more) -> this"),
            )
            continue
        if any("no better than chance" in f for f in s.flags):
            c.reject("scored", f"no better than chance on the labeled set (accuracy {s.accuracy:.2f})")
            continue
        keep.append(j)
    idx = torch.tensor(keep, dtype=torch.long)
    return [loaded[j] for j in keep], _Outputs(labeled[:, idx], unlabeled[:, idx], coverage[idx])
