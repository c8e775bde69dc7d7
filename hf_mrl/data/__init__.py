"""Datasets for hf_mrl: the offline Digits-LD benchmark and loaders of the real digit datasets from the Hub."""

from .digits_ld import (
    DOMAINS,
    LABEL_NAMES,
    dataset_to_tensors,
    load_digits_ld,
    load_domain,
    load_hub_digits,
    load_source,
)

__all__ = [
    "DOMAINS",
    "LABEL_NAMES",
    "load_domain",
    "load_source",
    "load_digits_ld",
    "dataset_to_tensors",
    "load_hub_digits",
]
