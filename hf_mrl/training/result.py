"""A run's arguments (what it does besides training a student) and its result: the students, the reuser, the guard's report, the metrics; saved as one run folder."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_mrl.guard import DEFAULT_CONFIDENCE, DEFAULT_MARGIN, GuardReport
from hf_mrl.hub.cards import RunSummary, student_card
from hf_mrl.pool.screening import TeacherScore
from hf_mrl.record import Delivered, RunMetrics
from hf_mrl.reuse.reuser import AttentionReuser
from hf_mrl.training.run_folder import MANIFEST, staged_run
from hf_mrl.training.student import TransformersStudent, save_student
from hf_mrl.training.trainer import StudentTrainer
from hf_mrl.utils import atomic_write_json

logger = logging.getLogger(__name__)


@dataclass
class ReuseArguments:
    """What a run does besides training one student (the training hyperparameters are `MRLConfig`).

    Args:
        guard_folds: folds of the never-worse check against supervised-only (0: no check; fewer when the rarest
            class with two or more labels has fewer; classes with one label are trained on, never held out, and
            when no class has two labels the guard falls back for lack of evidence). See `hf_mrl.guard`.
        guard_repeats: repeats of the cross-validation (its variance is corrected for fold dependence); the check
            costs 2 x guard_repeats x guard_folds student trainings (half of them shareable across pools).
        guard_margin: non-inferiority margin in accuracy (0.02 = 2 points): the method's student is delivered only
            when its cross-validated loss against supervised-only is, with `guard_confidence`, below it.
        guard_confidence: one-sided confidence of that bound (the error guarantee of the whole rule).
        guard_sequential: look at the evidence after each fold pair and stop once the decision is settled (keep at
            the end of a repeat on the full rule at a stricter level, fall back as soon as harm is established;
            close cases get every training); False: always train the whole design. See `hf_mrl.guard`.
        guard_workers: processes that train the guard's folds side by side; None: one per core on a
            single-process CPU run, else 1.
        guard_beside: start the guard's fold trainings beside the run's own (supervised, then the method's) when
            it has two workers or more: one worker's core is left to the run's trainings until they end, then all
            workers go to the guard. False: the guard starts after the method's training.
        supervised_baseline: also train the supervised-only student (the reference of the promise; needed by the
            guard and by `never_worse`). Benchmarks that train `supervised` as a method of their own turn it off.
        student: `create_student` arguments (`architecture`, `model_args`, ...); None for the default student.
        dataset: the dataset's spec (`digits-ld:MUS`, a folder, a Hub id), shown on the model cards.
        dataset_description: a readable name of the data, shown in metrics.json and on the cards.
        splits: how the labeled / unlabeled / test parts were made (`load_target`'s `description.splits`), recorded
            as metrics.json `splits`; a `labeled_test_overlap` above 0 makes the metrics and cards say that the
            accuracies are not test accuracies.
        progress: progress bars (main process only).
        dataloader_num_workers: processes decoding lazy images (`ImageSet`) for the teachers, the embedding and
            the student's next batches; 0 decodes in the training process.
        allow_pickle: let a resume load checkpoints that hold pickle files (refused by default: see
            `hf_mrl.training.checkpoint`).
    """

    guard_folds: int = 3
    guard_workers: int | None = None
    guard_repeats: int = 2
    guard_margin: float = DEFAULT_MARGIN
    guard_confidence: float = DEFAULT_CONFIDENCE
    guard_sequential: bool = True
    guard_beside: bool = True
    supervised_baseline: bool = True
    student: dict | None = None
    dataset: str = "custom"
    dataset_description: str | None = None
    splits: dict | None = None
    progress: bool = True
    dataloader_num_workers: int = 0
    allow_pickle: bool = False

    def __post_init__(self):
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0; got {self.dataloader_num_workers}.")
        if self.guard_folds < 0 or self.guard_folds == 1:
            raise ValueError(f"guard_folds must be 0 (off) or >= 2; got {self.guard_folds}.")
        if self.guard_workers is not None and self.guard_workers < 1:
            raise ValueError(f"guard_workers must be >= 1 or None (automatic); got {self.guard_workers}.")
        if self.guard_repeats < 1:
            raise ValueError(f"guard_repeats must be >= 1; got {self.guard_repeats}.")
        if not 0 <= self.guard_margin < 1:
            raise ValueError(f"guard_margin must be in [0, 1) (accuracy); got {self.guard_margin}.")
        if not 0.5 <= self.guard_confidence < 1:
            raise ValueError(f"guard_confidence must be in [0.5, 1); got {self.guard_confidence}.")


@dataclass
class SupervisedRun:
    """The supervised-only side of a run: its student, test predictions and guard folds. It depends on the data,
    config and seed only, so runs over several pools can share it; a side with only `guard_correct` shares the
    guard's supervised trainings (the run then has no supervised student of its own)."""

    student: torch.nn.Module | None = None
    test_predictions: torch.Tensor | None = None
    # (folds, repeats) -> held-out correctness (repeats, n)
    guard_correct: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    trainer: StudentTrainer | None = field(default=None, repr=False)


@dataclass
class ReuseResult:
    """What a run produced. `student` is the delivered one (`delivered` says which), `reuser` MRL's only.

    Attributes:
        method: the trained method; `delivered`: `Delivered.METHOD` (the method's student) or `Delivered.SUPERVISED`.
        student, method_student, supervised_student: the delivered student, the method's own, supervised-only.
        reuser: MRL's `AttentionReuser` (None for other methods).
        screening: each teacher's labeled accuracy, LEEP and flags; `guard`: the never-worse check.
        metrics: the run's record (`RunMetrics`), written as metrics.json; `summary`: what the model cards show.
        predictions: test predictions by `"method"`, `"supervised"`, `"reuser"` (where trained).
        reuse_weights: the reuser's per-teacher weights on the test split (MRL only).
    """

    method: str
    delivered: Delivered
    student: torch.nn.Module
    method_student: torch.nn.Module
    supervised_student: torch.nn.Module | None
    reuser: AttentionReuser | None
    screening: list[TeacherScore]
    guard: GuardReport | None
    metrics: RunMetrics
    summary: RunSummary
    predictions: dict[str, torch.Tensor]
    reuse_weights: torch.Tensor | None = None
    supervised: SupervisedRun | None = None
    trainer: StudentTrainer | None = field(default=None, repr=False)  # the method student's

    @property
    def history(self) -> list[dict[str, float]]:
        """The method student's training logs, one dict a step."""
        return self.trainer.history if self.trainer is not None else []

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The method student's predictions on uint8 images (N, 3, H, W)."""
        return self.trainer.predict(images)

    def save_pretrained(self, output_dir: str | os.PathLike, hub_model_id: str | None = None) -> Path:
        """DIR/reuser/ (MRL only), DIR/student/ (each with its model card), DIR/metrics.json and DIR/manifest.json.

        The new run is written whole beside the old one, verified, then swapped in (`hf_mrl.training.run_folder`): at every
        instant DIR holds one complete run, and a full disk leaves the previous run as it was. A run without a
        reuser removes the DIR/reuser of an earlier run. `hub_model_id` (`ORG/NAME`) names the repos in the cards'
        snippets.
        """
        from hf_mrl.hub.push import student_repo_id

        out = Path(output_dir)
        student_id = student_repo_id(hub_model_id) if hub_model_id else None
        parts = [self.student] + ([self.reuser] if self.reuser is not None else [])
        needed = sum(t.numel() * t.element_size() for m in parts for t in m.state_dict().values())
        if self.reuser is None and (out / "reuser").exists():
            logger.warning("Removing %s: it comes from an earlier run (this method trains no reuser).", out / "reuser")
        card = student_card(
            _student_facts(self.student),
            self.summary,
            repo_id=student_id,
            reuser_repo_id=hub_model_id if self.reuser is not None else None,
        )
        with staged_run(out, needed) as stage:
            if self.reuser is not None:
                reuser = self.reuser.cpu()
                reuser.card_summary = self.summary
                reuser.trust_remote_code = self.summary.trust_remote_code  # recorded in config.json and the card
                reuser.allow_pickle = self.summary.allow_pickle
                reuser.label_map = self.metrics.get("label_map")
                reuser.save_pretrained(
                    stage / "reuser", model_card_kwargs={"repo_id": hub_model_id, "student_repo_id": student_id}
                )
            save_student(self.student, stage / "student", card=str(card))
            atomic_write_json(stage / "metrics.json", self.metrics.to_dict())
        return out

    def push_to_hub(
        self,
        hub_model_id: str,
        *,
        output_dir: str | os.PathLike | None = None,
        token: str | None = None,
        private: bool | None = None,
    ):
        """Push the reuser (if any) to `ORG/NAME` and the student to `ORG/NAME-student`, cards included.

        Pushes `output_dir` as `save_pretrained` wrote it (saved there first if it holds no run), or a temporary
        save. Raises `hf_mrl.hub.push.PushError` with the command that retries the push. Returns a `PushResult`.
        """
        from hf_mrl.hub.push import push_run

        if output_dir is not None:
            if not (Path(output_dir) / MANIFEST).is_file():
                self.save_pretrained(output_dir, hub_model_id)
            return push_run(output_dir, hub_model_id, token=token, private=private)
        with tempfile.TemporaryDirectory(prefix="hf_mrl-push-") as tmp:
            self.save_pretrained(tmp, hub_model_id)
            return push_run(tmp, hub_model_id, token=token, private=private)


def _student_facts(student: torch.nn.Module) -> dict:
    model = getattr(student, "module", student)
    cfg = model.pretrained_cfg
    return {
        "library": "transformers" if isinstance(model, TransformersStudent) else "timm",
        "architecture": cfg.get("architecture"),
        "num_params": sum(p.numel() for p in model.parameters()),
        "label_names": cfg["label_names"],
        "input_size": cfg["input_size"],
        "mean": cfg["mean"],
        "std": cfg["std"],
        "interpolation": cfg.get("interpolation"),
        "crop_pct": cfg.get("crop_pct"),
    }
