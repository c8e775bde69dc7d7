"""Datasets for hf_mrl: the offline Digits-LD benchmark, loaders of the real digit datasets from the Hub, and AwA2
attribute tasks read from a local copy."""

from hf_mrl.data.awa2 import (
    AWA2_ATTRIBUTES,
    AwA2Metadata,
    attribute_label_names,
    load_awa2,
    load_awa2_attribute,
    read_awa2_metadata,
)
from hf_mrl.data.digits_ld import (
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
    "AWA2_ATTRIBUTES",
    "AwA2Metadata",
    "attribute_label_names",
    "load_awa2",
    "load_awa2_attribute",
    "read_awa2_metadata",
]
