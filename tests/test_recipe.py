"""`recipes/train_mrl.py` end to end through `accelerate launch`, on tiny local data and teachers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "train_mrl.py"


def launch(tiny, out: Path, *extra: str, num_processes: int = 1, cache: str = "cache") -> dict:
    multi = ["--multi_gpu"] if num_processes > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *multi, "--num_processes", str(num_processes)]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE)]
    cmd += ["--pool", str(tiny["pool"]), "--dataset", str(tiny["data"]), "--output_dir", str(out)]
    cmd += ["--max_steps", "4", "--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16"]
    cmd += ["--cache_dir", str(tiny["root"] / cache), "--no_progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MRL_CACHE": str(tiny["root"] / "hf_mrl_cache")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    LAST_OUTPUT[:] = [proc.stdout, proc.stderr]  # the run's console log, for tests that read it
    return json.loads((out / "metrics.json").read_text())


LAST_OUTPUT: list[str] = []


def test_recipe_outputs_and_teacher_passes(tiny, tmp_path):
    out = tmp_path / "run"
    metrics = launch(tiny, out, "--checkpointing_steps", "2")
    for part in ("reuser", "student"):
        names = {p.name for p in (out / part).iterdir()}
        assert {"config.json", "model.safetensors", "README.md"} <= names, (part, names)
    for key in ("student_accuracy", "supervised_accuracy", "reuser_accuracy", "reuse_strength"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (
        metrics["method"] == "mrl"
        and metrics["delivered"] in ("method", "supervised")
        and metrics["metrics_version"] == 2
    )
    assert set(metrics["attention_by_domain"]) == {"d0", "d1"}
    assert set(metrics["per_domain"]) == {"d0", "d1"}
    assert metrics["num_processes"] == 1
    assert (out / "checkpoints" / "mrl" / "step_0000002").is_dir()
    # Each teacher ran exactly once over each of the labeled, unlabeled and test sets.
    expected = sum(tiny["sizes"].values())
    assert list(metrics["teacher_forward_samples"].values()) == [expected, expected]

    # A second run over the same data and pool finds every teacher output in the cache.
    again = launch(tiny, tmp_path / "run2")
    assert list(again["teacher_forward_samples"].values()) == [0, 0]
    assert again["reuser_accuracy"] == metrics["reuser_accuracy"]

    # A new process reloads the reuser (rebuilding its pool) and the student, and reproduces the accuracies.
    script = textwrap.dedent(
        f"""
        import json, timm, torch, datasets
        from hf_mrl import AttentionReuser
        from hf_mrl.data.target import target_from_datasets
        data = target_from_datasets(datasets.load_from_disk({str(tiny["data"])!r}), image_size=16)
        reuser = AttentionReuser.from_pretrained({str(out / "reuser")!r})
        pred = reuser.predict(data.test_images)["predictions"]
        student = timm.create_model("local-dir:{out / "student"}", pretrained=True).eval()
        from hf_mrl.training.student import student_preprocess
        with torch.no_grad():
            spred = student(student_preprocess(student)(data.test_images)).argmax(-1)
        print(json.dumps({{"reuse": (pred == data.test_labels).float().mean().item(),
                          "student": (spred == data.test_labels).float().mean().item()}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reloaded["reuse"] == pytest.approx(metrics["reuser_accuracy"], abs=1e-6)
    assert reloaded["student"] == pytest.approx(metrics["student_accuracy"], abs=1e-6)


def test_recipe_two_processes(tiny, tmp_path):
    metrics = launch(tiny, tmp_path / "ddp", "--outer_every", "1", num_processes=2, cache="cache-ddp")
    assert metrics["num_processes"] == 2
    assert metrics["prototypes_in_sync"] is True
    # The processes share the teacher passes: every sample runs through each teacher once over both.
    expected = sum(tiny["sizes"].values())
    assert list(metrics["teacher_forward_samples"].values()) == [expected, expected]
    shares = metrics["teacher_forward_samples_by_process"]
    assert len(shares) == 2 and sum(shares) == 2 * expected and all(0 < n < 2 * expected for n in shares)
    assert (tmp_path / "ddp" / "reuser" / "model.safetensors").is_file()


def test_recipe_bad_pool_is_a_one_line_error(tiny, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    cmd = [sys.executable, str(RECIPE), "--pool", str(empty), "--dataset", str(tiny["data"])]
    proc = subprocess.run(cmd + ["--output_dir", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "lists no teacher" in proc.stderr
    assert "Traceback" not in proc.stderr
