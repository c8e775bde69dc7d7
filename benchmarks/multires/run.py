"""MultiRes-LD: MRL vs supervised-only vs best single teacher (MR-BS) vs oracle routing, and each teacher measured
three ways: inside the run, through its own processor on the original images, and through the old thumbnail path.

    python benchmarks/multires/run.py --output_dir runs/multires-ld --results results/multires

Builds the dataset and teachers first when absent (`benchmarks/multires/build.py`, cached). Per seed it loads the task
with `load_target(<data>, labeled_per_class=10, seed=seed, image_size=<student side>)` and runs `ReuseTrainer` once
per method; the teacher outputs are computed once per seed by the MRL run and shared with the MR-BS and oracle runs
(the supervised-only student is the MRL run's own baseline). The never-worse guard is off (`guard_folds=0`): it would
train six more students per run on two shared CPU cores. Writes `records.json` and `report.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402

logger = logging.getLogger("multires")

METHODS = ("mrl", "supervised", "mr-bs", "oracle")
SHOWN = {
    "mrl": "MRL student",
    "reuse": "MRL attention reuser (teacher ensemble)",
    "supervised": "supervised-only student",
    "mr-bs": "MR-BS student (best single teacher distilled)",
    "best_teacher": "best single teacher (MR-BS's choice), its own test accuracy",
    "oracle": "oracle routing student (reads domain labels: a ceiling)",
}


# ----------------------------------------------------------------------------------------------- teachers, outside a run


def _load_plain(folder: Path):
    """A teacher loaded by its own library, with the processor that library gives it: (model, PIL -> tensor)."""
    config = json.loads((folder / "config.json").read_text())
    if (folder / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        processor = AutoImageProcessor.from_pretrained(folder)
        return model, lambda images: processor(images=images, return_tensors="pt")["pixel_values"], config
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    return model, lambda images: torch.stack([transform(im) for im in images]), config


@torch.no_grad()
def native_accuracy(folder: Path, split, batch_size: int = 64) -> dict:
    """Accuracy of one teacher on `split` through its own processor on the decoded original images (a plain loop)."""
    model, process, _ = _load_plain(folder)
    preds = []
    for start in range(0, len(split), batch_size):
        images = [im.convert("RGB") for im in split[start : start + batch_size]["image"]]
        out = model(process(images))
        preds.append(getattr(out, "logits", out).argmax(-1))
    return _by_domain(torch.cat(preds), split)


def _by_domain(pred: torch.Tensor, split) -> dict:
    labels = torch.as_tensor(np.asarray(split["label"]))
    domains = np.asarray(split["domain"])
    correct = (pred == labels).float().numpy()
    return {
        "accuracy": float(correct.mean()),
        "per_domain": {name: float(correct[domains == d].mean()) for d, name in enumerate(build.DOMAIN_NAMES)},
    }


def _probs_by_domain(probs: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor) -> dict:
    correct = (probs.argmax(-1) == labels).float()
    return {
        "accuracy": float(correct.mean()),
        "per_domain": {
            name: float(correct[domains == d].mean())
            for d, name in enumerate(build.DOMAIN_NAMES)
            if (domains == d).any()
        },
    }


def _load_target(folder: Path, image_size: int, seed: int = 0, lazy: bool = True, labeled_per_class: int | None = 10):
    from hf_mrl.data.target import load_target

    return load_target(str(folder), labeled_per_class=labeled_per_class, seed=seed, image_size=image_size, lazy=lazy)[
        0
    ]


def thumbnail_accuracy(pool_file: Path, data_folder: Path) -> dict:
    """Each teacher's test accuracy on the old path: every image decoded once to a 32 px uint8 tensor, then the
    teacher's own tensor preprocessing (resize to its input size, normalise): `ModelPool.probs` on that tensor."""
    from hf_mrl import ModelPool

    data = _load_target(data_folder, 32, lazy=False, labeled_per_class=None)
    images = data.test_images
    assert isinstance(images, torch.Tensor) and images.shape[-1] == 32, "the old path gives one 32 px uint8 tensor"
    pool = ModelPool.from_file(str(pool_file), data.label_names)
    probs = pool.probs(images)
    return {
        _name(tid): _probs_by_domain(probs[:, k], data.test_labels, data.test_domains)
        for k, tid in enumerate(pool.ids)
    }


def _name(teacher_id: str) -> str:
    """A teacher's domain (its folder's name, `teachers/<domain>`)."""
    return Path(teacher_id).name


# ----------------------------------------------------------------------------------------------- runs


def run_seed(pool_file: Path, data_folder: Path, seed: int, args) -> dict:
    from hf_mrl import ModelPool, MRLConfig, ReuseArguments, ReuseTrainer

    data = _load_target(data_folder, args.image_size, seed=seed, labeled_per_class=args.labeled_per_class)
    pool = ModelPool.from_file(str(pool_file), data.label_names, cache_dir=Path(args.output_dir) / "logits")
    out: dict = {"seed": seed, "methods": {}}

    def config(method: str) -> MRLConfig:
        return MRLConfig(
            method=method,
            max_steps=args.steps,
            batch_size=args.batch_size,
            unlabeled_batch_size=args.unlabeled_batch_size,
            seed=seed,
        )

    start = time.time()
    mrl = ReuseTrainer(
        pool,
        data,
        config("mrl"),
        ReuseArguments(guard_folds=0, progress=False, dataset=str(data_folder), dataset_description="MultiRes-LD"),
    )
    result = mrl.train()
    m = result.metrics
    out["methods"]["mrl"] = m["method_student_accuracy"]
    out["methods"]["supervised"] = m["supervised_accuracy"]
    out["methods"]["reuse"] = m.reuser_accuracy
    out["time_s"] = {"mrl": m["time_s"]}
    out["teacher_in_run"] = {
        _name(tid): _probs_by_domain(mrl.reuse.probs_t[:, k], data.test_labels, data.test_domains)
        for k, tid in enumerate(pool.ids)
    }
    out["teacher_accuracy_metrics"] = m["teacher_accuracy"]
    out["per_domain"] = {"mrl": m.get("per_domain")}
    out["reuse_strength"] = m.get("reuse_strength")
    out["attention_by_domain"] = m.get("attention_by_domain")
    out["teacher_forward_samples"] = m.get("teacher_forward_samples")
    for method in [m for m in ("mr-bs", "oracle") if m in args.methods]:
        trainer = ReuseTrainer(
            pool,
            data,
            config(method),
            ReuseArguments(guard_folds=0, supervised_baseline=False, progress=False, dataset=str(data_folder)),
            reuse=mrl.reuse,
            embedding=mrl.embedding,
            accelerator=mrl.accelerator,
        )
        res = trainer.train()
        out["methods"][method] = res.metrics["method_student_accuracy"]
        out["per_domain"][method] = res.metrics.get("per_domain")
        out["time_s"][method] = res.metrics["time_s"]
        if method == "mr-bs":
            k = res.trainer.strategy.teacher
            out["mr_bs_teacher"] = _name(pool.ids[k])
            out["methods"]["best_teacher"] = out["teacher_in_run"][_name(pool.ids[k])]["accuracy"]
    out["wall_s"] = round(time.time() - start, 1)
    logger.info("seed %d: %s (%.0f s)", seed, {k: round(v, 4) for k, v in out["methods"].items()}, out["wall_s"])
    return out


def _seed_worker(pool_file: Path, data_folder: Path, seed: int, args) -> dict:
    """One seed in its own process (`--workers` seeds side by side, `--threads` torch threads each)."""
    import datasets

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s seed {seed} %(name)s %(message)s", stream=sys.stdout)
    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    return run_seed(pool_file, data_folder, seed, args)


def teacher_pass(pool_file: Path, data_folder: Path, args) -> dict:
    """The run's teacher pass over every image the seeds use (all labeled-pool, unlabeled and test images), through
    `ReuseTrainer.compute_teacher_outputs`: it fills the logit cache that each seed's run then reads."""
    from hf_mrl import ModelPool, MRLConfig, ReuseArguments, ReuseTrainer

    data = _load_target(data_folder, args.image_size, labeled_per_class=None)
    pool = ModelPool.from_file(str(pool_file), data.label_names, cache_dir=Path(args.output_dir) / "logits")
    start = time.time()
    trainer = ReuseTrainer(pool, data, MRLConfig(), ReuseArguments(guard_folds=0, progress=False))
    reuse = trainer.compute_teacher_outputs()
    return {
        "seconds": round(time.time() - start, 1),
        "images": len(data.labeled_labels) + len(data.unlabeled_images) + len(data.test_labels),
        "teacher_forward_samples": {t.id: t.samples_seen for t in pool.teachers},
        "teacher_test": {
            _name(tid): _probs_by_domain(reuse.probs_t[:, k], data.test_labels, data.test_domains)
            for k, tid in enumerate(pool.ids)
        },
    }


# ----------------------------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> str:
    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}"


def report(records: dict) -> str:
    runs = records["runs"]
    seeds = [r["seed"] for r in runs]
    lines = [
        "# MultiRes-LD results",
        "",
        f"Commit `{records['commit']}`; seeds {seeds}; {records['args']['steps']} student steps; student at "
        f"{records['args']['image_size']} px; {records['args']['labeled_per_class']} labels per class; guard off. Test split: {records['num_test']} "
        "images (chalk 96 px, graph 112 px, plate 128 px).",
        "",
        "| method | test accuracy (%, mean ± std over seeds) | per seed |",
        "| --- | --- | --- |",
    ]
    for key in ("mrl", "supervised", "mr-bs", "best_teacher", "oracle", "reuse"):
        vals = [r["methods"][key] for r in runs if r["methods"].get(key) is not None]
        if vals:
            lines.append(f"| {SHOWN[key]} | {_mean_std(vals)} | {', '.join(f'{100 * v:.2f}' for v in vals)} |")
    lines += [
        "",
        "## Teachers: inside the run vs their own processor on the originals vs the old 32 px thumbnail path",
        "",
        "Test accuracy (%). *Own processor*: a plain loop, PIL originals -> the teacher library's own transform "
        "(timm `create_transform(**resolve_data_config({}, model=m))`, or the transformers image processor) -> model. "
        "*In run*: from the run's teacher outputs (`ReuseTrainer.reuse.probs_t`), seed "
        f"{seeds[0]}. *Thumbnail*: `load_target(..., lazy=False, image_size=32)`, then `ModelPool.probs` (the "
        "teacher's tensor preprocessing resizes the 32 px copy to its input size).",
        "",
        "| teacher | native | own processor | in run | in run - own | thumbnail | lost by thumbnail | "
        "own processor on chalk / graph / plate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for tid, native in records["teacher_native"].items():
        size = native.get("input_size")
        own = native["accuracy"]
        in_run = runs[0]["teacher_in_run"].get(tid, {}).get("accuracy")
        thumb = records["teacher_thumbnail"].get(tid, {}).get("accuracy")
        per = " / ".join(f"{100 * native['per_domain'][d]:.1f}" for d in build.DOMAIN_NAMES)
        diff = "" if in_run is None else f"{100 * (in_run - own):+.2f}"
        lost = "" if thumb is None else f"{100 * (own - thumb):.2f} points"
        lines.append(
            f"| `{tid}` | {size} px | {100 * own:.2f} | {'' if in_run is None else f'{100 * in_run:.2f}'} | {diff} | "
            f"{'' if thumb is None else f'{100 * thumb:.2f}'} | {lost} | {per} |"
        )
    lines += ["", "Own domain only (each teacher on the test images of the domain it was trained for):", ""]
    lines += ["| teacher | own processor | in run | thumbnail |", "| --- | --- | --- | --- |"]
    for tid, native in records["teacher_native"].items():
        d = native["domain"]
        in_run = runs[0]["teacher_in_run"].get(tid, {}).get("per_domain", {}).get(d)
        thumb = records["teacher_thumbnail"].get(tid, {}).get("per_domain", {}).get(d)
        cells = [native["per_domain"][d], in_run, thumb]
        lines.append(f"| `{tid}` ({d}) | " + " | ".join("" if v is None else f"{100 * v:.2f}" for v in cells) + " |")
    lines += ["", f"Wall time of the whole benchmark: {records['wall_s']:.0f} s ({records['machine']})."]
    return "\n".join(lines) + "\n"


def readme(records: dict) -> str:
    a = records["args"]
    return (
        "# MultiRes-LD benchmark records\n\n"
        "A three-domain latent-domain digits task at 96, 112 and 128 px with one teacher per domain trained at its "
        "native size (`benchmarks/multires/build.py`); MRL vs supervised-only vs MR-BS (best single teacher) vs "
        "oracle routing, and each teacher measured in the run, through its own processor on the originals, and on "
        "the old 32 px thumbnail path. Tables: [report.md](report.md); everything measured: "
        "[records.json](records.json).\n\n"
        f"Ran at commit `{records['commit']}` (a clean clone), {records['wall_s'] / 60:.1f} min "
        f"wall time in all on 2 shared CPU cores ({a['workers']} seeds side by side, {a['threads']} torch thread "
        "each). Regenerate (builds the dataset and teachers first when absent, about 2 + 5-10 min):\n\n"
        f"```bash\n{records['command']}\n```\n"
    )


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/multires-ld", help="dataset, teachers and logit cache")
    parser.add_argument("--results", default="results/multires")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labeled_per_class", type=int, default=10)
    parser.add_argument(
        "--methods", nargs="*", default=["mr-bs", "oracle"], help="besides MRL and supervised-only (always run)"
    )
    parser.add_argument("--steps", type=int, default=600, help="student steps per method")
    parser.add_argument("--image_size", type=int, default=96, help="the student's input side")
    parser.add_argument("--batch_size", type=int, default=32, help="labeled samples per step")
    parser.add_argument("--unlabeled_batch_size", type=int, default=64, help="unlabeled samples per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--workers", type=int, default=2, help="seeds run side by side, one process each")
    parser.add_argument("--small", action="store_true", help="a tiny dataset and short teachers (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    import datasets

    datasets.disable_progress_bars()
    start = time.time()
    out_dir = Path(args.output_dir)
    data_folder = build.build_dataset(out_dir, build.SMALL if args.small else build.FULL)
    pool_file = build.build_teachers(out_dir, epochs={d: 1 for d in build.DOMAIN_NAMES} if args.small else None)
    test = datasets.load_from_disk(str(data_folder))["test"]
    native, thumb_start = {}, time.time()
    for domain in build.DOMAIN_NAMES:
        folder = out_dir / "teachers" / domain
        acc = native_accuracy(folder, test)
        info = json.loads((folder / "build_info.json").read_text())
        native[domain] = {
            **acc,
            "domain": domain,
            "input_size": build.NATIVE_SIZE[domain],
            "library": info["spec"]["library"],
            "val_accuracy": info["val_accuracy"],
        }
        logger.info("Teacher %s through its own processor: %.4f %s", domain, acc["accuracy"], acc["per_domain"])
    thumbnail = thumbnail_accuracy(pool_file, data_folder)
    for tid, acc in thumbnail.items():
        logger.info("Teacher %s on the 32 px thumbnail path: %.4f %s", tid, acc["accuracy"], acc["per_domain"])
    teacher_eval_s = round(time.time() - thumb_start, 1)
    shutil.rmtree(out_dir / "logits", ignore_errors=True)  # teacher outputs computed by this run, not a past one
    first_pass = teacher_pass(pool_file, data_folder, args)
    logger.info("Teacher pass: %s", first_pass)
    if args.workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as ex:
            futures = [ex.submit(_seed_worker, pool_file, data_folder, seed, args) for seed in args.seeds]
            runs = [f.result() for f in futures]
    else:
        runs = [run_seed(pool_file, data_folder, seed, args) for seed in args.seeds]
    records = {
        "commit": _commit(),
        "command": "python benchmarks/multires/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": vars(args),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "num_test": len(test),
        "teacher_native": native,
        "teacher_thumbnail": thumbnail,
        "teacher_eval_s": teacher_eval_s,
        "teacher_pass": first_pass,
        "runs": runs,
        "wall_s": round(time.time() - start, 1),
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "records.json").write_text(json.dumps(records, indent=2) + "\n")
    (results / "report.md").write_text(report(records))
    (results / "README.md").write_text(readme(records))
    print(report(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
