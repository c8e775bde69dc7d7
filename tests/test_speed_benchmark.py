"""The machinery of `benchmarks/speed.py` at tiny sizes (the numbers themselves are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402


def test_quick_run_in_process(tmp_path):
    out = tmp_path / "speed.json"
    results = speed.main(["--quick", "--sections", "step,teachers,unlabeled", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["acceptance"] == results["acceptance"]
    step = saved["step"]
    assert step["kd_step_s"] > 0 and step["outer_step_s"] > 0
    assert str(step["default_outer_every"]) in step["mrl_over_kd"]
    assert set(step["hypergradient_over_kd"]) == {"fd", "jvp", "unrolled"}  # before (unrolled) and after, one run
    assert set(saved["teachers"]) == {"3", "6"}
    assert all(r["warm_forward_samples"] == 0 for r in saved["teachers"].values())
    assert all(r["warm_forward_samples"] == 0 for r in saved["unlabeled"].values())
    names = [c["check"] for c in saved["acceptance"]]
    assert any("plain KD step" in n for n in names) and any("K=6 / at K=3" in n for n in names)
    table = out.with_suffix(".md").read_text()
    assert "| acceptance check |" in table and "outer_every" in table


def test_resplit_keeps_the_images():
    data = speed.synthetic_data(10, 30, 5)
    other = speed.resplit(data, seed=1)
    import torch

    before = torch.cat([data.labeled_images, data.unlabeled_images, data.test_images])
    after = torch.cat([other.labeled_images, other.unlabeled_images, other.test_images])
    assert not torch.equal(before, after)
    assert sorted(map(bytes, before.flatten(1).numpy())) == sorted(map(bytes, after.flatten(1).numpy()))


def test_acceptance_and_table_from_results():
    results = {
        "environment": {
            "device": "cpu",
            "precision": "fp32",
            "threads": 1,
            "date": "today",
            "commit": "abc",
            "torch": "2",
            "cpu_count": 2,
            "loadavg_before": [1.0],
            "loadavg_after": [1.0],
        },
        "wall_s": 1.0,
        "step": {
            "default_outer_every": 5,
            "kd_step_s": 0.05,
            "mrl_step_s": {"5": 0.06},
            "mrl_over_kd": {"5": 1.2},
            "outer_step_s": 0.1,
            "outer_over_kd_step": 2.0,
        },
        "memory": {
            "kd": {"working_mb": 100.0, "total_mb": 1000.0},
            "mrl_k3": {"working_mb": 200.0, "total_mb": 1100.0, "working_over_kd": 2.0, "total_over_kd": 1.1},
        },
        "cache": {
            "samples": 10,
            "first_run": {"seconds": 1.0, "forward_samples": 30},
            "second_run": {"seconds": 0.1, "forward_samples": 0},
            "other_seed": {"seconds": 0.1, "forward_samples": 0},
        },
        "teachers": {"3": {"mrl_step_s": 0.06}, "100": {"mrl_step_s": 0.15}},
    }
    checks = {c["check"]: c["pass"] for c in speed.acceptance(results)}
    assert checks == {
        "MRL step / plain KD step at the default outer_every": True,
        "teacher forwards in the second run and another seed's run": True,
        "MRL step at K=100 / at K=3 (cached logits)": False,
        "MRL peak memory / plain KD (working)": False,
        "MRL peak memory / plain KD (total)": True,
    }


@pytest.mark.slow
def test_quick_run_with_probe_processes(tmp_path):
    """Every section, including the memory probes and the Hub-format teachers run in fresh processes."""
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads(out.read_text())
    assert saved["cache"]["first_run"]["forward_samples"] == 3 * saved["cache"]["samples"]
    assert saved["cache"]["second_run"]["forward_samples"] == 0
    assert saved["cache"]["other_seed"]["forward_samples"] == 0
    assert saved["memory"]["kd"]["total_mb"] > 0
