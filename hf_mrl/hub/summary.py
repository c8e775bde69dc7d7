"""What a card is rendered from: the run's summary, its teachers, and how each method is described."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from hf_mrl.record import Delivered, RunMetrics

PAPER = '"Towards Robust Model Reuse in the Presence of Latent Domains" (Shao, Cheng, Li and Pu, IJCAI 2021)'


@dataclass(frozen=True)
class MethodText:
    """How the cards describe a training method (`MRLConfig.method`).

    Args:
        name: the method's short name in prose (`how` spells it out).
        teachers: whether it learns from the pool's teachers (the strategy's `needs_teachers`).
        unlabeled: whether it learns from the unlabeled images (the strategy's `uses_unlabeled`).
        source: what, besides the labels, its student learnt from (`{k}`: the number of teachers).
        how: one sentence on how its student learns, for the Training section.
    """

    name: str
    teachers: bool
    unlabeled: bool
    source: str
    how: str


# Filled by each training strategy from its own card text (`hf_mrl.training.strategies.register_strategy`): the
# cards read the method's description here without importing the training code.
METHOD_TEXT: dict[str, MethodText] = {}


def register_method_text(method: str, text: MethodText) -> None:
    METHOD_TEXT[method] = text


def method_text(method: str) -> MethodText:
    try:
        return METHOD_TEXT[method]
    except KeyError:
        raise ValueError(f"No card text for method {method!r}; known: {sorted(METHOD_TEXT)}.") from None


def split_teacher_id(teacher_id: str) -> tuple[str, str | None, bool]:
    """`(name, revision, on_hub)` of a recorded teacher id (`org/name@commit` or a local path)."""
    from huggingface_hub.utils import validate_repo_id

    name, sep, revision = teacher_id.rpartition("@")
    if not sep or not name or not revision or os.path.exists(teacher_id):
        name, revision = teacher_id, None
    try:
        validate_repo_id(name)
    except ValueError:
        return name, revision, False
    return name, revision, revision is not None or not os.path.exists(name)


@dataclass
class TeacherSummary:
    """One teacher as the cards show it.

    Args:
        id: the recorded id, `org/name@commit` for Hub teachers or a local path.
        library: `transformers` or `timm`.
        labels_covered: how many target labels the teacher can predict.
        missing_labels: the target labels it cannot predict.
        mean_attention: the mean weight the reuser gave it over the test split.
        test_accuracy: its own accuracy on the target test split (labels it lacks count as errors).
    """

    id: str
    library: str = "unknown"
    labels_covered: int | None = None
    missing_labels: list[str] = field(default_factory=list)
    mean_attention: float | None = None
    test_accuracy: float | None = None

    @property
    def name(self) -> str:
        return split_teacher_id(self.id)[0]

    @property
    def revision(self) -> str | None:
        return split_teacher_id(self.id)[1]

    @property
    def on_hub(self) -> bool:
        return split_teacher_id(self.id)[2]


@dataclass
class RunSummary:
    """What a training run knows that a stranger needs: teachers, data, budget and results.

    Accuracies are fractions in [0, 1] on the target test split. `per_domain` maps a latent domain to
    `{"student", "supervised", "reuser"}` accuracies, `worst_domain` holds the worst of each, and
    `attention_by_domain` maps a domain to the reuser's mean weight per teacher (pool order); all three only when
    the test data carry domain labels (used for evaluation only). `trust_remote_code` and `allow_pickle` record
    whether the teachers were loaded with their repositories' own code, or from pickle weights.

    `method` names the training method (`MRLConfig.method`); `delivered` is `Delivered.SUPERVISED` when the
    supervised-only student was delivered (the never-worse guard fell back, or the method is `supervised`), and
    `method_student_accuracy` the test accuracy of the method's own student, delivered or not. `test_overlap` counts
    labeled training rows that are also evaluation rows (allowed with `--allow_test_overlap`): then the card calls the
    accuracies what they are and claims no test-split result in its metadata. A method without a
    reuser has no `reuser_accuracy`, `reuse_strength` or `attention_by_domain`; one without teachers has no `teachers`.

    >>> RunSummary(teachers=[TeacherSummary("org/a@0123abc")], label_names=["0", "1"], dataset="my data")
    ... # doctest: +ELLIPSIS
    RunSummary(...)
    """

    teachers: list[TeacherSummary]
    label_names: list[str]
    dataset: str
    dataset_id: str = "custom"
    dataset_config: str | None = None
    num_labeled: int | None = None
    num_unlabeled: int | None = None
    num_test: int | None = None
    max_steps: int | None = None
    seed: int | None = None
    hyperparameters: dict = field(default_factory=dict)
    num_processes: int = 1
    wall_time_s: float | None = None
    student_accuracy: float | None = None
    supervised_accuracy: float | None = None
    reuser_accuracy: float | None = None
    per_domain: dict[str, dict[str, float]] | None = None
    worst_domain: dict[str, float] | None = None
    attention_by_domain: dict[str, list[float]] | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    guard: dict | None = None
    screening: list[dict] | None = None
    reuse_strength: float | None = None
    method: str = "mrl"
    delivered: Delivered | None = None
    method_student_accuracy: float | None = None
    endpoints: dict | None = None  # endpoint teachers' call counts and top_k (`ModelPool.endpoint_stats`)
    test_overlap: int = 0  # labeled rows that are also evaluation rows (--allow_test_overlap): not a test accuracy

    def __post_init__(self):
        self.teachers = [t if isinstance(t, TeacherSummary) else TeacherSummary(**t) for t in self.teachers]
        if self.delivered is not None:
            self.delivered = Delivered(self.delivered)
        method_text(self.method)  # an unknown method fails here, not half-way through a template

    @property
    def fell_back(self) -> bool:
        """Whether the never-worse guard replaced the method's student by the supervised-only one."""
        if self.method == "supervised":
            return False
        if self.delivered is not None:
            return self.delivered is Delivered.SUPERVISED
        return bool(self.guard and self.guard.get("decision") == "fall_back")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunSummary:
        return cls(**data)

    @classmethod
    def from_metrics(cls, metrics: RunMetrics, *, teachers: list[TeacherSummary], **facts) -> RunSummary:
        """The card's view of a run's record; `facts` are what the record does not hold (the dataset's ids, the
        teachers' loading flags, the endpoint counts as the card shows them)."""
        return cls(
            teachers=teachers,
            label_names=list(metrics.label_names),
            num_labeled=metrics.num_labeled,
            num_unlabeled=metrics.num_unlabeled,
            num_test=metrics.num_test,
            hyperparameters=metrics.config,
            num_processes=metrics.num_processes,
            wall_time_s=metrics.wall_time_s,
            student_accuracy=metrics.student_accuracy,
            supervised_accuracy=metrics.supervised_accuracy,
            reuser_accuracy=metrics.reuser_accuracy,
            per_domain=metrics.per_domain,
            worst_domain=metrics.worst_domain_accuracy,
            attention_by_domain=metrics.attention_by_domain,
            guard=metrics.guard,
            screening=metrics.screening,
            reuse_strength=metrics.reuse_strength,
            method=metrics.method,
            delivered=metrics.delivered,
            method_student_accuracy=metrics.method_student_accuracy,
            **facts,
        )
