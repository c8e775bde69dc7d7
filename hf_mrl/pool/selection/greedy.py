"""The greedy choice of K teachers, and the coverage of the target's clusters and domains."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from hf_mrl.utils import kmeans


def greedy_select(
    correct: torch.Tensor,
    k: int,
    agreement: torch.Tensor | None = None,
    redundancy: float = 0.05,
    weights: torch.Tensor | None = None,
) -> tuple[list[int], list[float]]:
    """Greedy choice of `k` columns of `correct` maximising reachable accuracy, redundancy penalised.

    Args:
        correct: (n, K) float in [0, 1]: whether (or how much: the probability of the true class) teacher j gets
            labeled sample i right.
        k: how many to choose (at most K).
        agreement: (K, K) in [0, 1], how often two teachers agree on unlabeled data; each step subtracts
            `redundancy` times the largest agreement of a candidate with those already chosen.
        weights: (n,) weight of each row (default uniform): rows may be groups of samples, e.g. clusters weighted by
            their size, with `correct` a teacher's accuracy on each group.

    Returns:
        The chosen columns in order, and the reachable accuracy `mean_i max_{j chosen} correct[i, j]` after each pick.

    >>> correct = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> greedy_select(correct, 2)[0]  # the second pick covers what the first misses, not a copy of it
    [0, 2]
    """
    n, total = correct.shape
    k = min(k, total)
    w = torch.full((n,), 1.0 / n) if weights is None else weights / weights.sum()
    chosen: list[int] = []
    best = torch.zeros(n)  # (n,) reachable so far per sample
    curve = []
    for _ in range(k):
        gain = w @ torch.clamp(correct - best[:, None], min=0)  # (K,)
        if chosen and agreement is not None:
            gain = gain - redundancy * agreement[:, chosen].max(1).values
        gain[chosen] = -math.inf
        j = int(torch.argmax(gain))
        chosen.append(j)
        best = torch.maximum(best, correct[:, j])
        curve.append((w @ best).item())
    return chosen, curve


def _kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50, centres_too: bool = False):
    return kmeans(x, k, seed, iters, init="random", centres_too=centres_too)


def cluster_competence(
    labeled: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor,
    n_clusters: int,
    *,
    seed: int = 0,
    prior: float = 2.0,
    bins: Sequence[float] = (0.5, 0.7, 0.85, 0.95),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clusters of the unlabeled sample and how competent each teacher is on each, from outputs alone.

    The clusters are k-means (seeded) over each sample's confidence profile, the log-odds of the top probability of
    every kept candidate: which teachers are sure of a sample says which latent domain it comes from, whatever its
    class.
    Labeled samples fall in the cluster of the nearest centre. A teacher's competence on a cluster is its accuracy
    on the cluster's labeled samples, shrunk (with weight `prior` samples) towards an estimate from the unlabeled
    ones: the mean over them of the teacher's labeled-set accuracy at that confidence (per confidence bin,
    smoothed towards its overall accuracy), so that a confident but wrong teacher is not taken for a competent one.

    Args:
        labeled: (n, K, C) probabilities on the labeled set; labels: (n,).
        unlabeled: (m, K, C) probabilities on the unlabeled sample.

    Returns:
        `unlabeled_cluster` (m,), `labeled_cluster` (n,), `competence` (G, K) and `labeled_accuracy` (G, K)
        (NaN where a cluster holds no labeled sample).
    """
    n_clusters = max(1, min(n_clusters, len(unlabeled)))
    conf_l, conf_u = labeled.max(-1).values, unlabeled.max(-1).values  # (n, K), (m, K)

    # In log-odds: a domain's experts differ from the others between 0.99 and 0.9999 as much as between 0.5 and 0.9
    # (on the Digits-LD MUS candidates, 6 clusters are 91% one domain this way, 79% on raw confidence).
    def profile(conf: torch.Tensor) -> torch.Tensor:
        return torch.logit(conf.clamp(1e-4, 1 - 1e-4))

    assign_u, centres = _kmeans(profile(conf_u), n_clusters, seed, centres_too=True)
    assign_l = torch.cdist(profile(conf_l), centres).argmin(1)
    hard = (labeled.argmax(-1) == labels[:, None]).float()  # (n, K)
    edges = torch.tensor(list(bins))
    bin_l, bin_u = torch.bucketize(conf_l, edges), torch.bucketize(conf_u, edges)  # bin index per sample and teacher
    n_bins = len(bins) + 1
    in_bin = torch.nn.functional.one_hot(bin_l, n_bins).float()  # (n, K, B)
    smooth = 2.0  # pseudo-samples at the teacher's overall accuracy: an empty bin says nothing
    calibrated = (torch.einsum("nkb,nk->kb", in_bin, hard) + smooth * hard.mean(0)[:, None]) / (
        in_bin.sum(0) + smooth
    )  # (K, B) accuracy at each confidence
    est_u = calibrated.gather(1, bin_u.T).T  # (m, K)
    members_u = torch.nn.functional.one_hot(assign_u, n_clusters).float().T  # (G, m)
    members_l = torch.nn.functional.one_hot(assign_l, n_clusters).float().T  # (G, n)
    estimate = (members_u @ est_u) / members_u.sum(1).clamp_min(1)[:, None]  # (G, K)
    n_l = members_l.sum(1)[:, None]  # (G, 1)
    labeled_acc = (members_l @ hard) / n_l.clamp_min(1)
    competence = (n_l * labeled_acc + prior * estimate) / (n_l + prior)
    labeled_acc[n_l.squeeze(1) == 0] = float("nan")
    return assign_u, assign_l, competence, labeled_acc


def unlabeled_coverage(
    competence: torch.Tensor,
    labeled_acc: torch.Tensor,
    unlabeled_cluster: torch.Tensor,
    labeled_cluster: torch.Tensor,
    chosen: Sequence[int],
    ids: Sequence[str],
    domains: torch.Tensor | None = None,
    domain_names: Sequence[str] | None = None,
    weak_threshold: float = 0.7,
) -> list[dict]:
    """Per cluster of the unlabeled sample: its size, its main latent domain (when known), the most competent
    selected teacher and the most competent candidate found (`cluster_competence`), and whether it is weak."""
    out = []
    for g in range(competence.shape[0]):
        rows = unlabeled_cluster == g
        if not rows.any():
            continue
        entry = {"cluster": g, "samples": int(rows.sum()), "share": round(rows.float().mean().item(), 4)}
        entry["labeled"] = int((labeled_cluster == g).sum())
        if domains is not None:
            values, counts = domains[rows].unique(return_counts=True)
            top = int(counts.argmax())
            name = domain_names[int(values[top])] if domain_names else str(int(values[top]))
            entry["domain"] = f"{name} {counts[top].item() / rows.sum().item():.0%}"
        if chosen:
            j = max(chosen, key=lambda i: competence[g, i].item())
            acc = labeled_acc[g, j].item()
            entry.update(
                teacher=ids[j],
                competence=round(competence[g, j].item(), 4),
                labeled_accuracy=None if math.isnan(acc) else round(acc, 4),
            )
        else:
            entry.update(teacher=None, competence=0.0, labeled_accuracy=None)
        best = int(competence[g].argmax())
        entry.update(best_candidate=ids[best], best_candidate_competence=round(competence[g, best].item(), 4))
        entry["weak"] = entry["competence"] < weak_threshold
        out.append(entry)
    return out


def group_coverage(
    hard: torch.Tensor, chosen: Sequence[int], groups: torch.Tensor, names: Sequence[str]
) -> dict[str, dict]:
    """Per group (latent domain or cluster) of labeled samples, from hard correctness (n, K):

    - `teacher`: accuracy of the best chosen teacher on the group: whether the group has a competent teacher
      (routing sends a group's samples to one teacher; it cannot pick, per sample, whichever weak one is right);
    - `reach`: oracle reachable accuracy of the chosen teachers (an upper bound, optimistic with many weak ones);
    - `best_candidate`: accuracy of the best kept candidate on the group (what the search offered).
    """
    out = {}
    for g, name in enumerate(names):
        rows = groups == g
        if not rows.any():
            continue
        sub = hard[rows]
        pool = sub[:, list(chosen)]
        out[name] = {
            "samples": int(rows.sum()),
            "teacher": round(pool.mean(0).max().item(), 4) if len(chosen) else 0.0,
            "reach": round(pool.max(1).values.mean().item(), 4) if len(chosen) else 0.0,
            "best_candidate": round(sub.mean(0).max().item(), 4),
        }
    return out
