"""Train an MRL student (and the supervised-only baseline on the same split and budget).

    accelerate launch recipes/train_mrl.py --pool hub-ids.txt --output_dir runs/mus
    python recipes/train_mrl.py --output_dir runs/mus          # the embedded Digits-LD default

Writes DIR/reuser/, DIR/student/ (config.json + model.safetensors + README.md) and DIR/metrics.json.
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
from hf_mrl.hub import PushError, check_hub_model_id, push_run, student_repo_id
from hf_mrl.metrics import accuracy_report
from hf_mrl.student import save_student
from hf_mrl.target import load_target
from hf_mrl.trainer import make_accelerator

logger = logging.getLogger("train_mrl")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", help="pool file: one `repo_id[@revision]` or local path a line (default: Digits-LD pool)")
    p.add_argument("--dataset", default="digits-ld:MUS", help="`digits-ld[:SETTING]` or a save_to_disk DatasetDict")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, default=MRLConfig.max_steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labeled_per_class", type=int, default=10)
    p.add_argument("--resume_from_checkpoint", action="store_true", help="continue from DIR/checkpoints")
    p.add_argument("--checkpointing_steps", type=int, default=0, help="save the training state every N steps")
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
    hub.add_argument("--push_to_hub", action="store_true", help="push reuser and student after training")
    hub.add_argument("--hub_model_id", help="ORG/NAME; also names the repos in the model cards without a push")
    hub.add_argument("--hub_private", action="store_true", help="create the repos private")
    hub.add_argument("--hub_token", help="Hub token (prefer HF_TOKEN or `hf auth login`: arguments show in `ps`)")
    args = p.parse_args(argv)
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
    """Write into a sibling temp folder, then swap it in: a crash never leaves a half-written model."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def training_function(args: argparse.Namespace) -> dict:
    accelerator = make_accelerator()
    set_seed(args.seed)
    out = Path(args.output_dir)
    config = MRLConfig(
        max_steps=args.max_steps,
        seed=args.seed,
        embedding=args.embedding,
        outer_every=args.outer_every,
        batch_size=args.batch_size,
        unlabeled_batch_size=args.unlabeled_batch_size,
        checkpoint_every=args.checkpointing_steps,
    )
    progress = not args.no_progress and accelerator.is_local_main_process
    start = time.time()

    with accelerator.main_process_first():
        data, dataset_desc = load_target(
            args.dataset,
            args.labeled_per_class,
            args.seed,
            image_column=args.image_column,
            label_column=args.label_column,
            image_size=args.image_size,
        )
        pool_file = args.pool
        if pool_file is None:
            if not args.dataset.startswith("digits-ld"):
                raise SystemExit("error: --pool is required unless --dataset is the embedded Digits-LD benchmark.")
            from hf_mrl.pool_builder import build_digits_pool

            pool_file = build_digits_pool()
        cache_dir = args.cache_dir or _cache_root() / "logits"
        pool = ModelPool.from_file(pool_file, data.label_names, cache_dir=cache_dir)
        embedding = Embedding(config.embedding, cache_dir=cache_dir)
        reuse = compute_reuse_inputs(pool, embedding, data, progress=progress)
    logger.info("Pool: %s", ", ".join(pool.ids))

    ckpt = out / "checkpoints"
    baseline = MRLTrainer(dataclasses.replace(config, method="supervised"), data)
    baseline.train(ckpt / "supervised", resume=args.resume_from_checkpoint, progress=progress)
    supervised_pred = baseline.predict(data.test_images)

    trainer = MRLTrainer(config, data, reuse, teacher_ids=pool.ids)
    student = trainer.train(ckpt / "mrl", resume=args.resume_from_checkpoint, progress=progress)
    student_pred = trainer.predict(data.test_images)
    reuse_out = trainer.reuse_predictions("t")

    def report(pred):
        return accuracy_report(pred, data.test_labels, data.test_domains, data.domain_names)

    student_r, supervised_r, reuse_r = report(student_pred), report(supervised_pred), report(reuse_out["predictions"])
    teacher_acc = [report(reuse.probs_t[:, k].argmax(-1))["accuracy"] for k in range(len(pool))]
    metrics = {
        "student_accuracy": student_r["accuracy"],
        "supervised_accuracy": supervised_r["accuracy"],
        "reuse_accuracy": reuse_r["accuracy"],
        "never_worse": student_r["accuracy"] >= supervised_r["accuracy"],
        "teacher_accuracy": dict(zip(pool.ids, teacher_acc, strict=True)),
        "teacher_forward_samples": {t.id: t.samples_seen for t in pool.teachers},
        "dataset": dataset_desc,
        "num_labeled": len(data.labeled_labels),
        "num_unlabeled": len(data.unlabeled_images),
        "num_test": len(data.test_labels),
        "config": config.to_dict(),
        "args": {k: v for k, v in vars(args).items() if "token" not in k},
        "pool": pool.ids,
        "num_processes": accelerator.num_processes,
        "prototypes_in_sync": trainer.replicas_in_sync,
        "wall_time_s": round(time.time() - start, 1),
    }
    if "per_domain" in student_r:
        metrics["per_domain"] = {
            d: {
                "student": student_r["per_domain"][d],
                "supervised": supervised_r["per_domain"][d],
                "reuse": reuse_r["per_domain"][d],
            }
            for d in student_r["per_domain"]
        }
        metrics["worst_domain_accuracy"] = {
            "student": student_r["worst_domain_accuracy"],
            "supervised": supervised_r["worst_domain_accuracy"],
            "reuse": reuse_r["worst_domain_accuracy"],
        }
        metrics["attention_by_domain"] = _attention_by_domain(reuse_out["weights"], data)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_outputs(out, trainer, student, pool, reuse_out["weights"], teacher_acc, metrics, args)
    accelerator.wait_for_everyone()
    return metrics


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


def _run_summary(pool, weights, teacher_acc, metrics, dataset_spec: str) -> RunSummary:
    """What the model cards show about this run."""
    mean_att = weights.mean(0).tolist()
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
    dataset, dataset_id, dataset_config = _dataset_ids(dataset_spec, metrics["dataset"])
    return RunSummary(
        teachers=teachers,
        label_names=pool.label_names,
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
        reuse_accuracy=metrics["reuse_accuracy"],
        per_domain=metrics.get("per_domain"),
        worst_domain=metrics.get("worst_domain_accuracy"),
        attention_by_domain=metrics.get("attention_by_domain"),
    )


def _write_outputs(out: Path, trainer, student, pool, weights, teacher_acc, metrics, args=None) -> None:
    """DIR/reuser/, DIR/student/ (each with its model card) and DIR/metrics.json, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    hub_model_id = getattr(args, "hub_model_id", None)
    student_id = student_repo_id(hub_model_id) if hub_model_id else None
    summary = _run_summary(pool, weights, teacher_acc, metrics, getattr(args, "dataset", "") or "")
    reuser: AttentionReuser = trainer.reuser.cpu()
    reuser.card_summary = summary
    card_kwargs = {"repo_id": hub_model_id, "student_repo_id": student_id}
    _save_dir_atomically(lambda d: reuser.save_pretrained(d, model_card_kwargs=card_kwargs), out / "reuser")
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
        reuser_repo_id=hub_model_id,
    )
    _save_dir_atomically(lambda d: save_student(student, d, card=str(card)), out / "student")
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out / "metrics.json")


def _push(args: argparse.Namespace) -> None:
    """Push DIR/reuser and DIR/student (main process only, after training); exit with a retry hint on failure."""
    try:
        result = push_run(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private or None)
    except PushError as err:
        sys.exit(f"error: {err}")
    print(f"pushed the reuser to {result.reuser_repo_id} and the student to {result.student_repo_id}")


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.push_to_hub and not args.hub_token:
        from huggingface_hub import get_token

        if get_token() is None:
            logger.warning("--push_to_hub: no Hub token (HF_TOKEN or `hf auth login`); the Hub may refuse the push.")
    try:
        metrics = training_function(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    if PartialState().is_main_process:
        print(
            f"\n{metrics['dataset']} test accuracy -- MRL student: {metrics['student_accuracy']:.4f}   "
            f"supervised-only: {metrics['supervised_accuracy']:.4f}   reuser: {metrics['reuse_accuracy']:.4f}\n"
            f"outputs in {args.output_dir} (reuser/, student/, metrics.json)"
        )
        if args.push_to_hub:
            _push(args)


if __name__ == "__main__":
    main()
