"""The README's Python quickstart runs as written (on tiny offline stand-ins); the documentation site builds strict."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _section(text: str, heading: str) -> str:
    """The README's text from `heading` to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    end = text.find(f"\n{level} ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_readme_python_quickstart_runs(tiny, hf_offline, tmp_path, monkeypatch):
    blocks = _python_blocks(_section(README.read_text(), "## Python quickstart"))
    assert len(blocks) == 2, "the quickstart: one block that trains, one that loads what it wrote"
    code = "\n".join(blocks)
    # The README's placeholders for your data and pool, and its step budget, replaced by tiny offline stand-ins.
    # What runs is the README's text with these strings swapped, nothing else.
    dataset_placeholder, pool_placeholder, steps_setting = '"my_dataset_dir"', '"hub-ids.txt"', "max_steps=1000"
    stand_ins = {
        dataset_placeholder: repr(str(tiny["data"])),
        pool_placeholder: repr(str(tiny["pool"])),
        steps_setting: "max_steps=4",
    }
    for placeholder, value in stand_ins.items():
        assert code.count(placeholder) >= 1, f"{placeholder} is no longer in the README's quickstart"
        code = code.replace(placeholder, value)
    monkeypatch.chdir(tmp_path)  # the quickstart writes runs/mine/ relative to the working directory

    namespace: dict = {"__name__": "readme_quickstart"}
    exec(compile(code, f"{README}:Python quickstart", "exec"), namespace)

    result = namespace["result"]
    assert result.guard is not None  # the guard ran: the promise is part of the quickstart
    run = tmp_path / "runs" / "mine"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["student_accuracy"] == pytest.approx(result.metrics["student_accuracy"])
    assert {"reuser", "student", "metrics.json", "manifest.json"} <= {p.name for p in run.iterdir()}
    assert len(namespace["out"]["predictions"]) == len(namespace["images"]) == 8
    assert namespace["classify"](namespace["images"][0])[0]["label"] in result.reuser.label_names


def test_the_readme_is_short_and_its_links_into_docs_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links to its docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed: pip install -e '.[docs]'"
)
def test_the_docs_build_in_strict_mode(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "run" / "index.html").is_file()
