"""The whole reuse run as one library object: `ReuseTrainer(pool, data, config, args).train()`.

One run trains the supervised-only student (the promise's reference), the method's student (MRL by default, or a
baseline), checks the method against supervised-only by cross-validation (the never-worse guard), decides which
student to deliver, and measures everything on the test split. The result saves itself (`save_pretrained`: the
reuser and the delivered student with their model cards, and metrics.json, each written atomically) and pushes
itself (`push_to_hub`). Recipes, benchmarks and robustness studies are thin callers of this object.

>>> from hf_mrl import ModelPool, MRLConfig, ReuseArguments, ReuseTrainer  # doctest: +SKIP
>>> pool = ModelPool.from_file("hub-ids.txt", label_names=data.label_names)  # doctest: +SKIP
>>> result = ReuseTrainer(pool, data, MRLConfig(max_steps=1000)).train()  # doctest: +SKIP
>>> result.metrics["student_accuracy"], result.guard.decision  # doctest: +SKIP
>>> result.save_pretrained("runs/mus"); result.push_to_hub("me/mus-mrl")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import torch

from hf_mrl.data.types import TargetData
from hf_mrl.guard import (
    GuardBeside,
    GuardReport,
    cross_validate_reuse,
    default_workers,
    fold_correctness,
    no_evidence_report,
    repeated_folds,
)
from hf_mrl.hub.cards import RunSummary, TeacherSummary
from hf_mrl.metrics import accuracy_report
from hf_mrl.pool.model_pool import ModelPool
from hf_mrl.pool.screening import screen_teachers
from hf_mrl.record import Delivered, RunMetrics
from hf_mrl.reuse.embedding import Embedding
from hf_mrl.reuse.outputs import TeacherOutputs, compute_teacher_outputs
from hf_mrl.training.config import MRLConfig
from hf_mrl.training.result import (  # noqa: F401
    ReuseArguments,
    ReuseResult,
    SupervisedRun,
    _student_facts,
)
from hf_mrl.training.strategies import get_strategy
from hf_mrl.training.trainer import StudentTrainer, make_accelerator
from hf_mrl.utils import cache_root, torch_threads

__all__ = ["ReuseArguments", "ReuseResult", "ReuseTrainer", "SupervisedRun"]


logger = logging.getLogger(__name__)


class ReuseTrainer:
    """Runs the whole reuse job: teacher outputs, supervised-only baseline, the method, guard, delivery, metrics.

    Args:
        pool: the teachers (`ModelPool`), a pool file or a list of ids (loaded with default options), or None for a
            method that uses no teacher.
        data: the target task (`hf_mrl.data.target.load_target` builds it from a dataset).
        config: training hyperparameters, `config.method` the method (default: MRL).
        args: what the run does besides training (`ReuseArguments`).
        reuse: precomputed teacher outputs and psi features (`compute_teacher_outputs`), to share them across runs.
        embedding: the psi embedding, prepared (`Embedding(...).prepare()`); None: `config.embedding`, prepared here.
        accelerator: shared with every student trainer of the run; created when None.

    >>> result = ReuseTrainer(pool, data, MRLConfig(max_steps=300)).train()  # doctest: +SKIP
    >>> result.save_pretrained("runs/mus")  # doctest: +SKIP
    """

    def __init__(
        self,
        pool: ModelPool | str | os.PathLike | list[str] | None,
        data: TargetData,
        config: MRLConfig | None = None,
        args: ReuseArguments | None = None,
        *,
        reuse: TeacherOutputs | None = None,
        embedding: Embedding | None = None,
        accelerator=None,
    ):
        self.config = config or MRLConfig()
        self.args = args or ReuseArguments()
        self.data = data
        self.strategy_cls = get_strategy(self.config.method)
        if not isinstance(data, TargetData):
            raise TypeError(
                f"data must be a TargetData (see hf_mrl.data.target.load_target); got {type(data).__name__}."
            )
        if self.strategy_cls.needs_teachers:
            if pool is None and reuse is None:
                raise ValueError(f"method={self.config.method!r} reuses teachers: pass a pool.")
            if isinstance(pool, (str, os.PathLike, list)):
                pool = ModelPool(
                    pool if isinstance(pool, list) else _pool_ids(pool),
                    data.label_names,
                    cache_dir=cache_root() / "logits",
                )
        elif pool is not None:
            logger.info("--method %s uses no teachers: the pool is not run.", self.config.method)
            pool = None
        self.pool = pool
        self.reuse = reuse if self.strategy_cls.needs_teachers else None
        self.embedding = embedding
        self.accelerator = accelerator or make_accelerator()

    @property
    def progress(self) -> bool:
        return self.args.progress and self.accelerator.is_local_main_process

    # -- the pieces of a run -------------------------------------------------------------------------
    def compute_teacher_outputs(self) -> TeacherOutputs | None:
        """Teacher outputs (cached; each process runs a share) and psi features, once per run."""
        if self.reuse is None and self.pool is not None:
            if self.embedding is None:
                with self.accelerator.main_process_first():
                    self.embedding = self.prepare_embedding(self.config, self.pool)
            mixed = getattr(self.accelerator, "mixed_precision", "no")
            if self.pool.precision == "fp32" and mixed in ("bf16", "fp16"):
                logger.info("Teacher inference in %s (the Accelerator's mixed precision).", mixed)
                self.pool.precision = mixed
            self.reuse = compute_teacher_outputs(
                self.pool,
                self.embedding,
                self.data,
                progress=self.progress,
                accelerator=self.accelerator,
                num_workers=self.args.dataloader_num_workers,
            )
        return self.reuse

    @staticmethod
    def prepare_embedding(config: MRLConfig, pool: ModelPool) -> Embedding:
        """psi for `config.method`, loaded under the pool's options and cached beside its teacher outputs.

        Only the attention reuser reads psi(x): the other reuse methods get the free teacher-output features (never
        an encoder to load).
        """
        spec = config.embedding if config.method == "mrl" else "teacher-outputs"
        opts = {"trust_remote_code": pool.trust_remote_code, "allow_pickle": pool.allow_pickle}
        return Embedding(spec, cache_dir=pool.cache.cache_dir, **opts).prepare()

    def _student_trainer(self, config: MRLConfig, data: TargetData | None = None) -> StudentTrainer:
        needs = get_strategy(config.method).needs_teachers
        return StudentTrainer(
            config,
            data or self.data,
            self.reuse if needs else None,
            teacher_ids=self.teacher_ids if needs else None,
            accelerator=self.accelerator,
            student_spec=self.args.student,
            num_workers=self.args.dataloader_num_workers,
            allow_pickle=self.args.allow_pickle,
        )

    @property
    def teacher_ids(self) -> list[str]:
        return self.pool.ids if self.pool is not None else []

    def train_supervised(self, checkpoint_dir: str | os.PathLike | None = None, resume: bool = False) -> SupervisedRun:
        """The supervised-only student (same student, budget and seed), and its test predictions."""
        trainer = self._student_trainer(dataclasses.replace(self.config, method="supervised"))
        trainer.log_prefix = "supervised"
        student = trainer.train(checkpoint_dir, resume=resume, progress=self.progress)
        return SupervisedRun(student, trainer.predict(self.data.test_images), trainer=trainer)

    def guard_folds(self) -> int:
        """Folds the guard will use: `args.guard_folds`, at most the label count of the rarest class that has two or
        more (classes with one label are trained on in every fold, never held out); 0 when off, and 0 with a
        warning when no class has two labels (`run_guard` then falls back for lack of evidence)."""
        if self.args.guard_folds == 0:
            return 0
        counts = torch.bincount(self.data.labeled_labels)
        multi = counts[counts > 1]
        singles = int((counts == 1).sum())
        if singles:
            logger.warning(
                "Guard: %d class(es) have one labeled sample: trained on in every fold, not held out.", singles
            )
        if not len(multi):
            logger.warning("Guard: no class has two labeled samples: no held-out evidence, the guard will fall back.")
            return 0
        return max(2, min(self.args.guard_folds, int(multi.min())))

    def _guard_key(self) -> tuple[int, int]:
        return self.guard_folds(), self.args.guard_repeats

    def supervised_guard_side(self, supervised: SupervisedRun) -> torch.Tensor | None:
        """The supervised side of the guard (held-out correctness (repeats, n)), computed once per run."""
        folds, repeats = self._guard_key()
        if not folds:
            return None
        if (folds, repeats) not in supervised.guard_correct:
            fold = repeated_folds(self.data.labeled_labels, folds, repeats, seed=self.config.seed)
            config = dataclasses.replace(self.config, method="supervised")
            supervised.guard_correct[(folds, repeats)] = fold_correctness(
                config,
                self.data,
                None,
                None,
                fold,
                self.args.student,
                self._guard_workers(folds * repeats),
                self.progress,
            )
        return supervised.guard_correct[(folds, repeats)]

    def _guard_workers(self, trainings: int) -> int:
        if self.args.guard_workers is not None:
            return self.args.guard_workers
        return default_workers(trainings, self.accelerator)

    def _guard_side(self, supervised: SupervisedRun | None, folds: int, repeats: int) -> tuple:
        """(the shared supervised side or None, the guard's workers for the trainings left to it)."""
        shared = None if supervised is None else supervised.guard_correct.get((folds, repeats))
        return shared, self._guard_workers(folds * repeats * (1 if shared is not None else 2))

    def _guard_beside(self, supervised: SupervisedRun | None) -> GuardBeside | None:
        """Start the guard beside the run's own trainings, when it will run and has two workers or more."""
        args = self.args
        will_guard = supervised is not None or args.supervised_baseline
        if not (args.guard_beside and will_guard and args.guard_folds and self.config.method != "supervised"):
            return None
        folds, repeats = self._guard_key()
        workers = self._guard_side(supervised, folds, repeats)[1] if folds else 0
        if workers < 2:
            return None
        return GuardBeside(lambda schedule: self.run_guard(supervised, schedule), workers)

    def run_guard(self, supervised: SupervisedRun | None, schedule: dict | None = None) -> GuardReport | None:
        """Cross-validate the method against supervised-only on the labeled data (non-inferiority at
        `args.guard_margin`); None when off; a `fall_back` report without training when nothing can be held out.
        `schedule`: see `cross_validate_reuse`."""
        args = self.args
        if args.guard_folds == 0 or self.config.method == "supervised":
            return None
        folds, repeats = self._guard_key()
        if not folds:
            return no_evidence_report(
                len(self.data.labeled_labels), args.guard_folds, repeats, args.guard_margin, args.guard_confidence
            )
        shared, workers = self._guard_side(supervised, folds, repeats)
        report = cross_validate_reuse(
            self.config,
            self.data,
            self.reuse,
            self.teacher_ids or None,
            folds,
            self.args.student,
            supervised_correct=shared,
            workers=workers,
            progress=self.progress,
            repeats=repeats,
            margin=args.guard_margin,
            confidence=args.guard_confidence,
            sequential=args.guard_sequential,
            schedule=schedule,
        )
        logger.info(
            "Guard (%d x %d folds, %d held out, %d trainings): %s %.4f vs supervised %.4f, gain %+.4f +/- %.4f, "
            "loss bound %+.4f vs margin %.4f: %s (%s)",
            report.repeats,
            report.folds,
            report.held_out,
            report.trainings,
            self.config.method,
            report.method_accuracy,
            report.supervised_accuracy,
            report.gain,
            report.gain_stderr,
            report.loss_upper,
            report.margin,
            report.decision,
            report.reason,
        )
        logger.info("Guard: %s", report.cost_sentence())
        return report

    # -- the whole run ---------------------------------------------------------------------------------
    def train(
        self,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        supervised: SupervisedRun | None = None,
    ) -> ReuseResult:
        """Run everything and return the result (nothing is written; see `ReuseResult.save_pretrained`).

        Args:
            checkpoint_dir: where each student's training state is checkpointed (`<dir>/<method>`).
            resume: continue from the latest checkpoints there.
            supervised: a `SupervisedRun` of the same data, config and seed to reuse (e.g. across pools).
        """
        start = time.time()
        cfg, args, data = self.config, self.args, self.data
        method = cfg.method
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
        times, clock = {}, time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            times[name] = round(now - clock, 1)
            clock = now

        self.compute_teacher_outputs()
        lap("teacher_outputs")
        screening = []
        if self.pool is not None:
            logger.info("Pool: %s", ", ".join(self.pool.ids))
            screening = screen_teachers(self.reuse.probs_l, data.labeled_labels, self.pool.ids, self.pool.coverage)
            for k, score in enumerate(screening, start=1):
                logger.info(
                    "Teacher %d %s: labeled accuracy %.3f, LEEP %+.3f over the prior: %s",
                    k,
                    score.id,
                    score.accuracy,
                    score.leep_gain,
                    "; ".join(score.flags) or "ok",
                )
        beside = self._guard_beside(supervised)
        try:
            with torch_threads(beside.main_threads) if beside is not None else contextlib.nullcontext():
                if supervised is None and (args.supervised_baseline or method == "supervised"):
                    supervised = self.train_supervised(None if ckpt is None else ckpt / "supervised", resume)
                lap("supervised")
                if method == "supervised":
                    # The supervised-only student is this run's student: trained once, and no guard against itself.
                    trainer, method_student = supervised.trainer, supervised.student
                    method_pred = supervised.test_predictions
                else:
                    trainer = self._student_trainer(cfg)
                    trainer.log_prefix = method
                    ckpt_m = None if ckpt is None else ckpt / method
                    method_student = trainer.train(ckpt_m, resume, progress=self.progress)
                    method_pred = trainer.predict(data.test_images)
        except BaseException:
            if beside is not None:
                beside.cancel()
            raise
        reuser = trainer.strategy.reuser
        if reuser is not None and self.pool is not None:
            reuser.attach_pool(self.pool)  # records the teachers' weights hashes in its config
        reuse_out = trainer.strategy.reuse_predictions("test") if reuser is not None else None
        lap("method")
        if beside is not None:
            guard = beside.result()
            times["guard_total"] = beside.wall_s  # from its start beside the trainings; "guard" is what it added
        else:
            guard = self.run_guard(supervised) if supervised is not None else None
        lap("guard")
        fell_back = guard is not None and guard.decision == "fall_back"
        if fell_back:
            logger.warning(
                "Guard: %s is not shown within %.1f points of supervised-only; delivering the supervised student.",
                method,
                100 * guard.margin,
            )
        if method == "supervised" or fell_back:
            delivered, student = Delivered.SUPERVISED, supervised.student
        else:
            delivered, student = Delivered.METHOD, method_student

        predictions = {"method": method_pred}
        if supervised is not None and supervised.test_predictions is not None:
            predictions["supervised"] = supervised.test_predictions
        if reuse_out is not None:
            predictions["reuser"] = reuse_out["predictions"]
        metrics = self._metrics(predictions, delivered, screening, guard, trainer, reuse_out, start)
        metrics.time_s = times  # wall time of each part of the run
        self._log_to_trackers(metrics, reuse_out)
        return ReuseResult(
            method=method,
            delivered=delivered,
            student=student,
            method_student=method_student,
            supervised_student=getattr(supervised, "student", None),
            reuser=reuser,
            screening=screening,
            guard=guard,
            metrics=metrics,
            summary=self._summary(metrics, reuse_out),
            predictions=predictions,
            reuse_weights=None if reuse_out is None else reuse_out["weights"],
            supervised=supervised,
            trainer=trainer,
        )

    # -- reporting -----------------------------------------------------------------------------------------
    def _log_to_trackers(self, metrics: RunMetrics, reuse_out: dict | None) -> None:
        """The run's results to the accelerator's trackers (--report_to): accuracies, the reuser's mean attention per
        teacher, the reuse strength, and the guard's evidence (its gain, bound and decision)."""
        acc = self.accelerator
        if not acc.trackers:
            return
        values = {
            f"results/{k}": metrics[k]
            for k in ("student_accuracy", "supervised_accuracy", "reuser_accuracy", "reuse_strength")
            if isinstance(metrics.get(k), (int, float))
        }
        if reuse_out is not None:  # mean attention per teacher over the test split
            for k, weight in enumerate(reuse_out["weights"].mean(0).tolist()):
                values[f"attention/teacher_{k + 1}"] = weight
        guard = metrics.get("guard") or {}
        for key in ("gain", "gain_stderr", "loss_upper", "z", "margin", "method_accuracy", "supervised_accuracy"):
            if isinstance(guard.get(key), (int, float)):
                values[f"guard/{key}"] = float(guard[key])
        if guard:
            values["guard/delivered_method"] = float(guard.get("decision") != "fall_back")
        acc.log(values, step=self.config.max_steps)

    def _report(self, pred: torch.Tensor) -> dict:
        d = self.data
        return accuracy_report(pred, d.test_labels, d.test_domains, d.domain_names)

    def teacher_accuracy(self) -> list[float]:
        """Each teacher's test accuracy (pool order)."""
        if self.reuse is None:
            return []
        return [self._report(self.reuse.probs_t[:, k].argmax(-1))["accuracy"] for k in range(len(self.teacher_ids))]

    def _metrics(self, predictions, delivered, screening, guard, trainer, reuse_out, start) -> RunMetrics:
        cfg, data, acc = self.config, self.data, self.accelerator
        is_mrl = cfg.method == "mrl"
        reports = {key: self._report(pred) for key, pred in predictions.items()}
        # A run that shares another run's guard side only has no supervised student to measure.
        delivered_key = "supervised" if delivered is Delivered.SUPERVISED else "method"
        if delivered_key in reports:
            reports["student"] = reports[delivered_key]
        accuracy = {key: r["accuracy"] for key, r in reports.items()}
        sup_acc = accuracy.get("supervised")
        forward_samples, forward_by_process = self._teacher_forward_samples()
        strategy = trainer.strategy
        metrics = RunMetrics(
            method=cfg.method,
            delivered=delivered,
            student_accuracy=accuracy.get("student"),
            method_student_accuracy=accuracy["method"],
            supervised_accuracy=sup_acc,
            reuser_accuracy=accuracy.get("reuser"),
            never_worse=None if sup_acc is None else accuracy["student"] >= sup_acc,
            teacher_accuracy=dict(zip(self.teacher_ids, self.teacher_accuracy(), strict=True)),
            teacher_forward_samples=forward_samples,
            endpoints=self.pool.endpoint_stats() if self.pool is not None else None,
            teacher_forward_samples_by_process=forward_by_process,
            screening=[score.to_dict() for score in screening],
            guard=None if guard is None else guard.to_dict(),
            reuse_strength=strategy.reuse_strength if is_mrl else None,
            dataset=str(self.args.dataset_description or self.args.dataset),  # a plain str: YAML and JSON
            label_names=list(data.label_names),
            num_labeled=len(data.labeled_labels),
            num_unlabeled=len(data.unlabeled_images),
            num_test=len(data.test_labels),
            splits=self.args.splits,
            evaluation="test" if not self._test_overlap else "overlaps the labeled data (not a test accuracy)",
            config=cfg.to_dict(),
            pool=self.teacher_ids,
            label_map=self.pool.label_mapping if self.pool is not None and self.pool.label_map else None,
            label_mapping=self.pool.label_mapping if self.pool is not None else {},
            num_processes=acc.num_processes,
            prototypes_in_sync=strategy.replicas_in_sync if is_mrl else None,
            wall_time_s=round(time.time() - start, 1),
        )
        if "per_domain" in reports["method"]:
            shown = {k: r for k, r in reports.items() if k != "method"} if "supervised" in reports else reports
            metrics.per_domain = {
                d: {key: r["per_domain"][d] for key, r in shown.items()} for d in reports["method"]["per_domain"]
            }
            metrics.worst_domain_accuracy = {key: r["worst_domain_accuracy"] for key, r in shown.items()}
            if reuse_out is not None:
                metrics.attention_by_domain = self._attention_by_domain(reuse_out["weights"])
        return metrics

    def _teacher_forward_samples(self) -> tuple[dict, list]:
        """Teacher forward passes (samples) per teacher, summed over processes, and per process (each runs a share)."""
        if self.pool is None:
            return {}, []
        acc, teachers = self.accelerator, self.pool.teachers
        seen = torch.tensor([t.samples_seen for t in teachers], dtype=torch.int64, device=acc.device)
        by_process = acc.gather(seen[None]) if acc.num_processes > 1 else seen[None]
        total = by_process.sum(0).tolist()
        return {t.id: int(n) for t, n in zip(teachers, total, strict=True)}, by_process.sum(1).tolist()

    def _attention_by_domain(self, weights: torch.Tensor) -> dict:
        data = self.data
        present = sorted(d for d in set(data.test_domains.tolist()) if d >= 0)
        names = data.domain_names or [str(d) for d in range(max(present, default=-1) + 1)]
        return {names[d]: weights[data.test_domains == d].mean(0).tolist() for d in present}

    def _summary(self, metrics: RunMetrics, reuse_out: dict | None) -> RunSummary:
        """What the model cards show about this run: its record, with the teachers' part of the pool."""
        teachers, pool = [], self.pool
        if pool is not None:
            mean_att = [None] * len(pool) if reuse_out is None else reuse_out["weights"].mean(0).tolist()
            teachers = [
                TeacherSummary(
                    id=t.id,
                    library=t.library,
                    labels_covered=m.num_covered,
                    missing_labels=[n for n, covered in zip(pool.label_names, m.coverage, strict=True) if not covered],
                    mean_attention=a,
                    test_accuracy=metrics.teacher_accuracy[t.id],
                )
                for t, m, a in zip(pool.teachers, pool.mappings, mean_att, strict=True)
            ]
        dataset, dataset_id, dataset_config = _dataset_ids(self.args.dataset, metrics.dataset)
        return RunSummary.from_metrics(
            metrics,
            teachers=teachers,
            dataset=dataset,
            dataset_id=dataset_id,
            dataset_config=dataset_config,
            max_steps=self.config.max_steps,
            seed=self.config.seed,
            trust_remote_code=bool(pool is not None and pool.trust_remote_code),
            allow_pickle=bool(pool is not None and pool.allow_pickle),
            endpoints=_card_endpoints(metrics.endpoints),
            test_overlap=self._test_overlap,
        )

    @property
    def _test_overlap(self) -> int:
        return int((self.args.splits or {}).get("labeled_test_overlap") or 0)


def _pool_ids(path: str | os.PathLike) -> list[str]:
    from hf_mrl.pool.model_pool import parse_pool_file

    return parse_pool_file(path)


def _dataset_ids(spec: str, description: str) -> tuple[str, str, str | None]:
    """(name shown on the cards, model-index dataset type, dataset config) of a dataset spec."""
    from hf_mrl.data.target import hub_dataset_id

    if spec.startswith("digits-ld"):
        return description, "digits-ld", spec.partition(":")[2] or "MUS"
    hub = hub_dataset_id(spec) if spec != "custom" else None
    if hub is not None:
        repo_id, revision = hub
        return repo_id if revision is None else f"{repo_id}@{revision}", repo_id, None
    name = Path(spec).name or spec  # a local folder: its name only, not the path on this machine
    return f"local dataset `{name}`", "custom", None


def _card_endpoints(stats: dict | None) -> dict | None:
    """Endpoint call counts for the card, with the top_k the endpoint teachers were asked for."""
    if not stats:
        return None
    ks = {t["top_k"] for t in stats["teachers"].values()}
    return {
        **{k: v for k, v in stats.items() if k != "teachers"},
        "top_k": "all" if ks == {None} else max(ks - {None}),
    }
