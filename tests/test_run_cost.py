"""benchmarks/run_cost.py's figures from a run's metrics.json (a fake record: no training)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import load_recipe

run_cost = load_recipe("run_cost")


def fake_metrics(guard: dict | None = None) -> dict:
    return {
        "time_s": {"teacher_outputs": 5.0, "supervised": 40.0, "method": 120.0, "guard": 150.0},
        "wall_time_s": 318.0,
        "method": "mrl",
        "delivered": "method",
        "student_accuracy": 0.8,
        "method_student_accuracy": 0.8,
        "supervised_accuracy": 0.4,
        "config": {"max_steps": 1000},
        "guard": guard
        if guard is not None
        else {
            "decision": "keep",
            "loss_upper": -0.3,
            "trainings": 6,
            "trainings_full": 12,
            "looks": 3,
            "max_looks": 6,
            "stopped_at": "interim",
            "rule": "sequential",
        },
    }


def test_case_cost_ratios():
    c = run_cost.case_cost(fake_metrics(), whole_s=375.0)
    assert c["whole_over_teacher_plus_method"] == round(375 / 125, 3)
    assert c["guard_over_method"] == 1.25
    assert (c["trainings"], c["trainings_full"], c["looks"], c["max_looks"]) == (6, 12, 3, 6)
    assert c["stopped_at"] == "interim" and c["decision"] == "keep" and c["max_steps"] == 1000


def test_the_guard_beside_reports_what_it_added_and_its_own_time():
    m = fake_metrics()
    m["time_s"] |= {"guard": 60.0, "guard_total": 240.0}
    c = run_cost.case_cost(m, 300.0)
    assert c["guard_over_method"] == 0.5 and c["guard_total_over_method"] == 2.0


def test_the_schedule_cases_pass_their_flags(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, env, stdout, stderr, cwd):
        out = Path(cmd[cmd.index("--output_dir") + 1])
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(fake_metrics()))
        seen[out.name] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(run_cost.subprocess, "run", fake_run)
    for name in ("default", "default-after", "default-full"):
        run_cost.run_case(name, None, None, tmp_path, tmp_path / "real", lambda msg: None)
    assert "--no-guard_beside" not in seen["default"] and "--no-guard_sequential" not in seen["default"]
    assert "--no-guard_beside" in seen["default-after"] and "--no-guard_sequential" not in seen["default-after"]
    assert {"--no-guard_beside", "--no-guard_sequential"} <= set(seen["default-full"])


def test_case_cost_without_guard_fields():
    """An older run (no sequential fields, or no guard, or no phase times) gives None, not a crash."""
    m = fake_metrics({"decision": "keep", "trainings": 12})
    c = run_cost.case_cost(m, 100.0)
    assert c["trainings"] == 12 and c["trainings_full"] is None and c["looks"] is None
    c = run_cost.case_cost({"time_s": {"method": 0.0}}, 10.0)
    assert c["guard_over_method"] is None and c["whole_over_teacher_plus_method"] is None
    assert c["decision"] is None


def test_render_and_render_only(tmp_path, capsys):
    result = {"cases": {"default": run_cost.case_cost(fake_metrics(), 375.0) | {"pool": "make run's default"}}}
    table = run_cost.render(result)
    row = table.splitlines()[2]
    assert "| default |" in row and "| 3.00x | 1.25x | 1.25x | 6 / 12 | 3 of 6 (interim) | keep |" in row
    out = tmp_path / "run_cost.json"
    out.write_text(json.dumps(result))
    assert run_cost.main(["--render_only", "--out", str(out)]) == result
    assert "6 / 12" in capsys.readouterr().out
