"""Shared pytest fixtures. No test may reach the network: Hub clients only ever talk to local servers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hf_mrl.testing import LocalHub, cache_patches, endpoint_patches

# The benchmark harness (benchmarks/harness.py, benchmarks/hostile.py) lives outside the package, beside its scripts.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slower tests (subprocesses, real model loads)")


# ------------------------------------------------------------------------------------------- Hugging Face Hub


def _point_hub_clients(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point in-process clients (import-time copies included) and subprocesses (env) at ``endpoint``."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for obj, name, value in endpoint_patches(endpoint):
        monkeypatch.setattr(obj, name, value)


@pytest.fixture(scope="session")
def no_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """Default Hub endpoint: answers every request ``403`` at once, so a stray Hub call fails fast and offline.

    (A dead port such as ``http://127.0.0.1:9`` is not enough: huggingface_hub retries refused connections for ~20s.)
    """
    message = "No Hub in this test: use the `local_hub` fixture"
    with LocalHub(tmp_path_factory.mktemp("no_hub"), refuse=message) as hub:
        yield hub


@pytest.fixture(autouse=True)
def hf_isolation(no_hub: LocalHub, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fresh ``HF_HOME`` (caches, token, xet, torch hub) per test, no token, telemetry off, Hub calls refused."""
    import huggingface_hub.constants as constants

    home = tmp_path_factory.mktemp("hf_home")
    env = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HF_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_MODULES_CACHE": home / "modules",
        "HF_DATASETS_CACHE": home / "datasets",
        "TORCH_HOME": home / "torch",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    for key in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HUGGINGFACE_CO_STAGING",
        "HUGGINGFACE_HUB_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
    ):
        monkeypatch.delenv(key, raising=False)
    # huggingface_hub copied the environment into constants at import time.
    for obj, name, value in cache_patches(home):
        monkeypatch.setattr(obj, name, value)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _point_hub_clients(monkeypatch, no_hub.url)
    return home


@pytest.fixture
def local_hub(
    hf_isolation: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalHub]:
    """A running :class:`LocalHub` that ``huggingface_hub``, transformers, timm and subprocesses talk to."""
    with LocalHub(tmp_path_factory.mktemp("local_hub")) as hub:
        _point_hub_clients(monkeypatch, hub.url)
        yield hub


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HF_HUB_OFFLINE=1`` in-process (the constant is read at import) and for subprocesses."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny local teachers (transformers, timm), a pool file and a 3-class target DatasetDict."""
    from helpers import make_target_dataset, make_timm_teacher, make_transformers_teacher

    root = tmp_path_factory.mktemp("recipe")
    labels = ["a", "b", "c"]
    t1 = make_transformers_teacher(root / "teacher-hf", labels, seed=0)
    t2 = make_timm_teacher(root / "teacher-timm", labels, seed=1)
    pool = root / "pool.txt"
    pool.write_text(f"# two tiny teachers\n{t1}\n{t2.name}  # relative to this file\n")
    data = make_target_dataset(root / "data", n_labeled_per_class=2, n_unlabeled=24, n_test=12, label_names=labels)
    return {"root": root, "pool": pool, "data": data, "sizes": {"labeled": 6, "unlabeled": 24, "test": 12}}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run torch on one thread: on 2 shared cores, two threads per process thrash."""
    from helpers import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def recipe():
    """`recipes/train_mrl.py` imported as a module (one instance per test module)."""
    from helpers import load_recipe

    return load_recipe("train_mrl")
