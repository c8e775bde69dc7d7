"""Test helpers: a local Hugging Face Hub-protocol server and the client patches pointing at it; a tiny AwA2 folder."""

from hf_mrl.testing.awa2_fixture import make_awa2_fixture
from hf_mrl.testing.endpoint_server import LocalEndpoint
from hf_mrl.testing.hub_server import LocalHub, cache_patches, endpoint_patches

__all__ = ["LocalEndpoint", "LocalHub", "cache_patches", "endpoint_patches", "make_awa2_fixture"]
