"""Pool screening: LEEP and the flags that warn about harmful teachers."""

from __future__ import annotations

import math

import pytest
import torch

from hf_mrl.pool.screening import leep, screen_teachers


def _labels(n=200, c=5, seed=0):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def _confident(labels, c, p=0.9):
    probs = torch.full((len(labels), c), (1 - p) / (c - 1))
    probs[torch.arange(len(labels)), labels] = p
    return probs


def test_leep_of_a_perfect_teacher_is_zero_and_of_a_constant_one_is_the_prior():
    y = _labels()
    onehot = torch.nn.functional.one_hot(y, 5).float()
    assert leep(onehot, y, 5) == pytest.approx(0.0, abs=1e-9)
    constant = torch.full((len(y), 5), 0.2)
    prior = torch.bincount(y, minlength=5).double() / len(y)
    assert leep(constant, y, 5) == pytest.approx(prior[y].log().mean().item(), abs=1e-6)


def test_leep_sees_through_a_label_permutation():
    y = _labels()
    good = _confident(y, 5)
    permuted = good[:, [1, 2, 3, 4, 0]]
    assert leep(permuted, y, 5) == pytest.approx(leep(good, y, 5), abs=1e-9)


def test_flags_name_each_kind_of_harmful_teacher():
    y = _labels(c=5)
    good = _confident(y, 5)
    noise = torch.softmax(3 * torch.randn(len(y), 5, generator=torch.Generator().manual_seed(1)), -1)
    permuted = good[:, [1, 2, 3, 4, 0]]
    probs = torch.stack([good, noise, permuted, good.clone()], dim=1)  # (n, K, C)
    coverage = torch.ones(4, 5, dtype=torch.bool)
    coverage[0, 4] = False
    scores = screen_teachers(probs, y, ["good", "noise", "permuted", "copy"], coverage)
    by_id = {s.id: s for s in scores}
    assert by_id["good"].accuracy == pytest.approx(1.0)
    assert by_id["good"].flags == ["covers only 4/5 target classes"]
    assert any("no better than chance" in f for f in by_id["noise"].flags)
    assert any("no information" in f for f in by_id["noise"].flags)
    assert any("label order" in f for f in by_id["permuted"].flags)
    assert by_id["permuted"].leep_gain > 1.0  # informative, just mislabeled
    assert any("duplicates teacher 1 (good)" in f for f in by_id["copy"].flags)
    assert by_id["noise"].leep_gain < 0.05 < by_id["good"].leep_gain
    assert math.isfinite(by_id["noise"].leep)


def test_screening_checks_its_inputs():
    with pytest.raises(ValueError, match="2 ids for 1 teachers"):
        screen_teachers(torch.rand(3, 1, 2), torch.tensor([0, 1, 0]), ["a", "b"])
