"""`hf-mrl train` (and `recipes/train_mrl.py`): parse, check, train, save and report one run."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

from hf_mrl import __version__
from hf_mrl.cli.args import (
    _CONFIG_FLAGS,
    HelpFormatter,
    _data_options,
    _setup_logging,
    _show_defaults,
    add_config_arguments,
    add_data_arguments,
    config_from_args,
    data_options,
)
from hf_mrl.cli.push import push_main
from hf_mrl.data.target import DEFAULT_TEST_SIZE, check_target, load_target
from hf_mrl.hub.push import check_hub_model_id
from hf_mrl.pool.endpoint import add_endpoint_arguments, endpoint_options
from hf_mrl.pool.model_pool import ModelPool, parse_pool_file
from hf_mrl.record import RunMetrics
from hf_mrl.training.config import MRLConfig
from hf_mrl.training.reuse_trainer import ReuseArguments, ReuseResult, ReuseTrainer
from hf_mrl.training.strategies import STRATEGIES, get_strategy
from hf_mrl.training.trainer import latest_checkpoint, make_accelerator
from hf_mrl.utils import atomic_write_json, cache_root, read_json

logger = logging.getLogger(__name__)


def train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a reuse student (and the supervised-only baseline on the same split).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hf-mrl {__version__}")
    p.add_argument("--pool", help="pool file: one `repo_id[@revision]` or local path a line (default: Digits-LD pool)")
    p.add_argument(
        "--method",
        choices=tuple(STRATEGIES),  # read when the parser is built: registered strategies included
        default="mrl",
        help="mrl (attention reuse; the default), a baseline, or oracle (a reference that reads the training data's "
        "latent-domain labels). Only mrl trains a reuser; methods without teachers ignore --pool",
    )
    add_data_arguments(p)
    p.add_argument(
        "--skip_bad_images", action="store_true", help="leave out images that cannot be decoded (counted in metrics)"
    )
    p.add_argument(
        "--label_map", help="JSON file: target label -> teacher label names, for all teachers or per teacher id"
    )
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, default=MRLConfig.max_steps)
    p.add_argument("--resume_from_checkpoint", action="store_true", help="continue from DIR/checkpoints")
    p.add_argument("--checkpointing_steps", type=int, default=0, help="save the training state every N steps")
    p.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="let teachers run their repositories' own modelling code (off: such teachers are refused)",
    )
    p.add_argument(
        "--allow_pickle",
        action="store_true",
        help="accept pickle-only teacher weights and checkpoints holding pickle files, which can run code on load",
    )
    p.add_argument(
        "--guard_folds", type=int, default=3, help="folds of the never-worse check against supervised-only (0: off)"
    )
    p.add_argument(
        "--guard_repeats",
        type=int,
        default=2,
        help="repeats of the guard's cross-validation (fold dependence corrected)",
    )
    p.add_argument(
        "--guard_margin",
        type=float,
        default=0.02,
        help="non-inferiority margin in accuracy: the reuse student is delivered only when its cross-validated loss "
        "against supervised-only is, at 95%% confidence, below it (default 0.02 = 2 points)",
    )
    p.add_argument(
        "--guard_sequential",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop the guard's trainings once its decision is settled (default); --no-guard_sequential trains the "
        "whole design",
    )
    p.add_argument(
        "--guard_workers", type=int, help="processes training the guard's folds (default: one per core on CPU)"
    )
    p.add_argument(
        "--guard_beside",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the guard's trainings beside the run's own when it has two workers or more (default); "
        "--no-guard_beside starts it after the method's training",
    )
    p.add_argument(
        "--student",
        help="student: a timm architecture, `hf-hub:timm/...`, a transformers image-classification id or a local "
        "checkpoint folder (default: a narrow resnet10t)",
    )
    p.add_argument(
        "--student_pretrained",
        action="store_true",
        help="start --student from its weights, with a new head for the target labels (its input size and "
        "normalisation come from its config unless --student_image_size says otherwise)",
    )
    p.add_argument(
        "--student_image_size", type=int, help="the student's input side (default: see --student_pretrained)"
    )
    p.add_argument("--embedding", default=MRLConfig.embedding, help="teacher-outputs | pixels | encoder:<model id>")
    p.add_argument("--outer_every", type=int, default=MRLConfig.outer_every)
    p.add_argument("--batch_size", type=int, default=MRLConfig.batch_size)
    p.add_argument("--unlabeled_batch_size", type=int, default=MRLConfig.unlabeled_batch_size)
    p.add_argument("--image_size", type=int, default=32, help="inputs are resized to this square size")
    p.add_argument("--cache_dir", help="teacher-output cache (default: $HF_MRL_CACHE/logits)")
    add_endpoint_arguments(p)
    p.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="processes decoding images of a dataset (not Digits-LD) for the teachers and the student (0: none)",
    )
    p.add_argument(
        "--mixed_precision",
        choices=("no", "fp16", "bf16"),
        help="Accelerate's mixed precision, also used for teacher inference (default: accelerate's config)",
    )
    p.add_argument("--no_progress", action="store_true")
    p.add_argument(
        "--report_to",
        choices=("none", "tensorboard", "trackio", "wandb", "all"),
        default="none",
        help="experiment tracking through Accelerate's trackers: each step's losses and reuse strength, the reuser's "
        "attention per teacher, the guard's evidence and the accuracies",
    )
    p.add_argument("--logging_dir", help="where tensorboard writes its event files (default: OUTPUT_DIR/logs)")
    hub = p.add_argument_group("Hub (see README, Hub): the reuser goes to ORG/NAME, the student to ORG/NAME-student")
    hub.add_argument("--push_to_hub", action="store_true", help="push what the run trained (reuser and/or student)")
    hub.add_argument("--hub_model_id", help="ORG/NAME; also names the repos in the model cards without a push")
    hub.add_argument("--hub_private", action="store_true", help="create the repos private")
    hub.add_argument("--hub_token", help="Hub token (prefer HF_TOKEN or `hf auth login`: arguments show in `ps`)")
    add_config_arguments(p)
    _show_defaults(p)
    return p


def parse_train_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    p = train_parser(prog)
    args = p.parse_args(argv)
    bounds = (("labeled_per_class", 1), ("max_steps", 1), ("checkpointing_steps", 0), ("image_size", 1))
    bounds += (("student_image_size", 1),)
    for name, low in (*bounds, ("guard_folds", 0), ("guard_workers", 1), ("dataloader_num_workers", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"--{name} must be >= {low}; got {value}.")
    if args.student_pretrained and not args.student:
        p.error("--student_pretrained needs --student NAME (the default student has no pretrained weights).")
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id ORG/NAME.")
    if args.hub_model_id:
        try:
            check_hub_model_id(args.hub_model_id)
        except ValueError as err:
            p.error(str(err))
    return args


# Arguments that shape the training trajectory: a resumed run must use the same ones as the checkpoints.
_RUN_KEYS = (
    *("method", "dataset", "seed", "labeled_per_class", "embedding", "outer_every", "batch_size"),
    *("unlabeled_batch_size", "image_column", "label_column", "image_size", "trust_remote_code", "allow_pickle"),
)


# Recorded when they differ from the default (runs from before these flags lack them).
_OPTIONAL_KEYS = {
    **{"student": None, "student_pretrained": False, "student_image_size": None, "label_map": None},
    **{"labeled_split": None, "unlabeled_split": None, "test_split": None, "dataset_config_name": None},
    **{"test_size": DEFAULT_TEST_SIZE, "allow_test_overlap": False},
    **{"domain_column": None, "skip_bad_images": False, "mixed_precision": None},
    **{f.name: f.default for f in dataclasses.fields(MRLConfig) if f.name in _CONFIG_FLAGS},
}


def run_identity(args: argparse.Namespace, pool: list[str] | None) -> dict:
    optional = {k: getattr(args, k) for k, default in _OPTIONAL_KEYS.items() if getattr(args, k) != default}
    return {"pool": pool, **{k: getattr(args, k) for k in _RUN_KEYS}, **optional}


def _load(args, seed: int):
    get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
    options = data_options(args) | {"seed": seed}
    return load_target(
        get("dataset"),
        get("labeled_per_class"),
        image_size=get("image_size", 32),
        skip_bad_images=get("skip_bad_images", False),
        num_workers=get("dataloader_num_workers", 0) or 0,
        **options,
    )


def preflight(args: argparse.Namespace) -> None:
    """Every check that needs no model and no image decoding, so bad input fails in seconds, not after hours.

    The pool file, the dataset (splits, columns, labels; domain labels for --method oracle), and the checkpoints:
    resuming needs the arguments of the run that wrote them; a run that does not resume removes an earlier run's
    checkpoints, so that a later --resume_from_checkpoint can never pick up a stale one.
    """
    from accelerate import PartialState

    config_from_args(args)  # a hyperparameter MRLConfig refuses fails here, before anything is loaded
    pool = None
    if get_strategy(args.method).needs_teachers:
        pool = parse_pool_file(args.pool) if args.pool else None
        if pool is None and not args.dataset.startswith("digits-ld"):
            raise ValueError(
                f"--pool is required unless --dataset is the embedded Digits-LD benchmark (--method {args.method} "
                "reuses teachers)."
            )
    elif args.pool:
        logger.warning("--method %s uses no teachers: ignoring --pool %s.", args.method, args.pool)
    options = _data_options(args)
    if args.method == "oracle":  # it reads the training data's latent-domain labels: they must exist
        options["training_domains"] = True
    check_target(args.dataset, args.labeled_per_class, **options)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {str(out)!r} is a file, not a folder.")
    ckpt = out / "checkpoints"
    found = [latest_checkpoint(ckpt / part) for part in STRATEGIES]
    run_file, identity = ckpt / "run.json", run_identity(args, pool)
    if args.resume_from_checkpoint:
        if not any(found):
            logger.warning("--resume_from_checkpoint: no checkpoint in %s yet; starting from scratch.", ckpt)
        elif run_file.is_file():
            recorded = {"method": "mrl", **read_json(run_file)}  # runs from before --method were mrl
            recorded.pop("fingerprint", None)  # the data's and teachers' content: checked once they are loaded
            changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
            if changed:
                was = ", ".join(f"--{k} {recorded.get(k)!r} (now {identity.get(k)!r})" for k in changed)
                raise ValueError(
                    f"--resume_from_checkpoint: the checkpoints in {ckpt} come from a run with {was}: resume with "
                    "the same arguments, or start over without --resume_from_checkpoint."
                )
    state = PartialState(cpu=not torch.cuda.is_available())  # as make_accelerator: gloo on a CPU-only machine
    if state.is_main_process:
        if any(found) and not args.resume_from_checkpoint:
            logger.warning(
                "Starting over: removing the checkpoints of an earlier run in %s (pass --resume_from_checkpoint to "
                "continue that run instead).",
                ckpt,
            )
            shutil.rmtree(ckpt)
        if not (args.resume_from_checkpoint and run_file.is_file()):
            atomic_write_json(ckpt / "run.json", identity)
    state.wait_for_everyone()


def check_fingerprint(ckpt: Path, data, pool, args, accelerator) -> None:
    """Record what the run reads (each split's rows and content hash, each teacher's weights hash) in run.json; on
    --resume_from_checkpoint, refuse data or teachers that differ from those the checkpoints were trained on."""
    teachers = None if pool is None else {t.id: t.weights_hash for t in pool.teachers}
    fingerprint = {"data": data.fingerprint(args.dataloader_num_workers or 0), "teachers": teachers}
    run_file = ckpt / "run.json"
    recorded = read_json(run_file) if run_file.is_file() else {}
    was = recorded.get("fingerprint")
    if args.resume_from_checkpoint and was is not None and was != fingerprint:
        changes = [
            f"the {split} split ({was['data'].get(split, {}).get('rows')} rows then, {now['rows']} now)"
            for split, now in fingerprint["data"].items()
            if split != "labels" and was["data"].get(split) != now
        ]
        if was["data"].get("labels") != fingerprint["data"]["labels"]:
            changes.append("the class names")
        if was.get("teachers") != teachers:
            old = was.get("teachers") or {}
            changed = [t for t in sorted(set(old) | set(teachers or {})) if old.get(t) != (teachers or {}).get(t)]
            changes.append(f"the weights of teacher(s) {changed}")
        raise ValueError(
            f"--resume_from_checkpoint: {' and '.join(changes)} differ from what the checkpoints in {ckpt} were "
            "trained on: resume on the same data and teachers, or start over without --resume_from_checkpoint."
        )
    if accelerator.is_main_process and was != fingerprint:
        atomic_write_json(run_file, {**recorded, "fingerprint": fingerprint})
    accelerator.wait_for_everyone()


def train(args: argparse.Namespace) -> ReuseResult:
    """Load the pool and the data, run `ReuseTrainer`, write DIR/ (main process); the result."""
    options = {"mixed_precision": args.mixed_precision} if args.mixed_precision else {}
    if args.report_to != "none":
        options |= {"log_with": args.report_to, "project_dir": args.logging_dir or str(Path(args.output_dir) / "logs")}
    accelerator = make_accelerator(**options)
    config = config_from_args(args)
    if args.report_to != "none":
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.to_dict().items()}
        accelerator.init_trackers("hf_mrl", config=hparams | {"dataset": args.dataset})
    pool = embedding = None
    with accelerator.main_process_first():
        # Teachers and encoder first: a teacher that cannot be used fails before any image is decoded.
        label_names = check_target(args.dataset, args.labeled_per_class, **_data_options(args))
        if get_strategy(args.method).needs_teachers:
            pool_file = args.pool
            if pool_file is None:
                from hf_mrl.pool.builder import build_digits_pool

                pool_file = build_digits_pool()
            pool = ModelPool.from_file(
                pool_file,
                label_names,
                cache_dir=args.cache_dir or cache_root() / "logits",
                trust_remote_code=args.trust_remote_code,
                allow_pickle=args.allow_pickle,
                label_map=args.label_map,
                endpoint=endpoint_options(args),
            )
            embedding = ReuseTrainer.prepare_embedding(config, pool)
        data, description = _load(args, args.seed)
    check_fingerprint(Path(args.output_dir) / "checkpoints", data, pool, args, accelerator)
    student = None
    if args.student or args.student_image_size:
        student = {"image_size": args.student_image_size, "pretrained": args.student_pretrained}
        student |= {"trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle}
        if args.student:
            student["architecture"] = args.student
    run_args = ReuseArguments(
        student=student,
        guard_folds=args.guard_folds,
        guard_workers=args.guard_workers,
        guard_repeats=args.guard_repeats,
        guard_margin=args.guard_margin,
        guard_sequential=args.guard_sequential,
        guard_beside=args.guard_beside,
        dataset=args.dataset,
        dataset_description=description,
        splits=getattr(description, "splits", None),
        progress=not args.no_progress,
        dataloader_num_workers=args.dataloader_num_workers,
        allow_pickle=args.allow_pickle,
    )
    trainer = ReuseTrainer(pool, data, config, run_args, embedding=embedding, accelerator=accelerator)
    result = trainer.train(Path(args.output_dir) / "checkpoints", resume=args.resume_from_checkpoint)
    for tracker in accelerator.trackers:  # flush and close (end_training would also end the process group)
        tracker.finish()
    result.metrics.args = {k: v for k, v in vars(args).items() if "token" not in k}
    if os.path.exists(args.dataset):  # absolute, so that `hf-mrl evaluate DIR` finds it from any directory
        result.metrics.args["dataset"] = os.path.abspath(args.dataset)
    result.metrics.skipped_images = getattr(description, "skipped_images", {})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        result.save_pretrained(args.output_dir, args.hub_model_id)
    accelerator.wait_for_everyone()
    return result


def summary_line(metrics: RunMetrics) -> str:
    """The accuracies printed at the end: the delivered student, supervised-only, and the reuser where there is one."""
    method = metrics.method
    name = "MRL" if method == "mrl" else method
    if method == "supervised":
        parts = [f"supervised-only student: {metrics.student_accuracy:.4f}"]
    elif metrics.fell_back:
        parts = [
            f"{name} student: {metrics.method_student_accuracy:.4f} (not delivered: the guard fell back)",
            f"delivered supervised-only student: {metrics.student_accuracy:.4f}",
        ]
    else:
        parts = [f"{name} student: {metrics.student_accuracy:.4f}"]
        parts.append(f"supervised-only: {metrics.supervised_accuracy:.4f}")
    if metrics.reuser_accuracy is not None:
        parts.append(f"reuser: {metrics.reuser_accuracy:.4f}")
    overlap = (metrics.splits or {}).get("labeled_test_overlap")
    what = (
        "test accuracy"
        if not overlap
        else f"accuracy on rows that include {overlap} labeled ones, NOT a test accuracy"
    )
    return f"\n{metrics.dataset} {what} -- " + "   ".join(parts)


def next_steps(output_dir: str, has_reuser: bool, hub_model_id: str | None = None, pushed: bool = False) -> str:
    """The last line of a run: how to evaluate, load and push what it wrote."""
    import shlex

    out = shlex.quote(str(output_dir))
    where = repr(str(Path(output_dir) / "reuser"))
    load = f"hf_mrl.AttentionReuser.from_pretrained({where})" if has_reuser else f"the student in {out}/student"
    push = f"pushed to {hub_model_id}" if pushed else f"hf-mrl push {out} {hub_model_id or 'ORG/NAME'}"
    return f"next: evaluate: hf-mrl evaluate {out}  |  load: {load}  |  push: {push}"


def train_main(argv=None, prog: str | None = None) -> None:
    """`hf-mrl train` and `recipes/train_mrl.py`: parse, check, train, save, print, push."""
    from accelerate import PartialState

    _setup_logging()
    args = parse_train_args(argv, prog)
    if args.push_to_hub and not args.hub_token:
        from huggingface_hub import get_token

        if get_token() is None:
            logger.warning("--push_to_hub: no Hub token (HF_TOKEN or `hf auth login`); the Hub may refuse the push.")
    try:
        preflight(args)
        metrics = train(args).metrics
    except (ValueError, TypeError, OSError) as err:  # bad input (TeacherLoadError is a ValueError), unusable files
        sys.exit("error: " + " ".join(str(err).split()))
    if PartialState().is_main_process:
        outputs = ("reuser/, " if metrics.reuser_accuracy is not None else "") + "student/, metrics.json"
        print(summary_line(metrics) + f"\noutputs in {args.output_dir} ({outputs})")
        if args.push_to_hub:
            push_main(
                [args.output_dir, args.hub_model_id] + (["--private"] if args.hub_private else []), args.hub_token
            )
        print(next_steps(args.output_dir, metrics.reuser_accuracy is not None, args.hub_model_id, args.push_to_hub))
