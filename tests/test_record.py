"""The run's record (`hf_mrl.record`): metrics.json's version, the upgrade of older records, and the typed reads."""

from __future__ import annotations

import json

import pytest

from hf_mrl import Delivered, RunMetrics, read_metrics
from hf_mrl.record import METRICS_VERSION, upgrade_metrics

# A metrics.json as hf_mrl wrote it before metrics_version (the keys this version renames or drops).
V1 = {
    "method": "mrl",
    "student_accuracy": 0.9,
    "supervised_accuracy": 0.6,
    "reuse_accuracy": 0.95,
    "never_worse": True,
    "guard": {"decision": "keep", "reuse_accuracy": 0.88, "supervised_accuracy": 0.61, "loss_upper": -0.2},
    "delivered": "reuse",
    "method_student_accuracy": 0.9,
    "reuse_student_accuracy": 0.9,
    "per_domain": {"M": {"student": 0.9, "supervised": 0.6, "reuse": 0.97}},
    "worst_domain_accuracy": {"student": 0.8, "supervised": 0.5, "reuse": 0.9},
    "args": {"seed": 0},
    "skipped_images": {},
    "a_benchmarks_key": [1, 2],
}


def test_a_version_1_record_is_read_in_this_versions_names():
    m = RunMetrics.from_dict(V1)
    assert m.metrics_version == METRICS_VERSION == 2
    assert m.delivered is Delivered.METHOD and not m.fell_back
    assert m.reuser_accuracy == 0.95 and "reuse_accuracy" not in m and "reuse_student_accuracy" not in m
    assert m.guard == {"decision": "keep", "method_accuracy": 0.88, "supervised_accuracy": 0.61, "loss_upper": -0.2}
    assert m.per_domain == {"M": {"student": 0.9, "supervised": 0.6, "reuser": 0.97}}
    assert m.worst_domain_accuracy == {"student": 0.8, "supervised": 0.5, "reuser": 0.9}
    assert m.extra == {"a_benchmarks_key": [1, 2]} and m["a_benchmarks_key"] == [1, 2]
    assert V1["delivered"] == "reuse" and "reuse_accuracy" in V1["guard"]  # the input is not modified


@pytest.mark.parametrize(
    ("method", "delivered", "guard", "expected"),
    [
        ("pl", "pl", {"decision": "keep"}, Delivered.METHOD),  # v1 named a non-MRL method's student by the method
        ("mrl", "supervised", {"decision": "fall_back"}, Delivered.SUPERVISED),
        ("supervised", "supervised", None, Delivered.SUPERVISED),
        ("mrl", None, {"decision": "fall_back"}, Delivered.SUPERVISED),  # older still: no `delivered` at all
        ("mrl", None, {"decision": "keep"}, Delivered.METHOD),
        ("supervised", None, None, Delivered.SUPERVISED),
    ],
)
def test_delivered_of_older_records(method, delivered, guard, expected):
    data = {"method": method, "student_accuracy": 0.5, "method_student_accuracy": 0.5, "guard": guard}
    if delivered is not None:
        data["delivered"] = delivered
    m = RunMetrics.from_dict(data)
    assert m.delivered is expected
    assert m.fell_back == (expected is Delivered.SUPERVISED and method != "supervised")


def test_the_written_record_says_its_version_and_reads_back_the_same(tmp_path):
    m = RunMetrics.from_dict(V1)
    m["time_s"] = {"method": 1.5}  # known keys set the field, unknown ones go to extra
    m["another"] = "x"
    d = m.to_dict()
    assert list(d)[0] == "metrics_version" and d["delivered"] == "method" and type(d["delivered"]) is str
    assert d["time_s"] == {"method": 1.5} and d["another"] == "x" and "extra" not in d
    (tmp_path / "metrics.json").write_text(json.dumps(d))
    again = read_metrics(tmp_path)  # a run folder or the file
    assert again == m and read_metrics(tmp_path / "metrics.json") == m
    assert dict(again) == d and len(again) == len(d) and again.get("nothing", 7) == 7
    with pytest.raises(KeyError):
        again["extra"]  # the container, not a key of metrics.json


def test_a_newer_or_broken_record_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"version 3, written by a newer hf_mrl .* reads up to 2"):
        upgrade_metrics({**V1, "metrics_version": 3})
    with pytest.raises(ValueError, match="invalid metrics_version"):
        upgrade_metrics({**V1, "metrics_version": "2"})
    (tmp_path / "metrics.json").write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match="not a run's metrics.json"):
        read_metrics(tmp_path)
    # the old value is only accepted through the upgrade of a version-1 record
    with pytest.raises(ValueError, match="'reuse' is not a valid Delivered"):
        RunMetrics.from_dict({**V1, "metrics_version": 2})


def test_the_old_name_of_compute_teacher_outputs_warns_and_works():
    import hf_mrl

    with pytest.warns(FutureWarning, match="compute_teacher_outputs"):
        assert hf_mrl.compute_reuse_inputs is hf_mrl.compute_teacher_outputs
    with pytest.raises(AttributeError):
        hf_mrl.no_such_name  # noqa: B018
