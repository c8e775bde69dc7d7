"""The package's layout: no import circles, no upward imports, the public names, one k-means."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_import_graph_has_no_circles_and_no_upward_imports():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "import_graph.py")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no circles, no upward imports" in done.stdout


def test_import_graph_finds_a_planted_circle_and_an_upward_import(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_graph
    finally:
        sys.path.pop(0)
    pkg = tmp_path / "hf_mrl"
    (pkg / "data").mkdir(parents=True)
    (pkg / "training").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "training" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from hf_mrl.training.b import g\n")
    (pkg / "training" / "b.py").write_text("from hf_mrl.data.a import f\n")
    monkeypatch.setattr(import_graph, "ROOT", pkg)
    assert import_graph.main() == 1  # a circle, and data importing training


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_recovers_separated_groups(init):
    from hf_mrl.utils import kmeans

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(30)
    x = centres[truth] + 0.3 * torch.randn(90, 2, generator=gen)
    found = None
    for seed in range(5):  # a random start can put two seeds in one group; some seed must not
        assign, got = kmeans(x, 3, seed=seed, init=init, centres_too=True)
        pairs = {(int(t), int(a)) for t, a in zip(truth, assign, strict=True)}
        if len(pairs) == 3 and len({a for _, a in pairs}) == 3:
            found = got
            break
    assert found is not None, "no seed separated three well-separated groups"
    assert torch.cdist(centres, found).min(1).values.max() < 0.5
    with pytest.raises(ValueError, match="init must be"):
        kmeans(x, 3, init="kmeans")


def test_public_names_stay_importable_from_the_top():
    import hf_mrl

    for name in hf_mrl.__all__:
        assert getattr(hf_mrl, name) is not None, name
    assert {"ModelPool", "AttentionReuser", "ReuseTrainer", "load_target"} <= set(hf_mrl.__all__)
