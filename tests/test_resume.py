"""Kill -9 a real training run, resume it, and reach the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file
from test_recipe import RECIPE

ARGS = ["--max_steps", "240", "--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16"]
ARGS += ["--checkpointing_steps", "20", "--no_progress", "--seed", "3"]


def _cmd(tiny, out, cache):
    return [sys.executable, str(RECIPE), "--pool", str(tiny["pool"]), "--dataset", str(tiny["data"])] + [
        "--output_dir",
        str(out),
        "--cache_dir",
        str(cache),
        *ARGS,
    ]


def _env(tiny):
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_MRL_CACHE": str(tiny["root"] / "hf_mrl_cache")}


def test_kill_and_resume_matches_uninterrupted_run(tiny, tmp_path):
    ref = tmp_path / "reference"
    subprocess.run(_cmd(tiny, ref, tmp_path / "c1"), env=_env(tiny), check=True, capture_output=True, timeout=600)
    expected = json.loads((ref / "metrics.json").read_text())

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(tiny, out, tmp_path / "c2"), env=_env(tiny), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = out / "checkpoints" / "mrl" / "step_0000020"
    deadline = time.time() + 300
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_dir(), "the run ended before its first MRL checkpoint"
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    assert not (out / "reuser").exists()

    resumed = subprocess.run(
        _cmd(tiny, out, tmp_path / "c2") + ["--resume_from_checkpoint"],
        env=_env(tiny),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = json.loads((out / "metrics.json").read_text())
    for key in ("student_accuracy", "supervised_accuracy", "reuser_accuracy", "per_domain"):
        assert got[key] == expected[key], key
    # Not only the same accuracies: the same weights, bit for bit.
    for part in ("student", "reuser"):
        a, b = load_file(ref / part / "model.safetensors"), load_file(out / part / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
