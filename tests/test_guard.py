"""The never-worse guard: stratified folds, the paired decision, and a cross-validation that catches harm."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_trainer import TEACHERS, TINY_STUDENT, _data, _misleading_reuse

from hf_mrl import MRLConfig
from hf_mrl.guard import GUARD_DECISIONS, cross_validate_reuse, decide, fold_correctness, stratified_folds


def test_stratified_folds_spread_every_class():
    labels = torch.tensor([0] * 6 + [1] * 4 + [2] * 3)
    fold = stratified_folds(labels, 3, seed=0)
    for c in range(3):
        counts = torch.bincount(fold[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert torch.equal(fold, stratified_folds(labels, 3, seed=0))
    with pytest.raises(ValueError, match="rarest class has 3"):
        stratified_folds(labels, 4)


def test_decision_falls_back_only_when_reuse_is_significantly_worse():
    ones, zeros = torch.ones(40, dtype=torch.bool), torch.zeros(40, dtype=torch.bool)
    assert decide(zeros, ones)[3] == "fall_back"
    assert decide(ones, zeros)[3] == "keep"
    assert decide(ones, ones)[3] == "keep"
    one_worse = ones.clone()
    one_worse[0] = False
    gain, stderr, z, decision = decide(one_worse, ones)  # one sample is noise, not evidence
    assert decision == "keep" and gain == pytest.approx(-1 / 40) and z > -1.645


def _config(**kw):
    base = dict(max_steps=30, batch_size=6, unlabeled_batch_size=16, outer_every=2, learn_reuse_strength=False)
    return MRLConfig(**{**base, **kw})


def test_cross_validation_catches_a_misleading_pool():
    data = _data(n_per_class=6, n_unlabeled=60)
    report = cross_validate_reuse(
        _config(method="mr-bs", kd_lambda=5.0), data, _misleading_reuse(data), TEACHERS, 3, TINY_STUDENT
    )
    assert report.held_out == 18
    assert report.reuse_accuracy < report.supervised_accuracy
    assert report.decision == "fall_back", report


def test_cross_validation_keeps_a_helpful_pool():
    data = _data(n_per_class=6, n_unlabeled=60)
    misleading = _misleading_reuse(data)
    # The same teachers with their outputs rolled back by one class are always right.
    helpful = type(misleading)(
        *(p.roll(-1, dims=-1) for p in (misleading.probs_l, misleading.probs_u, misleading.probs_t)),
        misleading.feats_l,
        misleading.feats_u,
        misleading.feats_t,
    )
    report = cross_validate_reuse(_config(method="mr-bs", kd_lambda=5.0), data, helpful, TEACHERS, 3, TINY_STUDENT)
    assert report.reuse_accuracy >= report.supervised_accuracy
    assert report.decision == "keep"
    assert report.to_dict()["decision"] == "keep"


def test_a_precomputed_supervised_side_gives_the_same_report():
    """The supervised side depends on data, folds and config only: computed once, it serves every pool's guard."""
    data = _data(n_per_class=3, n_unlabeled=30)
    config = _config(method="mr-bs", kd_lambda=5.0, max_steps=8)
    reuse = _misleading_reuse(data)
    full = cross_validate_reuse(config, data, reuse, TEACHERS, 3, TINY_STUDENT)
    fold = stratified_folds(data.labeled_labels, 3, seed=config.seed)
    sup = fold_correctness(dataclasses.replace(config, method="supervised"), data, None, None, fold, TINY_STUDENT)
    shared = cross_validate_reuse(config, data, reuse, TEACHERS, 3, TINY_STUDENT, supervised_correct=sup)
    assert shared == full
    assert full.decision in GUARD_DECISIONS
    with pytest.raises(ValueError, match="entries for 9 labeled samples"):
        cross_validate_reuse(config, data, reuse, TEACHERS, 3, TINY_STUDENT, supervised_correct=sup[:5])
