"""Train an MRL student (and the supervised-only baseline on the same split and budget).

    accelerate launch recipes/train_mrl.py --pool hub-ids.txt --output_dir runs/mus
    python recipes/train_mrl.py --output_dir runs/mus          # the embedded Digits-LD default
    python recipes/train_mrl.py --method mr-cr --output_dir runs/mus-cr   # a baseline method instead of MRL

Writes DIR/reuser/, DIR/student/ (config.json + model.safetensors + README.md) and DIR/metrics.json. A --method other
than mrl trains no attention reuser: it writes DIR/student/ and DIR/metrics.json only. Methods that need no teachers
(supervised, pl, mean-teacher, vat, fixmatch) never load the pool.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import set_seed

from hf_mrl import AttentionReuser, Embedding, ModelPool, MRLConfig, MRLTrainer, compute_reuse_inputs
from hf_mrl.cards import RunSummary, TeacherSummary, student_card
from hf_mrl.config import METHODS
from hf_mrl.guard import cross_validate_reuse
from hf_mrl.hub import PushError, check_hub_model_id, push_folder, push_run, student_repo_id
from hf_mrl.metrics import accuracy_report
from hf_mrl.pool import parse_pool_file
from hf_mrl.screening import screen_teachers
from hf_mrl.strategies import get_strategy
from hf_mrl.student import save_student
from hf_mrl.target import check_target, load_target
from hf_mrl.trainer import latest_checkpoint, make_accelerator

logger = logging.getLogger("train_mrl")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", help="pool file: one `repo_id[@revision]` or local path a line (default: Digits-LD pool)")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="mrl",
        help="mrl (attention reuse; the default), a baseline, or oracle (a reference that reads the training data's "
        "latent-domain labels). Only mrl trains a reuser; supervised, pl, mean-teacher, vat and fixmatch use no "
        "teachers (--pool is then ignored)",
    )
    p.add_argument("--dataset", default="digits-ld:MUS", help="`digits-ld[:SETTING]` or a save_to_disk DatasetDict")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, default=MRLConfig.max_steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--labeled_per_class",
        type=int,
        help="labeled samples per class: drawn from Digits-LD (default 10) or from the dataset's labeled split "
        "(default: all of it)",
    )
    p.add_argument("--resume_from_checkpoint", action="store_true", help="continue from DIR/checkpoints")
    p.add_argument("--checkpointing_steps", type=int, default=0, help="save the training state every N steps")
    p.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="let teachers run their repositories' own modelling code (off: such teachers are refused)",
    )
    p.add_argument(
        "--allow_pickle", action="store_true", help="accept pickle-only teacher weights, which can run code on load"
    )
    p.add_argument(
        "--guard_folds",
        type=int,
        default=3,
        help="cross-validation folds of the never-worse check against supervised-only (0: off)",
    )
    p.add_argument("--embedding", default=MRLConfig.embedding, help="teacher-outputs | pixels | encoder:<model id>")
    p.add_argument("--outer_every", type=int, default=MRLConfig.outer_every)
    p.add_argument("--batch_size", type=int, default=MRLConfig.batch_size)
    p.add_argument("--unlabeled_batch_size", type=int, default=MRLConfig.unlabeled_batch_size)
    p.add_argument("--image_column", default="image")
    p.add_argument("--label_column", default="label")
    p.add_argument("--image_size", type=int, default=32, help="inputs are resized to this square size")
    p.add_argument("--cache_dir", help="teacher-output cache (default: $HF_MRL_CACHE/logits)")
    p.add_argument("--no_progress", action="store_true")
    hub = p.add_argument_group("Hub (see README, Hub): the reuser goes to ORG/NAME, the student to ORG/NAME-student")
    hub.add_argument(
        "--push_to_hub",
        action="store_true",
        help="push reuser and student after training (a --method other than mrl has no reuser: the student only)",
    )
    hub.add_argument("--hub_model_id", help="ORG/NAME; also names the repos in the model cards without a push")
    hub.add_argument("--hub_private", action="store_true", help="create the repos private")
    hub.add_argument("--hub_token", help="Hub token (prefer HF_TOKEN or `hf auth login`: arguments show in `ps`)")
    args = p.parse_args(argv)
    bounds = (
        ("labeled_per_class", 1),
        ("max_steps", 1),
        ("checkpointing_steps", 0),
        ("image_size", 1),
        ("guard_folds", 0),
    )
    for name, low in bounds:
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"--{name} must be >= {low}; got {value}.")
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id ORG/NAME.")
    if args.hub_model_id:
        try:
            check_hub_model_id(args.hub_model_id)
        except ValueError as err:
            p.error(str(err))
    return args


def _cache_root() -> Path:
    return Path(os.environ.get("HF_MRL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hf_mrl")))


def _save_dir_atomically(write, final: Path) -> None:
    """Write into a sibling temp folder, then swap it in: a crash never leaves a half-written model.

    A crash while writing leaves `final` as it was (and a `.NAME.tmp` that the next save removes); a crash between
    the two renames leaves the previous model in `.NAME.old`, which the next save puts back first.
    """
    tmp = final.with_name(f".{final.name}.tmp")
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():
        os.replace(old, final)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    write(tmp)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _write_json_atomically(data: dict, final: Path) -> None:
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, final)


# Arguments that shape the training trajectory: a resumed run must use the same ones as the checkpoints.
_RUN_KEYS = (
    "method",
    "dataset",
    "seed",
    "labeled_per_class",
    "embedding",
    "outer_every",
    "batch_size",
    "unlabeled_batch_size",
    "image_column",
    "label_column",
    "image_size",
    "trust_remote_code",
    "allow_pickle",
)


def _run_identity(args: argparse.Namespace, pool: list[str] | None) -> dict:
    return {"pool": pool, **{k: getattr(args, k) for k in _RUN_KEYS}}


def _uses_teachers(method: str) -> bool:
    """Whether `method` reads the pool's outputs (otherwise the pool is never loaded nor run)."""
    return get_strategy(method).needs_teachers


def _check_training_domains(args: argparse.Namespace) -> None:
    """--method oracle reads the latent-domain labels of the labeled and unlabeled data: they must exist."""
    if args.dataset.startswith("digits-ld"):
        return  # every Digits-LD split carries its `domain` column
    import datasets

    dataset = datasets.load_from_disk(args.dataset)  # check_target has read it already: it loads
    lacking = [s for s in ("labeled", "unlabeled") if "domain" not in dataset[s].column_names]
    if lacking:
        raise ValueError(
            f"--method oracle reads the latent-domain labels of the training data, but split(s) {lacking} of "
            f"{args.dataset!r} have no 'domain' column; oracle routing is a reference for data with known domains."
        )


def preflight(args: argparse.Namespace) -> None:
    """Every check that needs no model and no image decoding, so bad input fails in seconds, not after hours.

    The pool file (empty, malformed, duplicates), the dataset (splits, columns, labels, labeled_per_class; the
    training data's domain labels for --method oracle), and the checkpoints: resuming needs the arguments of the run
    that wrote them; a run that does not resume removes an earlier run's checkpoints, so that a later
    --resume_from_checkpoint can never pick up a stale one.
    """
    pool = None
    if _uses_teachers(args.method):
        pool = parse_pool_file(args.pool) if args.pool else None
        if pool is None and not args.dataset.startswith("digits-ld"):
            raise ValueError(
                f"--pool is required unless --dataset is the embedded Digits-LD benchmark (--method {args.method} "
                "reuses teachers)."
            )
    elif args.pool:
        logger.warning("--method %s uses no teachers: ignoring --pool %s.", args.method, args.pool)
    check_target(args.dataset, args.labeled_per_class, args.image_column, args.label_column)
    if args.method == "oracle":
        _check_training_domains(args)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {str(out)!r} is a file, not a folder.")
    ckpt = out / "checkpoints"
    found = [latest_checkpoint(ckpt / part) for part in METHODS]
    run_file = ckpt / "run.json"
    identity = _run_identity(args, pool)
    if args.resume_from_checkpoint:
        if not any(found):
            logger.warning("--resume_from_checkpoint: no checkpoint in %s yet; starting from scratch.", ckpt)
        elif run_file.is_file():
            recorded = {"method": "mrl", **json.loads(run_file.read_text())}  # runs from before --method were mrl
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
            ckpt.mkdir(parents=True, exist_ok=True)
            _write_json_atomically(identity, run_file)
    state.wait_for_everyone()


def training_function(args: argparse.Namespace) -> dict:
    accelerator = make_accelerator()
    set_seed(args.seed)
    out = Path(args.output_dir)
    config = MRLConfig(
        method=args.method,
        max_steps=args.max_steps,
        seed=args.seed,
        embedding=args.embedding,
        outer_every=args.outer_every,
        batch_size=args.batch_size,
        unlabeled_batch_size=args.unlabeled_batch_size,
        checkpoint_every=args.checkpointing_steps,
    )
    method = config.method
    uses_teachers = _uses_teachers(method)
    progress = not args.no_progress and accelerator.is_local_main_process
    start = time.time()

    load_options = {"trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle}
    pool, reuse = None, None
    with accelerator.main_process_first():
        # Teachers and encoder first: a teacher that cannot be used fails before any image is decoded.
        label_names = check_target(args.dataset, args.labeled_per_class, args.image_column, args.label_column)
        if uses_teachers:
            pool_file = args.pool
            if pool_file is None:
                from hf_mrl.pool_builder import build_digits_pool

                pool_file = build_digits_pool()
            cache_dir = args.cache_dir or _cache_root() / "logits"
            pool = ModelPool.from_file(pool_file, label_names, cache_dir=cache_dir, **load_options)
            # Only the attention reuser reads psi(x): the other reuse methods get the free teacher-output features
            # (never an encoder to load).
            spec = config.embedding if method == "mrl" else "teacher-outputs"
            embedding = Embedding(spec, cache_dir=cache_dir, **load_options).prepare()
        data, dataset_desc = load_target(
            args.dataset,
            args.labeled_per_class,
            args.seed,
            image_column=args.image_column,
            label_column=args.label_column,
            image_size=args.image_size,
        )
    if uses_teachers:  # every process runs the teachers on its share of the samples no cache holds
        reuse = compute_reuse_inputs(pool, embedding, data, progress=progress, accelerator=accelerator)
    screening = []
    if pool is not None:
        logger.info("Pool: %s", ", ".join(pool.ids))
        screening = screen_teachers(reuse.probs_l, data.labeled_labels, pool.ids, pool.coverage)
        for k, score in enumerate(screening, start=1):
            flags = "; ".join(score.flags) or "ok"
            logger.info(
                "Teacher %d %s: labeled accuracy %.3f, LEEP %+.3f over the prior: %s",
                k,
                score.id,
                score.accuracy,
                score.leep_gain,
                flags,
            )
    else:
        logger.info("--method %s uses no teachers: no pool is loaded.", method)

    ckpt = out / "checkpoints"
    resume = args.resume_from_checkpoint
    baseline = MRLTrainer(dataclasses.replace(config, method="supervised"), data)
    supervised_student = baseline.train(ckpt / "supervised", resume=resume, progress=progress)
    supervised_pred = baseline.predict(data.test_images)
    if method == "supervised":
        # The supervised-only student is this run's student: trained once, and no guard against itself.
        trainer, student, student_pred = baseline, supervised_student, supervised_pred
    else:
        trainer = MRLTrainer(config, data, reuse, teacher_ids=None if pool is None else pool.ids)
        student = trainer.train(ckpt / method, resume=resume, progress=progress)
        student_pred = trainer.predict(data.test_images)
    reuse_out = trainer.reuse_predictions("t") if method == "mrl" else None
    method_student_accuracy = accuracy_report(student_pred, data.test_labels)["accuracy"]
    guard = None if method == "supervised" else _run_guard(args, config, data, reuse, pool)
    fell_back = guard is not None and guard.decision == "fall_back"
    if fell_back:
        logger.warning(
            "Guard: %s is significantly worse than supervised-only; delivering the supervised student.", method
        )
        student, student_pred = supervised_student, supervised_pred

    def report(pred):
        return accuracy_report(pred, data.test_labels, data.test_domains, data.domain_names)

    reports = {"student": report(student_pred), "supervised": report(supervised_pred)}
    if reuse_out is not None:
        reports["reuse"] = report(reuse_out["predictions"])
    teacher_ids = [] if pool is None else pool.ids
    teacher_acc = [report(reuse.probs_t[:, k].argmax(-1))["accuracy"] for k in range(len(teacher_ids))]
    if method == "supervised" or fell_back:
        delivered = "supervised"
    else:
        delivered = "reuse" if method == "mrl" else method
    is_mrl = method == "mrl"
    forward_samples, forward_by_process = _teacher_forward_samples(pool, accelerator)
    metrics = {
        "method": method,
        "student_accuracy": reports["student"]["accuracy"],
        "supervised_accuracy": reports["supervised"]["accuracy"],
        "reuse_accuracy": reports["reuse"]["accuracy"] if is_mrl else None,
        "never_worse": reports["student"]["accuracy"] >= reports["supervised"]["accuracy"],
        "teacher_accuracy": dict(zip(teacher_ids, teacher_acc, strict=True)),
        "teacher_forward_samples": forward_samples,
        "teacher_forward_samples_by_process": forward_by_process,
        "screening": [score.to_dict() for score in screening],
        "guard": None if guard is None else guard.to_dict(),
        "delivered": delivered,
        "method_student_accuracy": method_student_accuracy,
        "reuse_student_accuracy": method_student_accuracy if is_mrl else None,
        "reuse_strength": trainer.reuse_strength if is_mrl else None,
        "dataset": dataset_desc,
        "num_labeled": len(data.labeled_labels),
        "num_unlabeled": len(data.unlabeled_images),
        "num_test": len(data.test_labels),
        "config": config.to_dict(),
        "args": {k: v for k, v in vars(args).items() if "token" not in k},
        "pool": teacher_ids,
        "num_processes": accelerator.num_processes,
        "prototypes_in_sync": trainer.replicas_in_sync if is_mrl else None,
        "wall_time_s": round(time.time() - start, 1),
    }
    if "per_domain" in reports["student"]:
        metrics["per_domain"] = {
            d: {key: r["per_domain"][d] for key, r in reports.items()} for d in reports["student"]["per_domain"]
        }
        metrics["worst_domain_accuracy"] = {key: r["worst_domain_accuracy"] for key, r in reports.items()}
        if reuse_out is not None:
            metrics["attention_by_domain"] = _attention_by_domain(reuse_out["weights"], data)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        weights = None if reuse_out is None else reuse_out["weights"]
        summary = _run_summary(pool, weights, teacher_acc, metrics, args.dataset, args, label_names=data.label_names)
        _write_outputs(out, trainer.reuser if is_mrl else None, student, summary, metrics, args)
    accelerator.wait_for_everyone()
    return metrics


def _teacher_forward_samples(pool, accelerator) -> tuple[dict, list]:
    """Teacher forward passes (samples) per teacher, summed over processes, and per process (each runs a share)."""
    if pool is None:
        return {}, []
    seen = torch.tensor([t.samples_seen for t in pool.teachers], dtype=torch.int64, device=accelerator.device)
    by_process = accelerator.gather(seen[None]) if accelerator.num_processes > 1 else seen[None]
    total = by_process.sum(0).tolist()
    return {t.id: int(n) for t, n in zip(pool.teachers, total, strict=True)}, by_process.sum(1).tolist()


def _run_guard(args, config, data, reuse, pool):
    """Cross-validate the method against supervised-only on the labeled data; None when switched off or impossible."""
    if args.guard_folds == 0:
        return None
    fewest = int(torch.bincount(data.labeled_labels).min())
    folds = min(args.guard_folds, fewest)
    if folds < 2:
        logger.warning("Guard skipped: a class has %d labeled sample(s), too few for cross-validation.", fewest)
        return None
    report = cross_validate_reuse(config, data, reuse, None if pool is None else pool.ids, folds=folds)
    logger.info(
        "Guard (%d folds, %d held out): %s %.4f vs supervised %.4f, gain %+.4f +/- %.4f: %s",
        report.folds,
        report.held_out,
        config.method,
        report.reuse_accuracy,
        report.supervised_accuracy,
        report.gain,
        report.gain_stderr,
        report.decision,
    )
    return report


def _attention_by_domain(weights: torch.Tensor, data) -> dict:
    names = data.domain_names or [str(d) for d in sorted(set(data.test_domains.tolist()))]
    return {
        names[d]: weights[data.test_domains == d].mean(0).tolist()
        for d in sorted(set(data.test_domains.tolist()))
        if d >= 0
    }


def _dataset_ids(spec: str, description: str) -> tuple[str, str, str | None]:
    """(name shown on the cards, model-index dataset type, dataset config) of a --dataset value."""
    if spec.startswith("digits-ld"):
        return description, "digits-ld", spec.partition(":")[2] or "MUS"
    name = Path(spec).name or spec  # a local folder: its name only, not the path on this machine
    return f"local DatasetDict `{name}`", "custom", None


def _run_summary(pool, weights, teacher_acc, metrics, dataset_spec: str, args=None, label_names=None) -> RunSummary:
    """What the model cards show about this run (`pool` None: a method without teachers; `weights` None: no reuser)."""
    teachers = []
    if pool is not None:
        mean_att = [None] * len(pool) if weights is None else weights.mean(0).tolist()
        teachers = [
            TeacherSummary(
                id=t.id,
                library=t.library,
                labels_covered=m.num_covered,
                missing_labels=[n for n, covered in zip(pool.label_names, m.coverage, strict=True) if not covered],
                mean_attention=a,
                test_accuracy=acc,
            )
            for t, m, a, acc in zip(pool.teachers, pool.mappings, mean_att, teacher_acc, strict=True)
        ]
        label_names = pool.label_names
    dataset, dataset_id, dataset_config = _dataset_ids(dataset_spec, metrics["dataset"])
    return RunSummary(
        teachers=teachers,
        label_names=list(label_names),
        dataset=dataset,
        dataset_id=dataset_id,
        dataset_config=dataset_config,
        num_labeled=metrics["num_labeled"],
        num_unlabeled=metrics["num_unlabeled"],
        num_test=metrics["num_test"],
        max_steps=metrics["config"]["max_steps"],
        seed=metrics["config"]["seed"],
        hyperparameters=metrics["config"],
        num_processes=metrics["num_processes"],
        wall_time_s=metrics["wall_time_s"],
        student_accuracy=metrics["student_accuracy"],
        supervised_accuracy=metrics["supervised_accuracy"],
        reuse_accuracy=metrics.get("reuse_accuracy"),
        per_domain=metrics.get("per_domain"),
        worst_domain=metrics.get("worst_domain_accuracy"),
        attention_by_domain=metrics.get("attention_by_domain"),
        trust_remote_code=bool(getattr(args, "trust_remote_code", False)),
        allow_pickle=bool(getattr(args, "allow_pickle", False)),
        guard=metrics.get("guard"),
        screening=metrics.get("screening"),
        reuse_strength=metrics.get("reuse_strength"),
        method=metrics.get("method", "mrl"),
        delivered=metrics.get("delivered"),
        method_student_accuracy=metrics.get("method_student_accuracy"),
    )


def _remove_stale_reuser(out: Path) -> None:
    """A run without a reuser must not leave an earlier run's DIR/reuser next to its own student and metrics."""
    for name in ("reuser", ".reuser.tmp", ".reuser.old"):
        folder = out / name
        if folder.exists():
            if name == "reuser":
                logger.warning("Removing %s: it comes from an earlier run (this method trains no reuser).", folder)
            shutil.rmtree(folder)


def _write_outputs(
    out: Path, reuser: AttentionReuser | None, student, summary: RunSummary, metrics: dict, args=None
) -> None:
    """DIR/reuser/ (MRL only), DIR/student/ (each with its model card) and DIR/metrics.json, each written atomically.

    metrics.json goes last and is removed first: when it exists, reuser/ and student/ come from the run it describes.
    A run without a reuser (`reuser` None: a --method other than mrl) removes any DIR/reuser of an earlier run.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    hub_model_id = getattr(args, "hub_model_id", None)
    student_id = student_repo_id(hub_model_id) if hub_model_id else None
    if reuser is not None:
        reuser = reuser.cpu()
        reuser.card_summary = summary
        reuser.trust_remote_code = summary.trust_remote_code  # recorded in config.json and the card
        reuser.allow_pickle = summary.allow_pickle
        card_kwargs = {"repo_id": hub_model_id, "student_repo_id": student_id}
        _save_dir_atomically(lambda d: reuser.save_pretrained(d, model_card_kwargs=card_kwargs), out / "reuser")
    else:
        _remove_stale_reuser(out)
    model = getattr(student, "module", student)
    cfg = model.pretrained_cfg
    card = student_card(
        {
            "architecture": cfg.get("architecture"),
            "num_params": sum(p.numel() for p in model.parameters()),
            "label_names": cfg["label_names"],
            "input_size": cfg["input_size"],
            "mean": cfg["mean"],
            "std": cfg["std"],
            "interpolation": cfg.get("interpolation"),
            "crop_pct": cfg.get("crop_pct"),
        },
        summary,
        repo_id=student_id,
        reuser_repo_id=hub_model_id if reuser is not None else None,
    )
    _save_dir_atomically(lambda d: save_student(student, d, card=str(card)), out / "student")
    _write_json_atomically(metrics, out / "metrics.json")


def _push(args: argparse.Namespace) -> None:
    """Push DIR/reuser and DIR/student (main process only, after training); exit with a retry hint on failure.

    A --method other than mrl has no reuser: only DIR/student goes, to ORG/NAME-student as for MRL.
    """
    if args.method != "mrl":
        _push_student(args)
        return
    try:
        result = push_run(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private or None)
    except PushError as err:
        sys.exit(f"error: {err}")
    print(f"pushed the reuser to {result.reuser_repo_id} and the student to {result.student_repo_id}")


def _push_student(args: argparse.Namespace) -> None:
    folder, repo_id = Path(args.output_dir) / "student", student_repo_id(args.hub_model_id)
    private = args.hub_private or None
    try:
        info = push_folder(
            folder,
            repo_id,
            token=args.hub_token,
            private=private,
            commit_message=f"Upload {args.method} student (hf_mrl)",
        )
    except Exception as err:  # any failure (network included) ends in the retry hint
        call = f"push_folder({str(folder)!r}, {repo_id!r}{', private=True' if private else ''})"
        sys.exit(
            f"error: pushing the student to {repo_id} failed: {err}\n"
            f"The local output in {args.output_dir} is intact. Retry the push with:\n"
            f'    python -c "from hf_mrl.hub import push_folder; {call}"\n'
            "(log in first with `hf auth login` or set HF_TOKEN if the Hub refused the credentials)."
        )
    logger.info("Pushed the student to %s: %s", repo_id, info.commit_url)
    print(f"pushed the student to {repo_id} (--method {args.method} trains no reuser)")


def _summary_line(metrics: dict) -> str:
    """The accuracies printed at the end: the delivered student, supervised-only, and the reuser where there is one."""
    method = metrics.get("method", "mrl")
    name = "MRL" if method == "mrl" else method
    if method == "supervised":
        parts = [f"supervised-only student: {metrics['student_accuracy']:.4f}"]
    else:
        if metrics.get("delivered") == "supervised":
            parts = [
                f"{name} student: {metrics['method_student_accuracy']:.4f} (not delivered: the guard fell back)",
                f"delivered supervised-only student: {metrics['student_accuracy']:.4f}",
            ]
        else:
            parts = [
                f"{name} student: {metrics['student_accuracy']:.4f}",
                f"supervised-only: {metrics['supervised_accuracy']:.4f}",
            ]
        if metrics.get("reuse_accuracy") is not None:
            parts.append(f"reuser: {metrics['reuse_accuracy']:.4f}")
    return f"\n{metrics['dataset']} test accuracy -- " + "   ".join(parts)


def _outputs_listed(metrics: dict) -> str:
    return ("reuser/, " if metrics.get("method", "mrl") == "mrl" else "") + "student/, metrics.json"


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "timm", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.push_to_hub and not args.hub_token:
        from huggingface_hub import get_token

        if get_token() is None:
            logger.warning("--push_to_hub: no Hub token (HF_TOKEN or `hf auth login`); the Hub may refuse the push.")
    try:
        preflight(args)
        metrics = training_function(args)
    except (ValueError, TypeError, OSError) as err:  # bad input (TeacherLoadError is a ValueError), unusable files
        sys.exit("error: " + " ".join(str(err).split()))
    if PartialState().is_main_process:
        print(_summary_line(metrics) + f"\noutputs in {args.output_dir} ({_outputs_listed(metrics)})")
        if args.push_to_hub:
            _push(args)


if __name__ == "__main__":
    main()
