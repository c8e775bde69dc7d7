"""The `hf-mrl` command: `train`, `evaluate`, `push` and `select` (also `accelerate launch -m hf_mrl.cli train ...`).

    hf-mrl train --pool hub-ids.txt --output_dir runs/mus          # or: accelerate launch -m hf_mrl.cli train ...
    hf-mrl train --output_dir runs/mus                              # the embedded Digits-LD default
    hf-mrl evaluate runs/mus                                        # reload the outputs, re-measure them
    hf-mrl push runs/mus ORG/NAME                                   # push (or retry a push of) a finished run
    hf-mrl select --filter digits --k 3 --output_dir pool/          # choose the pool from the Hub (docs/selection.md)

`recipes/train_mrl.py` is the same `train` as a script. Bad input ends in one line, `error: ...`, exit 1, before any
model is loaded or image decoded where it can be seen that early.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from . import __version__
from .config import HYPERGRADIENTS, OUTER_LABELS, PROTOTYPE_INITS, MRLConfig
from .endpoint import add_endpoint_arguments, endpoint_options
from .hub import PushError, check_hub_model_id, push_run
from .pool import ModelPool, parse_pool_file
from .reuse_trainer import ReuseArguments, ReuseResult, ReuseTrainer
from .strategies import METHODS, get_strategy
from .target import DEFAULT_TEST_SIZE, check_target, check_test_size, load_target
from .trainer import latest_checkpoint, make_accelerator
from .utils import atomic_write_json, cache_root, read_json

__all__ = ["main", "train_main", "train_parser", "parse_train_args", "preflight", "run_identity", "train"]

logger = logging.getLogger("hf_mrl.cli")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each flag's default (Hugging Face scripts do), except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return text  # the help says it already, or there is nothing to show
        if not action.option_strings:
            return text
        if isinstance(action.default, bool):  # --flag / --no-flag, on by default
            return (text + " " if text else "") + "(default: on)"
        return (text + " " if text else "") + "(default: %(default)s)"


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """Flags without help text still show their default (argparse prints nothing for a flag without help)."""
    for action in p._actions:
        shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if action.help is None and action.option_strings and shown:
            action.help = "(default: %(default)s)"


# MRLConfig fields a user tunes, as `--name` flags (their help is the field's own documentation). Those with flags of
# their own (method, max_steps, batch sizes, outer_every, embedding, seed, checkpointing_steps) are not repeated.
_OWN_FLAGS = ("method", "max_steps", "batch_size", "unlabeled_batch_size", "outer_every", "embedding", "seed")
_CONFIG_FLAGS = tuple(f.name for f in dataclasses.fields(MRLConfig) if f.name not in (*_OWN_FLAGS, "checkpoint_every"))
_CHOICES = {"hypergradient": HYPERGRADIENTS, "outer_labels": OUTER_LABELS, "prototype_init": PROTOTYPE_INITS}


def _field_docs() -> dict[str, str]:
    """`name: text` of MRLConfig's Args section, one line each."""
    docs, name = {}, None
    for line in (MRLConfig.__doc__ or "").split("Args:", 1)[-1].splitlines():
        match = re.match(r"^ {8}(\w+): (.*)$", line)
        if match:
            name, docs[match.group(1)] = match.group(1), match.group(2)
        elif name and line.startswith(" " * 12):
            docs[name] += " " + line.strip()
    return docs


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("training hyperparameters (MRLConfig; see docs/method.md)")
    docs = _field_docs()
    for f in dataclasses.fields(MRLConfig):
        if f.name not in _CONFIG_FLAGS:
            continue
        text = docs.get(f.name, "").replace("%", "%%")
        if f.type in ("bool", bool):
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            kind = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            kwargs = {"choices": _CHOICES[f.name]} if f.name in _CHOICES else {}
            group.add_argument(f"--{f.name}", type=kind, default=f.default, help=text, **kwargs)


def config_from_args(args: argparse.Namespace) -> MRLConfig:
    """The `MRLConfig` of `hf-mrl train` flags (ValueError for a value it refuses)."""
    return MRLConfig(
        method=args.method,
        max_steps=args.max_steps,
        seed=args.seed,
        embedding=args.embedding,
        outer_every=args.outer_every,
        batch_size=args.batch_size,
        unlabeled_batch_size=args.unlabeled_batch_size,
        checkpoint_every=args.checkpointing_steps,
        **{name: getattr(args, name) for name in _CONFIG_FLAGS},
    )


def add_data_arguments(p: argparse.ArgumentParser, dataset_default: str = "digits-ld:MUS") -> None:
    """The target-data flags, shared by `train` and `select` (read back by `data_options`)."""
    p.add_argument(
        "--dataset",
        default=dataset_default,
        help="`digits-ld[:SETTING]`, a Hub dataset id `org/name[@revision]`, an image folder or a save_to_disk folder",
    )
    p.add_argument("--dataset_config_name", help="the configuration of a Hub dataset (datasets.load_dataset's name)")
    splits = "default: the split named after the role, else `train` (or the only split)"
    p.add_argument("--labeled_split", help=f"split with labels, `datasets` slicing allowed ({splits})")
    p.add_argument("--unlabeled_split", help=f"split without (or with unused) labels ({splits})")
    p.add_argument("--test_split", help="split the results are measured on (default: `test`, else the labeled split)")
    p.add_argument(
        "--test_size",
        type=_test_size,
        default=DEFAULT_TEST_SIZE,
        help="the test part carved when the test role shares its split with another role: a fraction or a count "
        "(stratified by label and domain, seeded by --seed)",
    )
    p.add_argument(
        "--allow_test_overlap",
        action="store_true",
        help="accept labeled rows that are also test rows (refused by default); the results then say they are not "
        "test accuracies",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the labeled draw, the carving and the training")
    p.add_argument(
        "--labeled_per_class",
        type=int,
        help="labeled samples per class: drawn from Digits-LD (default 10), from a split shared with the unlabeled "
        "role (default 10), or from the labeled split (default: all of it)",
    )
    p.add_argument(
        "--domain_column",
        help="latent-domain column (string, integer or ClassLabel), evaluation only (default: domain)",
    )
    p.add_argument("--image_column", default="image")
    p.add_argument("--label_column", default="label")


def _test_size(text: str) -> float | int:
    try:
        return check_test_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
        choices=METHODS,
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


def data_options(args) -> dict:
    """The dataset flags as `check_target` / `load_target` keywords (also read back from a run's metrics.json)."""
    get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
    # Runs recorded before the split defaults were chosen from the dataset named the roles' own splits.
    old = isinstance(args, dict) and "test_size" not in args
    return {
        "image_column": get("image_column", "image"),
        "label_column": get("label_column", "label"),
        "domain_column": get("domain_column"),
        "labeled_split": get("labeled_split", "labeled" if old else None),
        "unlabeled_split": get("unlabeled_split", "unlabeled" if old else None),
        "test_split": get("test_split", "test" if old else None),
        "test_size": get("test_size", DEFAULT_TEST_SIZE),
        "allow_test_overlap": get("allow_test_overlap", False),
        "dataset_config_name": get("dataset_config_name"),
        "seed": get("seed", 0),
    }


_data_options = data_options


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
    found = [latest_checkpoint(ckpt / part) for part in METHODS]
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
                from .pool_builder import build_digits_pool

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
    result.metrics["args"] = {k: v for k, v in vars(args).items() if "token" not in k}
    if os.path.exists(args.dataset):  # absolute, so that `hf-mrl evaluate DIR` finds it from any directory
        result.metrics["args"]["dataset"] = os.path.abspath(args.dataset)
    result.metrics["skipped_images"] = getattr(description, "skipped_images", {})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        result.save_pretrained(args.output_dir, args.hub_model_id)
    accelerator.wait_for_everyone()
    return result


def summary_line(metrics: dict) -> str:
    """The accuracies printed at the end: the delivered student, supervised-only, and the reuser where there is one."""
    method = metrics.get("method", "mrl")
    name = "MRL" if method == "mrl" else method
    if method == "supervised":
        parts = [f"supervised-only student: {metrics['student_accuracy']:.4f}"]
    elif metrics.get("delivered") == "supervised":
        parts = [
            f"{name} student: {metrics['method_student_accuracy']:.4f} (not delivered: the guard fell back)",
            f"delivered supervised-only student: {metrics['student_accuracy']:.4f}",
        ]
    else:
        parts = [f"{name} student: {metrics['student_accuracy']:.4f}"]
        parts.append(f"supervised-only: {metrics['supervised_accuracy']:.4f}")
    if metrics.get("reuse_accuracy") is not None:
        parts.append(f"reuser: {metrics['reuse_accuracy']:.4f}")
    overlap = (metrics.get("splits") or {}).get("labeled_test_overlap")
    what = (
        "test accuracy"
        if not overlap
        else f"accuracy on rows that include {overlap} labeled ones, NOT a test accuracy"
    )
    return f"\n{metrics['dataset']} {what} -- " + "   ".join(parts)


def next_steps(output_dir: str, has_reuser: bool, hub_model_id: str | None = None, pushed: bool = False) -> str:
    """The last line of a run: how to evaluate, load and push what it wrote."""
    import shlex

    out = shlex.quote(str(output_dir))
    where = repr(str(Path(output_dir) / "reuser"))
    load = f"hf_mrl.AttentionReuser.from_pretrained({where})" if has_reuser else f"the student in {out}/student"
    push = f"pushed to {hub_model_id}" if pushed else f"hf-mrl push {out} {hub_model_id or 'ORG/NAME'}"
    return f"next: evaluate: hf-mrl evaluate {out}  |  load: {load}  |  push: {push}"


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # One line per HTTP request otherwise (httpx logs each at INFO).
    for noisy in ("httpx", "httpcore", "urllib3", "huggingface_hub", "timm", "accelerate", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
        outputs = ("reuser/, " if metrics["reuse_accuracy"] is not None else "") + "student/, metrics.json"
        print(summary_line(metrics) + f"\noutputs in {args.output_dir} ({outputs})")
        if args.push_to_hub:
            push_main(
                [args.output_dir, args.hub_model_id] + (["--private"] if args.hub_private else []), args.hub_token
            )
        print(next_steps(args.output_dir, metrics["reuse_accuracy"] is not None, args.hub_model_id, args.push_to_hub))


def push_main(argv=None, token: str | None = None) -> None:
    """`hf-mrl push DIR ORG/NAME`: push what DIR holds (reuser and/or student); the retry command of every push."""
    p = argparse.ArgumentParser(prog="hf-mrl push", description=push_main.__doc__, formatter_class=HelpFormatter)
    p.add_argument("output_dir", help="the --output_dir of a training run")
    p.add_argument("hub_model_id", help="ORG/NAME: the reuser goes there, the student to ORG/NAME-student")
    p.add_argument("--private", action="store_true", help="create the repos private")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the one stored by `hf auth login`)")
    args = p.parse_args(argv)
    try:
        result = push_run(args.output_dir, args.hub_model_id, token=args.token or token, private=args.private or None)
    except (PushError, ValueError) as err:
        sys.exit(f"error: {err}")
    if result.reuser_repo_id:
        print(f"pushed the reuser to {result.reuser_repo_id}: {result.reuser_commit_url}")
    print(f"pushed the student to {result.student_repo_id}: {result.student_commit_url}")


def evaluate_main(argv=None) -> int:
    """`hf-mrl evaluate DIR`: reload DIR/reuser (rebuilding its pool) and DIR/student (timm alone) in this process,
    predict on the run's test split, and print the accuracies next to those in DIR/metrics.json."""
    from .images import ImageSet
    from .reuser import AttentionReuser
    from .run_folder import IncompleteRunError, verify_run
    from .student import load_student, student_preprocess
    from .trainer import student_input_side

    p = argparse.ArgumentParser(
        prog="hf-mrl evaluate", description=evaluate_main.__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("run_dir")
    p.add_argument("--dataset", help="the run's dataset, where it is now (default: the path or id the run recorded)")
    parsed = p.parse_args(argv)
    run = Path(parsed.run_dir)
    try:
        verify_run(run)
    except IncompleteRunError as err:
        sys.exit(f"error: {err}")
    metrics = read_json(run / "metrics.json")
    recorded = dict(metrics["args"])
    if parsed.dataset:
        recorded["dataset"] = parsed.dataset
    try:
        data, desc = _load(recorded, recorded["seed"])
    except (ValueError, OSError) as err:  # the data moved, or the run recorded a path relative to elsewhere
        sys.exit(
            f"error: the test data of {run} cannot be read: {' '.join(str(err).split())} Pass --dataset with where "
            "the run's dataset is now."
        )
    rows = {}
    if metrics.get("reuse_accuracy") is not None:  # an MRL run: its reuser rebuilds the pool
        reuser = AttentionReuser.from_pretrained(str(run / "reuser"))
        reuse_pred = reuser.predict(data.test_images)["predictions"]
        rows["reuse_accuracy"] = (reuse_pred == data.test_labels).float().mean().item()
    student = load_student(str(run / "student"))
    test = data.test_images
    if isinstance(test, ImageSet):  # decoded where the run's student read it
        test = test.resized(student_input_side(student))
    preprocess = student_preprocess(student)
    with torch.no_grad():
        student_pred = torch.cat([student(preprocess(test[i : i + 256])).argmax(-1) for i in range(0, len(test), 256)])
    rows["student_accuracy"] = (student_pred == data.test_labels).float().mean().item()
    method = metrics.get("method", "mrl")
    print(f"{desc}: {len(data.test_labels)} test samples; method {method}, delivered {metrics.get('delivered')}")
    if "reuse_accuracy" not in rows:
        print(f"no reuser: --method {method} trains none")
    ok = True
    for key, value in rows.items():
        same = abs(value - metrics[key]) < 1e-6
        ok &= same
        print(f"{key:17s} reloaded {value:.4f}   recorded {metrics[key]:.4f}   {'same' if same else 'DIFFERENT'}")
    return 0 if ok else 1


COMMANDS = {
    "train": "train a student (see `hf-mrl train -h`)",
    "evaluate": "reload a finished run's reuser and student and re-measure them (see `hf-mrl evaluate -h`)",
    "push": "push a run (see `hf-mrl push -h`)",
    "select": "discover, screen and select K teachers from the Hub (see `hf-mrl select -h`)",
}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    listed = "\n".join(f"  {name:9s} {text.splitlines()[0]}" for name, text in COMMANDS.items())
    usage = f"usage: hf-mrl [-h] [--version] {{{','.join(COMMANDS)}}} ...\n\ncommands:\n{listed}"
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        sys.exit(0)
    if argv and argv[0] == "--version":
        print(f"hf-mrl {__version__}")
        sys.exit(0)
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "a command is required"
        print(f"{usage}\nhf-mrl: error: {what}", file=sys.stderr)
        sys.exit(2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        train_main(rest, prog="hf-mrl train")
    elif command == "evaluate":
        sys.exit(evaluate_main(rest))
    elif command == "select":
        from .selection import main as select_main

        sys.exit(select_main(rest))
    else:
        push_main(rest)


if __name__ == "__main__":
    main()
