"""`--report_to tensorboard`: Accelerate's tracker writes event files that hold each step's losses and reuse strength,
the reuser's attention per teacher, the guard's evidence and the accuracies (read back with tensorboard's reader)."""

from __future__ import annotations

import math

import pytest


def test_report_to_tensorboard_writes_the_loss_series(recipe, monkeypatch, tiny, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional `tracking` extra (pip install hf_mrl[tracking])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_data_sources import _cli

    metrics = _cli(recipe, monkeypatch, tiny, tmp_path, tiny["data"], "--report_to", "tensorboard", "--max_steps", "4")
    assert isinstance(metrics, dict), metrics
    run = tmp_path / "out" / "logs" / "hf_mrl"  # the project's folder under --logging_dir (default OUTPUT_DIR/logs)
    assert list(run.glob("events.out.tfevents.*")), list((tmp_path / "out").rglob("*"))
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for method in ("mrl", "supervised"):
        series = events.Scalars(f"{method}/loss")
        assert [e.step for e in series] == [1, 2, 3, 4] and all(math.isfinite(e.value) for e in series)
    assert {"mrl/ce_loss", "mrl/reuse_strength", "attention/teacher_1", "attention/teacher_2"} <= tags, tags
    assert {"guard/gain", "guard/loss_upper", "guard/delivered_method"} <= tags, tags
    (accuracy,) = events.Scalars("results/student_accuracy")
    assert accuracy.value == pytest.approx(metrics["student_accuracy"])
