"""Permuted labels and the coverage of clusters of the unlabeled data, on outputs built to show them."""

from __future__ import annotations

import pytest
import torch

from hf_mrl.pool.selection import (
    cluster_competence,
    greedy_select,
    permuted_among_peers,
    permuted_labels,
    unlabeled_coverage,
)


def _onehot(pred: torch.Tensor, c: int = 10, sure: float = 0.9) -> torch.Tensor:
    p = torch.full((len(pred), c), (1 - sure) / (c - 1))
    p[torch.arange(len(pred)), pred] = sure
    return p


def test_permuted_labels_tells_a_shuffle_from_weakness():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(10)  # 100 labeled samples, 10 per class
    perm = torch.tensor([4, 1, 7, 5, 3, 9, 0, 8, 6, 2])  # two fixed points: accuracy 0.2, above chance
    wrong = torch.rand(100, generator=gen) < 0.2  # a fifth of the predictions are noise
    noisy = torch.where(wrong, torch.randint(0, 10, (100,), generator=gen), perm[y])
    moved = permuted_labels(_onehot(noisy), y)
    assert moved is not None and {(t, p) for t, p, _ in moved} == {
        (t, int(perm[t])) for t in range(10) if perm[t] != t
    }
    assert all(share >= 0.5 for _, _, share in moved)
    # An expert with 20% errors, a teacher that says 3 to everything, a weak one that confuses 4 with 9: no shuffle.
    assert permuted_labels(_onehot(torch.where(wrong, torch.randint(0, 10, (100,), generator=gen), y)), y) is None
    assert permuted_labels(_onehot(torch.full((100,), 3)), y) is None
    confused = y.clone()
    confused[(y == 4)] = 9
    assert permuted_labels(_onehot(confused), y) is None  # 4 -> 9 and 9 -> 9: two classes collapse onto one
    # Random predictions: most classes are split, and what is left collides.
    assert permuted_labels(_onehot(torch.randint(0, 10, (100,), generator=gen)), y) is None
    # A swap of two classes (6 <-> 9 in id2label) is a permutation too.
    swapped = y.clone()
    swapped[y == 6], swapped[y == 9] = 9, 6
    assert permuted_labels(_onehot(swapped), y) == [(6, 9, 1.0), (9, 6, 1.0)]


def test_permuted_among_peers_finds_the_odd_one_out_on_unlabeled_data():
    # Five honest experts of one domain (each wrong on a different tenth), the same expert shuffled, an expert of
    # another domain (unsure here), and two noisy experts that differ by three systematic confusions.
    gen = torch.Generator().manual_seed(2)
    truth = torch.randint(0, 10, (300,), generator=gen)
    perm = torch.tensor([5, 6, 1, 2, 0, 8, 9, 3, 7, 4])

    def noisy(pred: torch.Tensor, rate: float = 0.1) -> torch.Tensor:
        flip = torch.rand(len(pred), generator=gen) < rate
        return torch.where(flip, torch.randint(0, 10, pred.shape, generator=gen), pred)

    confusions = truth.clone()
    for a, b in ((1, 7), (3, 9), (8, 0)):
        confusions[truth == a] = b
    outputs = [_onehot(noisy(truth)) for _ in range(5)]
    outputs += [_onehot(noisy(perm[truth])), _onehot(truth, sure=0.2), _onehot(noisy(confusions))]
    found = permuted_among_peers(torch.stack(outputs, 1))
    assert [f is not None for f in found] == [False] * 5 + [True, False, False]
    n_peers, ref, moved = found[5]
    assert n_peers == 5 and ref < 5 and {(t, p) for t, p, _ in moved} == {(t, int(perm[t])) for t in range(10)}
    # Without enough peers (one honest expert), nothing is called permuted: it could be either of the two.
    assert permuted_among_peers(torch.stack([outputs[0], outputs[5]], 1)) == [None, None]


def _two_domains(n_per: int = 60):
    """Domain 0 and domain 1, each half labeled samples; teacher 0 is sure and right on domain 0 only, teacher 1 on
    domain 1 only, teacher 2 is sure everywhere and right on a tenth (a confident impostor), teacher 3 is a weaker
    expert of domain 0 (right on 70% of it)."""
    gen = torch.Generator().manual_seed(1)
    c = 10

    def outputs(domain: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rand = torch.randint(0, c, y.shape, generator=gen)
        t0 = torch.where(domain == 0, _onehot(y, sure=0.95).T, _onehot(rand, sure=0.3).T).T
        t1 = torch.where(domain == 1, _onehot(y, sure=0.95).T, _onehot(rand, sure=0.3).T).T
        lucky = torch.rand(len(y), generator=gen) < 0.1
        t2 = _onehot(torch.where(lucky, y, (y + 1 + rand % 9) % c), sure=0.97)
        right = (torch.rand(len(y), generator=gen) < 0.7) & (domain == 0)
        t3 = _onehot(torch.where(right, y, rand), sure=0.6)
        return torch.stack([t0, t1, t2, t3], 1)  # (N, K, C)

    d_l, d_u = torch.arange(2).repeat_interleave(n_per // 3), torch.arange(2).repeat_interleave(n_per)
    y_l, y_u = torch.randint(0, c, d_l.shape, generator=gen), torch.randint(0, c, d_u.shape, generator=gen)
    return outputs(d_l, y_l), y_l, outputs(d_u, y_u), d_u


def test_clusters_of_the_unlabeled_data_find_the_domains_and_their_competent_teacher():
    labeled, y, unlabeled, domains = _two_domains()
    u_cluster, l_cluster, competence, labeled_acc = cluster_competence(labeled, y, unlabeled, 2)
    # Each cluster is one domain (the confidence profile separates them whatever the class).
    for g in range(2):
        assert domains[u_cluster == g].unique().numel() == 1
    g0 = int(u_cluster[domains == 0][0])
    g1 = 1 - g0
    assert competence[g0, 0] > 0.9 and competence[g1, 1] > 0.9
    # The impostor is sure of everything but right on a tenth: calibrated on the labeled set, it is not competent.
    assert competence[:, 2].max() < 0.3
    assert 0.5 < competence[g0, 3] < 0.85 and competence[g1, 3] < 0.2
    assert labeled_acc.shape == (2, 4) and not labeled_acc.isnan().any()
    # The report: with teacher 3 alone, domain 1's cluster has no competent teacher and is flagged, with its domain.
    ids = ["t0", "t1", "impostor", "t3"]
    rows = unlabeled_coverage(
        competence, labeled_acc, u_cluster, l_cluster, [3], ids, domains, ["M", "S"], weak_threshold=0.5
    )
    by_domain = {r["domain"].split()[0]: r for r in rows}
    assert by_domain["S"]["weak"] and by_domain["S"]["best_candidate"] == "t1" and by_domain["S"]["teacher"] == "t3"
    assert not by_domain["M"]["weak"] and by_domain["M"]["domain"] == "M 100%"
    assert sum(r["samples"] for r in rows) == len(unlabeled) and sum(r["labeled"] for r in rows) == len(y)
    # Coverage as the greedy objective: the two experts, not the confident impostor.
    sizes = torch.bincount(u_cluster, minlength=2).float()
    assert sorted(greedy_select(competence, 2, weights=sizes)[0]) == [0, 1]


@pytest.mark.slow
def test_shuffled_candidates_of_the_fixture_are_rejected_as_permuted(local_hub, tmp_path):
    """The generated Hub's `-shuffled-*` candidates (experts with id2label permuted) on Digits-LD MUS."""
    from hf_mrl.data.target import load_target
    from hf_mrl.pool.selection import select_pool
    from hf_mrl.testing.candidates import build_candidates, populate_hub

    entries = [
        e
        for e in populate_hub(local_hub, build_candidates())
        if e["kind"] == "permuted_labels" or (e["kind"] == "expert" and e["noise"] <= 0.06)
    ]
    shuffled = {e["repo_id"]: e["permutation_seed"] for e in entries if e["kind"] == "permuted_labels"}
    assert len(shuffled) == 6
    target, _ = load_target("digits-ld:MUS")
    # As `hf-mrl select` draws it: the unlabeled set is stored domain by domain, so its head would be one domain.
    sample = torch.randperm(len(target.unlabeled_images), generator=torch.Generator().manual_seed(0))[:2000]
    result = select_pool(
        target.label_names,
        target.labeled_images,
        target.labeled_labels,
        target.unlabeled_images[sample],
        k=3,
        ids=[e["repo_id"] for e in entries],
        use_search=False,
        cache_dir=tmp_path / "sel",
    )
    by_id = {c.repo_id: c for c in result.candidates}
    for repo_id, seed in shuffled.items():
        c = by_id[repo_id]
        assert c.status == "rejected" and c.reason.startswith("labels permuted: looks like "), (repo_id, c.reason)
        # Output k of the expert predicts digit k but is named order[k]: the pairs found are the shuffle's (the greedy
        # relabelling may take a wrong one where another domain's errors crowd a class).
        order = torch.randperm(10, generator=torch.Generator().manual_seed(seed)).tolist()
        truth = {(str(k), str(order[k])) for k in range(10) if order[k] != k}
        found = {(t, p) for t, p, _ in c.scores["permutation"]}
        assert len(found & truth) >= max(4, 0.75 * len(found)), (repo_id, found, truth)
    # The USPS ones: 9 labeled USPS digits are too few; the unlabeled sample, against the other USPS experts, is not.
    usps = [by_id[r] for r in shuffled if "usps" in r]
    assert all(c.scores["permuted_against"].split("/")[1].startswith("usps-convnext-n0") for c in usps)
    experts = {e["repo_id"]: e["domain"] for e in entries if e["kind"] == "expert"}
    assert sorted(experts.get(c.repo_id, "?") for c in result.selected) == ["M", "S", "U"]
