"""Teachers of the digit-attribute benchmark: one binary classifier per (attribute, Digits-LD domain).

Why per (attribute, domain) and not one multi-attribute model per domain (see README.md here): in the paper each
attribute is its own target task with its own pool of models, one per latent domain, as in its digits table; and a
binary Hub classifier whose label names are the task's two names (`not even` / `even`) is what `ModelPool` maps
onto a target, where a 7-head multi-label model is not an image classifier the pool can read. Each attribute's
pool therefore holds K = 3 teachers, as the digits pool does.

Each teacher is trained on its domain's *source* part only (never on target data), with the architecture and
epochs of the digits pool's teacher for that domain (`hf_mrl.pool.builder.TEACHER_SPECS`: timm for M, transformers
ConvNeXt for U and ResNet for S), and saved as a Hub-format folder under `$HF_MRL_CACHE/digit_attributes_pool_v1`.

    python benchmarks/attributes/attribute_pool.py            # build (or reuse) all 21 and print the calibration
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digit_attributes import DIGIT_ATTRIBUTES, _canonical, attribute_labels  # noqa: E402

from hf_mrl.data import DOMAINS, attribute_label_names, dataset_to_tensors, load_domain, load_source  # noqa: E402
from hf_mrl.data.digits_ld import _split_indices  # noqa: E402
from hf_mrl.pool.builder import TEACHER_SPECS, make_timm_classifier, make_transformers_classifier, train_classifier  # noqa: E402
from hf_mrl.utils import atomic_dir, atomic_write_json, atomic_write_text, cache_root, torch_threads  # noqa: E402

__all__ = ["build_attribute_pools", "calibration_matrix", "default_pool_dir", "pool_file", "teacher_dir"]

logger = logging.getLogger(__name__)

_VERSION = 1


def default_pool_dir() -> Path:
    return cache_root() / f"digit_attributes_pool_v{_VERSION}"


def teacher_dir(attribute: str, domain: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root or default_pool_dir()) / f"{_canonical(attribute).lower()}-{domain}"


def pool_file(attribute: str, root: str | os.PathLike | None = None) -> Path:
    """The pool file of one attribute task (its three domain teachers, paths relative to the file)."""
    return Path(root or default_pool_dir()) / f"{_canonical(attribute).lower()}.txt"


@torch.no_grad()
def _predict(model, preprocess, images: torch.Tensor) -> torch.Tensor:
    outs = [model(preprocess(images[i : i + 512])) for i in range(0, len(images), 512)]
    return torch.cat([getattr(o, "logits", o) for o in outs]).argmax(-1)


def _source(domain: str, attribute: str):
    """(train images, binary labels), (validation images, binary labels) of a domain's source part."""
    out = []
    for split in ("train", "validation"):
        x, digits, _ = dataset_to_tensors(load_source(domain)[split])
        out.append((x, torch.as_tensor(attribute_labels(attribute, digits))))
    return out


def _build_info(attribute: str, domain: str, seed: int, train_images: torch.Tensor) -> dict:
    from hf_mrl.pool.cache import fingerprint

    return {
        "version": _VERSION,
        "attribute": _canonical(attribute),
        "digits": list(DIGIT_ATTRIBUTES[_canonical(attribute)]),
        "domain": domain,
        "spec": TEACHER_SPECS[domain],
        "seed": seed,
        "data": fingerprint(train_images),
    }


def _card(attribute: str, domain: str, spec: dict, acc: float) -> str:
    digits = ", ".join(map(str, DIGIT_ATTRIBUTES[attribute]))
    return (
        f"---\nlibrary_name: {spec['library']}\ntags:\n- image-classification\n- digits-ld\n- hf_mrl-teacher\n---\n\n"
        f"# Digit-attribute teacher: {attribute}, domain {domain}\n\n"
        f"A small {spec['library']} binary classifier (`not {attribute.lower()}` / `{attribute.lower()}`; the "
        f"attribute holds for the digits {digits}) trained only on the source part of Digits-LD domain `{domain}` "
        f"(built by `benchmarks/attributes/attribute_pool.py`). Validation accuracy on that domain: {acc:.4f}.\n"
        "One teacher of an hf_mrl attribute pool; on other digit domains it is weak by design.\n"
    )


def _train_teacher(attribute: str, domain: str, folder: Path, seed: int, data) -> float:
    spec = TEACHER_SPECS[domain]
    labels = attribute_label_names(attribute)
    (x_tr, y_tr), (x_va, y_va) = data
    torch.manual_seed(seed)
    if spec["library"] == "timm":
        (model, preprocess), processor = make_timm_classifier(spec["architecture"], labels), None
    else:
        model, processor, preprocess = make_transformers_classifier(spec["model_type"], labels)
    train_classifier(model, preprocess, x_tr, y_tr, spec["epochs"], seed=seed)
    acc = (_predict(model, preprocess, x_va) == y_va).float().mean().item()
    with atomic_dir(folder) as tmp:
        if spec["library"] == "timm":
            import timm

            timm.models.save_for_hf(model, str(tmp), model_config={"label_names": labels}, safe_serialization=True)
        else:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", _card(attribute, domain, spec, acc))
        atomic_write_json(tmp / "build_info.json", {**_build_info(attribute, domain, seed, x_tr), "val_accuracy": acc})
    return acc


def build_attribute_pools(
    attributes=tuple(DIGIT_ATTRIBUTES), domains: str = "MUS", root: str | os.PathLike | None = None, seed: int = 0
) -> dict[str, Path]:
    """Train (or reuse) one teacher per (attribute, domain); write one pool file per attribute.

    A teacher folder whose `build_info.json` matches (version, attribute, domain, recipe, seed, training data) is
    reused, so a second call trains nothing. Returns `{attribute: pool file}`.
    """
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise ValueError(f"Unknown Digits-LD domains {unknown or domains!r}; choose letters from {''.join(DOMAINS)}.")
    out = {}
    for attribute in map(_canonical, attributes):
        names = []
        for domain in domains:
            folder = teacher_dir(attribute, domain, root)
            data = _source(domain, attribute)
            expected = _build_info(attribute, domain, seed, data[0][0])
            info = folder / "build_info.json"
            recorded = json.loads(info.read_text()) if info.is_file() else {}
            if all(recorded.get(k) == v for k, v in expected.items()):
                logger.info("Reusing teacher %s-%s", attribute, domain)
            else:
                # One thread: the weights depend on the thread count (reduction order), and a cold `run.py`
                # (2 threads) must build the same teachers as `attribute_pool.py` (1) and the committed tables.
                with torch_threads(1):
                    acc = _train_teacher(attribute, domain, folder, seed, data)
                logger.info("Teacher %s-%s: source validation accuracy %.4f", attribute, domain, acc)
            names.append(folder.name)
        path = pool_file(attribute, root)
        header = f"# Digit-attribute pool for {attribute}: one teacher per Digits-LD domain (paths relative here)\n"
        atomic_write_text(path, header + "\n".join(names) + "\n")
        out[attribute] = path
    return out


def calibration_matrix(
    attributes=tuple(DIGIT_ATTRIBUTES), domains: str = "MUS", root: str | os.PathLike | None = None
) -> dict:
    """Each teacher's accuracy on each domain's target-test part, read through `ModelPool` as a run reads it.

    Returns `{attribute: {"teacher-D": {"M": acc, "U": acc, "S": acc}}}` plus, per attribute, the majority-class
    rate of each domain's test part (the accuracy of a constant guess).
    """
    from hf_mrl.pool.model_pool import ModelPool

    tests = {}
    for d in domains:
        x, digits, _ = dataset_to_tensors(load_domain(d).select(_split_indices(d)["target_test"]))
        tests[d] = (x, digits)
    out = {}
    for attribute in map(_canonical, attributes):
        names = attribute_label_names(attribute)
        ids = [str(teacher_dir(attribute, d, root)) for d in domains]
        pool = ModelPool(ids, names)
        preds = {d: pool.probs(x).argmax(-1) for d, (x, _) in tests.items()}  # (N, K) per test domain
        table = {}
        for k, d_teacher in enumerate(domains):
            row = {}
            for d, (_, digits) in tests.items():
                y = torch.as_tensor(attribute_labels(attribute, digits))
                row[d] = (preds[d][:, k] == y).float().mean().item()
            table[f"teacher-{d_teacher}"] = row
        majority = {}
        for d, (_, digits) in tests.items():
            y = attribute_labels(attribute, digits)
            majority[d] = float(max(y.mean(), 1 - y.mean()))
        out[attribute] = {"teachers": table, "majority": majority}
    return out


def render_calibration(matrix: dict) -> str:
    """The calibration as a Markdown table: rows attribute x teacher, columns test domain, in-domain in bold."""
    domains = list(next(iter(matrix.values()))["majority"])
    lines = [
        "| attribute | teacher | " + " | ".join(domains) + " | in - mean out |",
        "|---|---|" + "---|" * (len(domains) + 1),
    ]
    for attribute, entry in matrix.items():
        for teacher, row in entry["teachers"].items():
            own = teacher.rsplit("-", 1)[1]
            cells = [f"**{row[d]:.3f}**" if d == own else f"{row[d]:.3f}" for d in domains]
            out = [row[d] for d in domains if d != own]
            gap = row[own] - float(np.mean(out)) if out else float("nan")
            lines.append(f"| {attribute} | {teacher} | " + " | ".join(cells) + f" | {gap:+.3f} |")
        cells = [f"{entry['majority'][d]:.3f}" for d in domains]
        lines.append(f"| {attribute} | (majority class) | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attributes", default=",".join(DIGIT_ATTRIBUTES), help="comma-separated attribute names")
    p.add_argument("--domains", default="MUS")
    p.add_argument("--root", help=f"pool folder (default {default_pool_dir()})")
    p.add_argument("--out", help="write the calibration matrix here (JSON; a .md next to it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    attributes = [a for a in args.attributes.split(",") if a]
    build_attribute_pools(attributes, args.domains, args.root)
    matrix = calibration_matrix(attributes, args.domains, args.root)
    text = render_calibration(matrix)
    print(text)
    if args.out:
        atomic_write_json(args.out, matrix)
        atomic_write_text(Path(args.out).with_suffix(".md"), text)
    return matrix


if __name__ == "__main__":
    main()
