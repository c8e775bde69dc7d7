"""Supervised: the student learns from the labeled data alone (the baseline MRL must never fall below)."""

from hf_mrl.training.strategies.base import Strategy

__all__ = ["Supervised"]


class Supervised(Strategy):
    name = "supervised"
    card_name = "supervised-only"
    card_source = "the labeled images alone"
    card_how = "supervised-only: cross-entropy on the labeled images; no unlabeled image and no teacher model."
