"""Prototype initialisation variants of MRL (`prototype_init`) and the frozen outer step used by the ablations."""

from __future__ import annotations

import math

import pytest
import torch
from test_trainer import _config, _trainer


def test_uniform_init_starts_at_equal_attention_and_the_outer_step_moves_it():
    trainer = _trainer(_config(prototype_init="uniform", max_steps=4, outer_every=2, outer_lr=0.1))
    reuser = trainer.strategy.reuser
    assert torch.count_nonzero(reuser.prototypes) == 0 and torch.count_nonzero(reuser.bias) == 0
    r = trainer.reuse
    w = reuser(r.feats_u, r.probs_u)["weights"]
    assert torch.allclose(w, torch.full_like(w, 1 / w.shape[1]))
    logs = [trainer.training_step(s) for s in range(4)]
    assert logs[-1]["proto_l2_from_init"] > 0
    assert math.isnan(logs[-1]["proto_cos_to_init"]) and math.isnan(logs[-1]["proto_rel_l2_from_init"])


def test_random_init_differs_from_labeled_and_follows_the_seed():
    labeled = _trainer(_config()).strategy.reuser
    a = _trainer(_config(prototype_init="random")).strategy.reuser
    b = _trainer(_config(prototype_init="random")).strategy.reuser
    c = _trainer(_config(prototype_init="random", seed=1)).strategy.reuser
    assert torch.equal(a.prototypes, b.prototypes) and not torch.equal(a.prototypes, c.prototypes)
    assert not torch.allclose(a.prototypes, labeled.prototypes)
    assert torch.count_nonzero(a.bias) == 0 and torch.count_nonzero(labeled.bias) > 0
    assert a.prototypes.std().item() == pytest.approx(1.0, abs=0.5)


def test_frozen_outer_step_leaves_prototypes_bias_and_strength_at_init():
    trainer = _trainer(_config(outer_lr=1e-9, max_steps=4, outer_every=2))
    logs = [trainer.training_step(s) for s in range(4)]
    assert logs[-1]["proto_l2_from_init"] < 1e-7 and logs[-1]["bias_l2_from_init"] < 1e-7
    assert logs[-1]["proto_cos_to_init"] == pytest.approx(1.0, abs=1e-6)
    assert trainer.strategy.reuse_strength == pytest.approx(0.95, abs=1e-6)
