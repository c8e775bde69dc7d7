"""MRLConfig validation and serialisation."""

from __future__ import annotations

import json

import pytest

from hf_mrl import MRLConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "pseudo-label"),
        ("max_steps", 0),
        ("batch_size", 0),
        ("unlabeled_batch_size", -1),
        ("outer_every", 0),
        ("unroll_steps", 0),
        ("learning_rate", 0.0),
        ("outer_lr", -1e-3),
        ("inner_lr", 0),
        ("kd_temperature", 0.0),
        ("kd_lambda", -0.1),
        ("direct_weight", -1.0),
        ("weight_decay", -1e-4),
        ("checkpoint_every", -1),
        ("attention_temperature", 0.0),
        ("eval_ema_decay", 1.0),
        ("eval_ema_decay", -0.1),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MRLConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("kd_lambda", 0.0), ("direct_weight", 0.0), ("checkpoint_every", 0), ("attention_temperature", None)],
)
def test_boundary_values_are_accepted(field, value):
    assert getattr(MRLConfig(**{field: value}), field) == value


def test_round_trip_through_json():
    config = MRLConfig(
        method="supervised", max_steps=17, kd_lambda=0.25, embedding="pixels", attention_temperature=3.0
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["max_steps"] == 17 and data["method"] == "supervised"
    assert MRLConfig.from_dict(data) == config
    assert MRLConfig.from_dict(data) != MRLConfig()


def test_unknown_field_is_refused_and_named():
    data = {**MRLConfig().to_dict(), "learning_rat": 0.1}
    with pytest.raises(ValueError, match="learning_rat"):
        MRLConfig.from_dict(data)


def test_from_dict_validates():
    with pytest.raises(ValueError, match="outer_every"):
        MRLConfig.from_dict({"outer_every": 0})


def test_partial_dict_keeps_defaults():
    config = MRLConfig.from_dict({"seed": 3})
    assert config.seed == 3
    assert config.max_steps == MRLConfig().max_steps


def test_eval_ema_is_fixmatchs_only():
    assert MRLConfig(method="fixmatch", eval_ema_decay=0.999).eval_ema_decay == 0.999
    assert MRLConfig(method="mrl").eval_ema_decay == 0.0  # off by default
    for method in ("mrl", "supervised", "mean-teacher"):
        with pytest.raises(ValueError, match="eval_ema_decay is implemented for method='fixmatch' only"):
            MRLConfig(method=method, eval_ema_decay=0.5)
