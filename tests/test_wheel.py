"""The built wheel is the whole package: installed in a fresh environment, away from the checkout, it trains
(`hf-mrl train`), reloads the reuser and predicts, renders both model cards and runs the metric."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> dict:
    """The wheel built from a copy of the sources, installed without dependencies in a new virtual environment
    that sees the test environment's site-packages (for torch and friends) but not the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "hf_mrl", src / "hf_mrl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w"]
    proc = subprocess.run([*cmd, str(root / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (root / "dist").glob("hf_mrl-*.whl")

    env = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A plain path entry: the test environment's packages, but not its .pth hooks (the editable checkout).
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"wheel": wheel, "python": python, "bin": env / "bin", "site": Path(site), "root": root}


def _run(wheel_env, args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", **kwargs.pop("env", {}))
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cwd, env=env, **kwargs)


def test_wheel_ships_every_subpackage(wheel_env):
    with zipfile.ZipFile(wheel_env["wheel"]) as zf:
        names = set(zf.namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "hf_mrl").rglob("__init__.py")}
    assert {"hf_mrl/training/strategies", "hf_mrl/data", "hf_mrl/testing", "hf_mrl/hub/templates"} <= packages
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"packages left out of the wheel: {missing}"
    assert {"hf_mrl/hub/templates/reuser.md", "hf_mrl/hub/templates/student.md"} <= names
    assert "hf_mrl/metrics/latent_domain_accuracy/latent_domain_accuracy.py" in names
    assert not any(n.startswith(("benchmarks/", "recipes/", "tests/")) for n in names)


def test_installed_wheel_trains_reloads_and_predicts_outside_the_checkout(wheel_env, tiny, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = work / "run"
    cmd = [str(wheel_env["bin"] / "hf-mrl"), "train", "--pool", str(tiny["pool"]), "--dataset", str(tiny["data"])]
    cmd += ["--output_dir", str(out), "--max_steps", "3", "--batch_size", "4", "--unlabeled_batch_size", "8"]
    cmd += ["--image_size", "16", "--guard_folds", "2", "--guard_workers", "1", "--no_progress"]
    cmd += ["--cache_dir", str(tmp_path / "cache")]
    proc = _run(wheel_env, cmd, work, env={"HF_MRL_CACHE": str(tmp_path / "hf_mrl_cache")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "mrl" and metrics["guard"]["folds"] == 2

    script = textwrap.dedent(
        f"""
        import json, datasets, torch, hf_mrl, hf_mrl.metrics
        from hf_mrl import AttentionReuser
        from hf_mrl.data.target import target_from_datasets
        from hf_mrl.hub.cards import reuser_card
        import evaluate
        data = target_from_datasets(datasets.load_from_disk({str(tiny["data"])!r}), image_size=16)
        reuser = AttentionReuser.from_pretrained({str(out / "reuser")!r})
        pred = reuser.predict(data.test_images)["predictions"]
        acc = evaluate.load(hf_mrl.metrics.METRIC_PATH).compute(predictions=pred.tolist(),
                                                              references=data.test_labels.tolist())
        print(json.dumps({{"file": hf_mrl.__file__, "reuse": (pred == data.test_labels).float().mean().item(),
                          "metric": acc["accuracy"], "card": str(reuser_card(reuser.config, None))[:200]}}))
        """
    )
    proc = _run(wheel_env, [str(wheel_env["python"]), "-c", script], work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).is_relative_to(wheel_env["site"]), got["file"]  # the wheel, not the checkout
    assert got["reuse"] == pytest.approx(metrics["reuser_accuracy"], abs=1e-6)
    assert got["metric"] == pytest.approx(metrics["reuser_accuracy"], abs=1e-6)
    assert "library_name: hf_mrl" in got["card"]

    # The evaluate command of the installed package re-measures the run from its outputs.
    proc = _run(wheel_env, [str(wheel_env["bin"] / "hf-mrl"), "evaluate", str(out)], work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count(" same") == 2 and "DIFFERENT" not in proc.stdout
