"""The student loop shared by MRL and every baseline, driven by Accelerate.

`StudentTrainer` trains one student on labeled cross-entropy plus the unlabeled term of a strategy
(`hf_mrl.training.strategies`): MRL's distillation toward the attention reuser, a baseline's pseudo-labels, nothing for
supervised-only. What a strategy needs from the loop is public (`batch_indices`, `inputs`, `data`, `reuse`,
`student`, `accelerator`); what it owns (MRL's reuser, reuse gate and outer optimiser) stays with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from hf_mrl.data.augment import translate as _translate
from hf_mrl.data.images import ImageSet, batch_rows
from hf_mrl.data.types import TargetData
from hf_mrl.reuse.outputs import TeacherOutputs, compute_teacher_outputs
from hf_mrl.training.checkpoint import load_checkpoint
from hf_mrl.training.checkpoint import save_checkpoint as write_checkpoint
from hf_mrl.training.config import MRLConfig
from hf_mrl.training.losses import kd_loss
from hf_mrl.training.student import create_student, fast_cpu_pooling, student_preprocess

__all__ = ["TargetData", "TeacherOutputs", "StudentTrainer", "compute_teacher_outputs", "kd_loss", "make_accelerator"]

logger = logging.getLogger(__name__)


def make_accelerator(**kwargs) -> Accelerator:
    """An Accelerator that also goes multi-process on a machine without GPU.

    Accelerate only picks its multi-CPU (gloo) mode when asked for the CPU explicitly; without this,
    `accelerate launch --num_processes 2` on a CPU machine would run two unrelated single processes.
    """
    kwargs.setdefault("cpu", not torch.cuda.is_available())
    return Accelerator(**kwargs)


class _Step:
    """Training progress, saved with the Accelerate state."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"step": self.value}

    def load_state_dict(self, state):
        self.value = int(state["step"])


class StudentTrainer:
    """Trains one student by `config.method`: MRL, a baseline, or supervised learning only.

    Args:
        config: the hyperparameters.
        data: the target task.
        reuse: teacher probabilities and psi features (required for `mrl`), from `compute_teacher_outputs`.
        teacher_ids: the pool's ids, recorded in the reuser config.
        accelerator: shared across trainers in one process; created when None.
        student_spec: `create_student` arguments (`architecture`, `model_args`, `pretrained`, `image_size`...). A
            fresh student reads inputs at the data's size; a pretrained one at its own, unless `image_size` is given.
        num_workers: DataLoader processes that decode the next steps' batches of lazy images (`ImageSet`) while
            the student trains; 0 decodes in this process.
        allow_pickle: let a resume load a checkpoint folder that holds pickle files (an Accelerate checkpoint of an
            earlier hf_mrl); refused by default, since unpickling a planted file runs its code.

    >>> trainer = StudentTrainer(MRLConfig(max_steps=10), data, reuse, teacher_ids=pool.ids)  # doctest: +SKIP
    >>> student = trainer.train(); predictions = trainer.predict(data.test_images)  # doctest: +SKIP
    >>> trainer.strategy.reuser  # MRL's attention reuser (None for methods without one)  # doctest: +SKIP
    """

    # The name under which the training loop logs each step to the accelerator's trackers (None: not logged); set by
    # ReuseTrainer for the runs it reports (the supervised baseline and the method), not for the guard's folds.
    log_prefix: str | None = None

    def __init__(
        self,
        config: MRLConfig,
        data: TargetData,
        reuse: TeacherOutputs | None = None,
        teacher_ids: list[str] | None = None,
        accelerator: Accelerator | None = None,
        student_spec: dict | None = None,
        num_workers: int = 0,
        allow_pickle: bool = False,
    ):
        self.config = config
        self.allow_pickle = allow_pickle
        self.data = data
        self.reuse = reuse
        self.accelerator = accelerator or make_accelerator()
        from hf_mrl.training.strategies import get_strategy

        strategy_cls = get_strategy(config.method)
        if strategy_cls.needs_teachers and reuse is None:
            raise ValueError(
                f"method={config.method!r} needs teacher outputs: pass reuse=compute_teacher_outputs(...)."
            )
        self.teacher_ids = list(teacher_ids or [])
        torch.manual_seed(config.seed)
        spec = dict(student_spec or {})
        if spec.get("image_size") is None and not spec.get("pretrained"):
            spec["image_size"] = data.labeled_images.shape[-1]
        self.student = fast_cpu_pooling(create_student(data.label_names, **spec))
        self.preprocess = student_preprocess(self.student)
        self.input_size = student_input_side(self.student)
        self.data = data = data.at_size(self.input_size)  # lazy images are decoded where the student reads them
        self.num_workers = num_workers
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.student, self.optimizer = self.accelerator.prepare(self.student, self.optimizer)
        self.step = _Step()
        self._checkpointed: dict[str, object] = {}
        self.register_for_checkpointing(step=self.step, optimizer=self.optimizer)
        self.strategy = strategy_cls(self)
        self.history: list[dict[str, float]] = []

    def register_for_checkpointing(self, **objects) -> None:
        """Objects with `state_dict` / `load_state_dict` saved in every checkpoint, by name (with the student)."""
        for name, obj in objects.items():
            if name in self._checkpointed or name == "student":
                raise ValueError(f"{name!r} is already checkpointed")
            self._checkpointed[name] = obj

    def _checkpoint_objects(self) -> dict:
        return {"student": self.accelerator.unwrap_model(self.student), **self._checkpointed}

    # -- batches ---------------------------------------------------------------------------------
    def batch_indices(self, step: int, stream: int = 0) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
        """Global batch for `step`, sliced to this process; a function of (seed, stream, step) only, so
        a resumed run sees exactly the batches an uninterrupted one would. Outer steps draw from their
        own streams so they never reuse a training step's batch."""
        cfg, acc = self.config, self.accelerator
        sizes = (len(self.data.labeled_labels), len(self.data.unlabeled_images), cfg.batch_size)
        sizes += (cfg.unlabeled_batch_size, acc.process_index, acc.num_processes)
        return _batch_indices(cfg.seed, stream, step, *sizes)

    def inputs(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Student inputs on the device: preprocessed and, when `config.augment`, randomly translated."""
        x = self.preprocess(images)
        if self.config.augment:
            x = _translate(x, gen)
        return x.to(self.accelerator.device)

    # -- one step ----------------------------------------------------------------------------------
    def training_step(self, step: int, images: tuple | None = None) -> dict[str, float]:
        """One student step: labeled CE plus the strategy's unlabeled term, then the strategy's after-step.

        `images`: the step's (labeled, unlabeled) uint8 batches when a DataLoader decoded them ahead.
        """
        acc = self.accelerator
        gen, idx_l, idx_u = self.batch_indices(step)
        if images is None:
            images = _step_images(self.data, idx_l, idx_u, self.strategy.uses_unlabeled)
        x_l = self.inputs(images[0], gen)
        y_l = self.data.labeled_labels[idx_l].to(acc.device)
        self.student.train()
        logs: dict[str, float] = {}
        if self.strategy.uses_unlabeled:
            images_u = images[1]
            x_u = self.inputs(images_u, gen)
            logits = self.student(torch.cat([x_l, x_u]))
            ce = F.cross_entropy(logits[: len(x_l)], y_l)
            unlabeled, extra = self.strategy.unlabeled_loss(logits[len(x_l) :], idx_u, images_u, gen, step)
            loss = ce + unlabeled
            logs.update(ce_loss=ce.item(), **extra)
        else:
            loss = F.cross_entropy(self.student(x_l), y_l)
            logs["ce_loss"] = loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        if self.strategy.uses_unlabeled:
            self.strategy.before_update(step, torch.cat([x_l, x_u]), logits.detach(), len(x_l), idx_u)
        self.optimizer.step()
        logs["loss"] = loss.item()
        logs.update(self.strategy.after_step(step))
        return logs

    # -- the loop ----------------------------------------------------------------------------------
    def train(self, checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True):
        """Run to `max_steps`; checkpoint under `checkpoint_dir`, resume from its latest state if asked.

        Returns the (unwrapped) student.
        """
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        if resume and checkpoint_dir is not None:
            latest = latest_checkpoint(checkpoint_dir)
            if latest is not None:
                load_checkpoint(latest, self._checkpoint_objects(), acc, allow_pickle=self.allow_pickle)
                logger.info("Resumed %s training from %s (step %d)", cfg.method, latest, self.step.value)
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step.value,
            desc=cfg.method,
            disable=not (progress and acc.is_local_main_process),
            mininterval=0.1 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not 10 a second
        )
        prefetched = self._prefetch(self.step.value)
        while self.step.value < cfg.max_steps:
            logs = self.training_step(self.step.value, None if prefetched is None else next(prefetched))
            self.step.value += 1
            self.history.append(logs)
            if self.log_prefix and acc.trackers:  # --report_to: Accelerate's trackers (main process only)
                acc.log(self._tracked(logs), step=self.step.value)
            bar.update(1)
            if self.step.value % 20 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
            done = self.step.value == cfg.max_steps
            every = cfg.checkpoint_every and self.step.value % cfg.checkpoint_every == 0
            if checkpoint_dir is not None and (done or every):
                self.save_checkpoint(checkpoint_dir)
        bar.close()
        self.strategy.on_train_end()
        return acc.unwrap_model(self.student)

    def _tracked(self, logs: dict) -> dict[str, float]:
        out = {f"{self.log_prefix}/{k}": float(v) for k, v in logs.items() if isinstance(v, (int, float))}
        if hasattr(self.strategy, "reuse_strength"):
            out[f"{self.log_prefix}/reuse_strength"] = float(self.strategy.reuse_strength)
        return out

    def _prefetch(self, start: int):
        """Batches of steps `start`.. decoded by DataLoader workers while the student trains (lazy images only)."""
        if not (self.data.lazy and self.num_workers > 0) or start >= self.config.max_steps:
            return None
        from torch.utils.data import DataLoader

        from hf_mrl.data.images import _one_thread

        cfg = self.config
        # The trainer's own batch_indices (a strategy may route it): the workers draw exactly the step's batch.
        steps = _StepImages(self.data, self.batch_indices, self.strategy.uses_unlabeled)
        loader = DataLoader(
            steps,
            sampler=range(start, cfg.max_steps),
            batch_size=None,
            num_workers=self.num_workers,
            worker_init_fn=_one_thread,
            prefetch_factor=4,
        )
        return iter(loader)

    def save_checkpoint(self, checkpoint_dir: str | os.PathLike) -> Path:
        """The training state at the current step (`hf_mrl.training.checkpoint`: no pickle); written to a temp name, then
        renamed (all-or-nothing). A full disk removes the partial folder and raises `DiskFullError`."""
        acc = self.accelerator
        final = Path(checkpoint_dir) / f"step_{self.step.value:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)  # a leftover of a crash mid-save
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            write_checkpoint(tmp, self._checkpoint_objects(), acc, self.step.value)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written keeps the disk full
            raise
        acc.wait_for_everyone()
        if acc.is_main_process:
            old = final.with_name(final.name + ".old")
            if final.exists():
                os.replace(final, old)  # never a moment without a complete checkpoint of this step
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor | ImageSet, batch_size: int = 512) -> torch.Tensor:
        """Student predictions on uint8 images or an `ImageSet`, sharded over processes and gathered in order."""
        from torch.utils.data import DataLoader, TensorDataset

        from hf_mrl.data.images import _one_thread

        acc = self.accelerator
        if isinstance(images, ImageSet):
            dataset, workers = _Items(images.resized(self.input_size)), self.num_workers
            loader = DataLoader(
                dataset, batch_size=batch_size, num_workers=workers, worker_init_fn=_one_thread if workers else None
            )
        else:
            loader = DataLoader(TensorDataset(images), batch_size=batch_size)
        loader = acc.prepare(loader)
        self.student.eval()
        preds = []
        for (x,) in loader:
            logits = self.student(self.preprocess(x.cpu()).to(acc.device))
            preds.append(acc.gather_for_metrics(logits.argmax(-1)))
        return torch.cat(preds).cpu()


def student_input_side(model: torch.nn.Module) -> int:
    """The side at which a student's preprocessing wants its uint8 input (before its centre crop)."""
    cfg = getattr(model, "module", model).pretrained_cfg
    return int(tuple(cfg.get("input_size", (3, 224, 224)))[-1] / (cfg.get("crop_pct") or 1.0))


def _batch_indices(seed, stream, step, n, m, batch_size, unlabeled_batch_size, rank, world):
    key = hashlib.sha256(f"{seed}/{stream}/{step}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
    idx_l = torch.randint(0, n, (batch_size,), generator=gen)
    idx_u = torch.randint(0, m, (unlabeled_batch_size,), generator=gen)
    return gen, idx_l[rank::world], idx_u[rank::world]


def _step_images(data: TargetData, idx_l, idx_u, unlabeled: bool) -> tuple:
    return batch_rows(data.labeled_images, idx_l), (batch_rows(data.unlabeled_images, idx_u) if unlabeled else None)


class _StepImages(torch.utils.data.Dataset):
    """Item `step`: that step's (labeled, unlabeled) uint8 batches, the ones `batch_indices(step)` names."""

    def __init__(self, data: TargetData, batch_indices, unlabeled: bool):
        self.data, self.batch_indices, self.unlabeled = data, batch_indices, unlabeled

    def __getitem__(self, step: int):
        _, idx_l, idx_u = self.batch_indices(step)
        return _step_images(self.data, idx_l, idx_u, self.unlabeled)


class _Items(torch.utils.data.Dataset):
    """An `ImageSet` as a map-style dataset of `(uint8 image,)` items, fetched a batch at a time."""

    def __init__(self, images: ImageSet):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return (self.images[int(i)],)

    def __getitems__(self, indices: list[int]):
        return [(x,) for x in self.images[list(indices)]]


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete `step_N` folder, or None."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    steps = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step_\d+", p.name)]
    return max(steps, key=lambda p: int(p.name.split("_")[1]), default=None)
