"""A run's result as one typed record: `metrics.json` is written from it, the model cards are built from it, and
`hf-mrl evaluate` and the benchmarks read it back.

`RunMetrics` reads as attributes (`metrics.student_accuracy`) and, like a `transformers` `ModelOutput`, as the keys
of `metrics.json` (`metrics["student_accuracy"]`, `metrics.get(...)`). The file carries `metrics_version`; a record
without one (version 1, written before the names below) is upgraded on read:

- `delivered` was `"reuse"` (MRL's student) or the method's name; now `Delivered.METHOD` (the method is in
  `method`) or `Delivered.SUPERVISED`;
- `reuse_accuracy` (the attention reuser's ensemble) is `reuser_accuracy`, and `"reuse"` is `"reuser"` in
  `per_domain` and `worst_domain_accuracy`;
- `reuse_student_accuracy` (a copy of `method_student_accuracy` on MRL runs) is gone;
- the guard's `reuse_accuracy` (the method's held-out accuracy) is `method_accuracy`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from hf_mrl.utils import read_json

__all__ = ["METRICS_VERSION", "Delivered", "RunMetrics", "read_metrics", "upgrade_metrics"]

METRICS_VERSION = 2


class Delivered(enum.StrEnum):
    """Which student a run delivered (a `str`: it is written to JSON and compared as its value)."""

    METHOD = "method"  # the trained method's own student; `RunMetrics.method` names the method
    SUPERVISED = "supervised"  # supervised-only: the method is `supervised`, or the never-worse guard fell back


@dataclass
class RunMetrics(Mapping):
    """What a run measured (accuracies are fractions on the test split) and how it was made.

    Attributes:
        method: the trained method (`--method`); `delivered`: whose student was delivered (`Delivered`).
        student_accuracy: the delivered student's; `method_student_accuracy`: the method's own student, delivered
            or not; `supervised_accuracy`: supervised-only on the same split (None without the baseline);
            `reuser_accuracy`: MRL's attention reuser, the weighted teachers (None for other methods).
        never_worse: student_accuracy >= supervised_accuracy (None without the baseline).
        guard: the never-worse guard's report (`GuardReport.to_dict()`); `screening`: each teacher's scores.
        per_domain: latent domain -> {"student", "supervised", "reuser"} accuracies, `worst_domain_accuracy` the
            worst of each, `attention_by_domain` the reuser's mean weight per teacher: only when the test data carry
            domain labels.
        time_s: wall time of each part of the run; `wall_time_s`: the whole training call.
        args, skipped_images: set by `hf-mrl train` (its arguments, images left out with --skip_bad_images).
        extra: keys this version does not know (a benchmark's own), kept as they are.
    """

    method: str
    delivered: Delivered
    method_student_accuracy: float | None
    student_accuracy: float | None = None
    supervised_accuracy: float | None = None
    reuser_accuracy: float | None = None
    never_worse: bool | None = None
    teacher_accuracy: dict[str, float] = field(default_factory=dict)
    teacher_forward_samples: dict[str, int] = field(default_factory=dict)
    endpoints: dict | None = None  # endpoint teachers: calls made, images answered, from the cache, failed calls
    teacher_forward_samples_by_process: list[int] = field(default_factory=list)
    screening: list[dict] = field(default_factory=list)
    guard: dict | None = None
    reuse_strength: float | None = None
    dataset: str = "custom"
    label_names: list[str] = field(default_factory=list)
    num_labeled: int | None = None
    num_unlabeled: int | None = None
    num_test: int | None = None
    splits: dict | None = None
    # what the accuracies measure: "test", or labeled rows among the evaluation rows (--allow_test_overlap)
    evaluation: str = "test"
    config: dict = field(default_factory=dict)
    pool: list[str] = field(default_factory=list)
    label_map: dict | None = None  # given by the user: recorded so the pool can be rebuilt the same way
    label_mapping: dict = field(default_factory=dict)
    num_processes: int = 1
    prototypes_in_sync: bool | None = None
    wall_time_s: float | None = None
    per_domain: dict[str, dict[str, float]] | None = None
    worst_domain_accuracy: dict[str, float] | None = None
    attention_by_domain: dict[str, list[float]] | None = None
    time_s: dict[str, float] = field(default_factory=dict)
    args: dict | None = None
    skipped_images: dict | None = None
    metrics_version: int = METRICS_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.delivered = Delivered(self.delivered)

    @property
    def fell_back(self) -> bool:
        """Whether the guard replaced the method's student by the supervised-only one."""
        return self.delivered is Delivered.SUPERVISED and self.method != "supervised"

    # -- metrics.json ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The `metrics.json` object: `metrics_version` first, the unknown keys of `extra` last."""
        out = {"metrics_version": self.metrics_version}
        for f in fields(self):
            if f.name not in ("metrics_version", "extra"):
                value = getattr(self, f.name)
                out[f.name] = value.value if isinstance(value, Delivered) else value
        return out | self.extra

    @classmethod
    def from_dict(cls, data: Mapping) -> RunMetrics:
        """A record from a `metrics.json` object of this version or an older one (see the module docstring)."""
        data = upgrade_metrics(data)
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known} | dict(data.get("extra") or {}),
        )

    # -- read as the metrics.json keys ---------------------------------------------------------------------
    def __getitem__(self, key: str):
        if key in self.extra:
            return self.extra[key]
        if key == "extra" or key not in _FIELDS:
            raise KeyError(key)
        value = getattr(self, key)
        return value.value if isinstance(value, Delivered) else value

    def __setitem__(self, key: str, value) -> None:
        if key in _FIELDS and key != "extra":
            setattr(self, key, Delivered(value) if key == "delivered" else value)
        else:
            self.extra[key] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __contains__(self, key: object) -> bool:
        return key in self.extra or (key in _FIELDS and key != "extra")


_FIELDS = frozenset(f.name for f in fields(RunMetrics))


def upgrade_metrics(data: Mapping) -> dict:
    """A `metrics.json` object in this version's names; a newer version than this code knows is a ValueError."""
    data = dict(data)
    version = data.get("metrics_version", 1)
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"metrics.json has an invalid metrics_version {version!r}.")
    if version > METRICS_VERSION:
        raise ValueError(
            f"metrics.json is version {version}, written by a newer hf_mrl than this one (which reads up to "
            f"{METRICS_VERSION}); upgrade hf_mrl to read it."
        )
    if version == 1:
        data.setdefault("method", "mrl")  # records from before --method trained MRL
        delivered = data.get("delivered")
        if delivered is not None:
            data["delivered"] = "supervised" if delivered == "supervised" else "method"
        else:  # older still: no `delivered`, the guard's decision says it
            guard = data.get("guard") or {}
            fell_back = guard.get("decision") == "fall_back"
            data["delivered"] = "supervised" if fell_back or data["method"] == "supervised" else "method"
        if "reuse_accuracy" in data:
            data["reuser_accuracy"] = data.pop("reuse_accuracy")
        data.pop("reuse_student_accuracy", None)
        if isinstance(data.get("guard"), dict) and "reuse_accuracy" in data["guard"]:
            guard = dict(data["guard"])
            guard["method_accuracy"] = guard.pop("reuse_accuracy")
            data["guard"] = guard
        for key in ("per_domain", "worst_domain_accuracy"):
            data[key] = _rename_reuse(data.get(key), nested=key == "per_domain")
        data["metrics_version"] = METRICS_VERSION
    return data


def _rename_reuse(value, nested: bool):
    if not isinstance(value, dict):
        return value
    if nested:
        return {d: _rename_reuse(v, nested=False) for d, v in value.items()}
    return {("reuser" if k == "reuse" else k): v for k, v in value.items()}


def read_metrics(path: str | os.PathLike) -> RunMetrics:
    """A run's `metrics.json` (a run folder or the file itself), of this version or an older one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    data = read_json(path)
    if not isinstance(data, dict) or "student_accuracy" not in data:
        raise ValueError(f"{path} is not a run's metrics.json (no `student_accuracy`).")
    return RunMetrics.from_dict(data)
