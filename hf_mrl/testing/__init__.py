"""Test helpers: a local Hugging Face Hub-protocol server and the client patches pointing at it."""

from hf_mrl.testing.hub_server import LocalHub, cache_patches, endpoint_patches

__all__ = ["LocalHub", "cache_patches", "endpoint_patches"]
