"""Supervised: the student learns from the labeled data alone (the baseline MRL must never fall below)."""

from .base import Strategy

__all__ = ["Supervised"]


class Supervised(Strategy):
    name = "supervised"
