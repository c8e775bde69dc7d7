"""Supervised: the student learns from the labeled data alone (the baseline MRL must never fall below)."""

from hf_mrl.training.strategies.base import Strategy

__all__ = ["Supervised"]


class Supervised(Strategy):
    name = "supervised"
