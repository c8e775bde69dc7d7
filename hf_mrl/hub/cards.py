"""Model cards: run data rendered by the Jinja templates in `hf_mrl/hub/templates/`.

A run fills a `RunSummary` (teachers, data, budget, results); `reuser_card` and `student_card` turn it into a
`huggingface_hub.ModelCard` whose YAML header (`ModelCardData`: library, tags, `base_model`, `model-index`) the Hub
indexes. `validate_card` checks a rendered card the way the Hub reads its metadata.
"""

from __future__ import annotations

import json
import math
import os
import re
from importlib import resources

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_mrl.hub.summary import (  # noqa: F401
    METHOD_TEXT,
    PAPER,
    MethodText,
    RunSummary,
    TeacherSummary,
    method_text,
    split_teacher_id,
)

__all__ = [
    "METHOD_TEXT",
    "MethodText",
    "RunSummary",
    "TeacherSummary",
    "card_template",
    "render_card",
    "reuser_card",
    "student_card",
    "validate_card",
]


_TASK = "image-classification"


_MAX_LABELS_SHOWN = 20


def card_template(kind: str) -> str:
    """The template text for `reuser` or `student`, read from the installed package."""
    try:
        return resources.files("hf_mrl.hub.templates").joinpath(f"{kind}.md").read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ValueError(f"No model card template {kind!r}: expected hf_mrl/hub/templates/{kind}.md.") from err


def render_card(kind: str, data: dict) -> ModelCard:
    """Render the `kind` template; `data["card_data"]` (a dict) becomes the YAML metadata header."""
    data = dict(data)
    meta = data.pop("card_data", None) or {}
    card_data = meta if isinstance(meta, ModelCardData) else ModelCardData(**meta)
    card = ModelCard.from_template(card_data, template_str=card_template(kind), **data)
    # Optional template sections leave runs of blank lines behind: keep at most one.
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)).rstrip("\n") + "\n")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _bar(weight: float, width: int = 10) -> str:
    """A text bar for a weight in [0, 1]: `0.62 ██████▏   `."""
    eighths = round(max(0.0, min(1.0, weight)) * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
    return f"{weight:.2f} `{bar.ljust(width)}`"


def _labels_text(labels: list[str]) -> str:
    shown = ", ".join(f"`{label}`" for label in labels[:_MAX_LABELS_SHOWN])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > _MAX_LABELS_SHOWN else "")


def _margin(accuracy: float | None, n: int | None) -> str | None:
    """Half-width of a 95% normal interval for an accuracy measured on n samples."""
    if accuracy is None or not n:
        return None
    return f"{1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1.0 / n) / n):.3f}"


def _repo_name(repo_id: str | None, default: str) -> str:
    return repo_id.split("/")[-1] if repo_id else default


def _teacher_rows(teachers: list[TeacherSummary], num_labels: int) -> list[dict]:
    rows = []
    for i, t in enumerate(teachers, start=1):
        if t.labels_covered is None:
            coverage = "n/a"
        else:
            coverage = f"{t.labels_covered}/{num_labels}"
            if t.missing_labels:
                coverage += " (lacks " + _labels_text(t.missing_labels) + ")"
        rows.append(
            {
                "index": i,
                "teacher": f"`{t.name}`" if t.on_hub else f"local folder `{os.path.basename(t.name.rstrip('/'))}`",
                "revision": f"`{t.revision[:12]}`" if t.revision else ("unpinned" if t.on_hub else "n/a"),
                "library": t.library,
                "coverage": coverage,
                "attention": "n/a" if t.mean_attention is None else f"{t.mean_attention:.3f}",
                "accuracy": _pct(t.test_accuracy),
            }
        )
    return rows


_SSL = ("pl", "mean-teacher", "vat", "fixmatch")


_REUSE = ("mr-bs", "mr-cr", "mrl", "oracle")


# `MRLConfig` fields that only some methods read; the others apply to every method.
_FIELD_METHODS = {
    **dict.fromkeys(
        (
            "outer_every",
            "outer_lr",
            "inner_lr",
            "unroll_steps",
            "hypergradient",
            "direct_weight",
            "attention_temperature",
            "use_bias",
            "learn_reuse_strength",
            "reuse_strength_init",
            "embedding",
        ),
        ("mrl",),
    ),
    "kd_lambda": _REUSE,
    "kd_temperature": _REUSE,
    "unlabeled_batch_size": _SSL + _REUSE,
    "unlabeled_weight": _SSL,
    "confidence_threshold": ("pl", "fixmatch"),
    "ema_decay": ("mean-teacher",),
    "eval_ema_decay": ("fixmatch",),
    "vat_epsilon": ("vat",),
    "rampup_fraction": ("pl", "mean-teacher", "vat"),
}


def _hyperparameters(hp: dict, method: str) -> dict:
    """The hyperparameters that `method` reads (a supervised student's card shows no attention temperature)."""
    return {k: v for k, v in hp.items() if k != "method" and method in _FIELD_METHODS.get(k, (method,))}


def _training(s: RunSummary, method: str | None = None) -> dict:
    """The Training section; `method`: the method whose hyperparameters to list (default: the run's)."""
    hp = {k: v for k, v in s.hyperparameters.items() if k not in ("method",)}
    return {
        "dataset": s.dataset,
        "num_labeled": s.num_labeled,
        "num_unlabeled": s.num_unlabeled,
        "num_test": s.num_test,
        "max_steps": s.max_steps,
        "seed": s.seed,
        "outer_every": hp.get("outer_every"),
        "batch_size": hp.get("batch_size"),
        "unlabeled_batch_size": hp.get("unlabeled_batch_size"),
        "num_processes": s.num_processes,
        "wall_time": None if s.wall_time_s is None else f"{s.wall_time_s / 60:.1f} min",
        "hyperparameters_json": json.dumps(_hyperparameters(hp, method or s.method), indent=2, sort_keys=True),
        "has_domains": s.per_domain is not None,
    }


def _split_name(s: RunSummary) -> str:
    if not s.test_overlap:
        return "target test split"
    return (
        f"evaluation split, which holds {s.test_overlap} of the labeled training images (allowed by "
        "--allow_test_overlap): these are not test accuracies"
    )


def _results(s: RunSummary) -> dict | None:
    if s.student_accuracy is None or s.supervised_accuracy is None:
        return None
    worst = s.worst_domain or {}
    best = max((t for t in s.teachers if t.test_accuracy is not None), key=lambda t: t.test_accuracy, default=None)
    name = method_text(s.method).name
    # `model`: the row as the reuser card names it; `this`: the student card's name for the student it describes.
    if s.method == "supervised":
        rows = [{"model": "supervised-only student", "this": "**this student** (supervised-only)", "key": "student"}]
        rows[0]["accuracy"] = s.student_accuracy
    elif s.fell_back:
        rows = [
            {
                "model": "delivered student: the supervised-only one (the guard fell back)",
                "this": "**this student** (supervised-only, delivered by the guard)",
                "key": "student",
                "accuracy": s.student_accuracy,
            },
        ]
        if s.method_student_accuracy is not None:
            rows.append(
                {"model": f"{name} student (not delivered)", "key": "method", "accuracy": s.method_student_accuracy}
            )
    else:
        rows = [
            {"model": f"{name} student", "this": "**this student**", "key": "student", "accuracy": s.student_accuracy},
            {
                "model": "supervised-only student (same labels, architecture, steps, seed)",
                "key": "supervised",
                "accuracy": s.supervised_accuracy,
            },
        ]
    if s.reuser_accuracy is not None:
        rows.append({"model": "attention reuser (weighted teachers)", "key": "reuser", "accuracy": s.reuser_accuracy})
    for row in rows:
        row.setdefault("this", row["model"])
        row["worst"] = _pct(worst.get(row["key"])) if s.per_domain else None
        row["accuracy"] = _pct(row["accuracy"])
    if best is not None:
        label = f"best single teacher (T{s.teachers.index(best) + 1})"
        rows.append(
            {
                "model": label,
                "this": label,
                "key": "teacher",
                "accuracy": _pct(best.test_accuracy),
                "worst": "n/a" if s.per_domain else None,
            }
        )
    delta = s.student_accuracy - s.supervised_accuracy
    method_delta = None
    if s.fell_back and s.method_student_accuracy is not None:
        method_delta = f"{s.method_student_accuracy - s.supervised_accuracy:+.4f}"
    domains = []
    for d, v in (s.per_domain or {}).items():
        domains.append(
            {
                "domain": d,
                "student": _pct(v.get("student")),
                "supervised": _pct(v.get("supervised")),
                "reuser": _pct(v.get("reuser")),
                "never_worse": v.get("student", 0.0) >= v.get("supervised", 0.0),
            }
        )
    return {
        "split_name": _split_name(s),
        "rows": rows,
        "never_worse": delta >= 0,
        "tie": abs(delta) < 1e-12,
        "delta": f"{delta:+.4f}",
        "method_delta": method_delta,
        "domains": domains,
        "domains_never_worse": sum(d["never_worse"] for d in domains),
        "margin": _margin(s.student_accuracy, s.num_test),
        "num_test": s.num_test,
    }


def _attention(s: RunSummary) -> dict | None:
    if not s.attention_by_domain:
        return None
    names = [f"T{i}" for i in range(1, len(s.teachers) + 1)]
    rows = []
    for d, weights in s.attention_by_domain.items():
        top = max(range(len(weights)), key=weights.__getitem__)
        rows.append({"domain": d, "cells": [_bar(w) for w in weights], "top": f"T{top + 1}"})
    return {"teachers": names, "rows": rows}


def _eval_results(s: RunSummary | None, accuracy: float | None, worst_key: str) -> list[EvalResult]:
    if s is None or accuracy is None or s.test_overlap:  # measured on training rows: no test-split claim
        return []
    common = {"task_type": _TASK, "dataset_type": s.dataset_id, "dataset_name": s.dataset, "dataset_split": "test"}
    results = [
        EvalResult(
            **common,
            dataset_config=s.dataset_config,
            metric_type="accuracy",
            metric_name="Accuracy",
            metric_value=round(float(accuracy), 6),
        )
    ]
    if s.worst_domain and s.worst_domain.get(worst_key) is not None:
        results.append(
            EvalResult(
                **common,
                dataset_config=s.dataset_config,
                metric_type="worst_domain_accuracy",
                metric_name="Worst latent-domain accuracy",
                metric_value=round(float(s.worst_domain[worst_key]), 6),
            )
        )
    for domain, values in (s.per_domain or {}).items():
        if values.get(worst_key) is not None:
            results.append(
                EvalResult(
                    **common,
                    dataset_config=f"{s.dataset_config}/{domain}" if s.dataset_config else domain,
                    metric_type="accuracy",
                    metric_name=f"Accuracy on latent domain {domain}",
                    metric_value=round(float(values[worst_key]), 6),
                )
            )
    return results


def _metadata(
    library: str, tags: list[str], summary: RunSummary | None, teacher_ids: list[str], model_name: str, eval_results
) -> ModelCardData:
    base_models = []
    for tid in teacher_ids:
        name, _, on_hub = split_teacher_id(tid)
        if on_hub and name not in base_models:
            base_models.append(name)
    return ModelCardData(
        library_name=library,
        pipeline_tag=_TASK,
        tags=tags,
        base_model=base_models or None,
        metrics=["accuracy"] if eval_results else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )


def reuser_card(
    config: dict,
    summary: RunSummary | None = None,
    *,
    repo_id: str | None = None,
    student_repo_id: str | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """The attention reuser's card from its config (`AttentionReuser` init arguments) and, after training, the run.

    Args:
        config: `teachers`, `label_names`, `embed_dim`, `embedding`, `temperature`, `use_bias`.
        summary: the run; without it the card says what is unknown instead of inventing it.
        repo_id: where the reuser lives on the Hub (used in the loading snippet); a local path works too.
        student_repo_id: the distilled student's repo, linked from the card.
        tags: extra Hub tags.
    """
    teacher_ids = list(config["teachers"])
    labels = [str(n) for n in config["label_names"]]
    teachers = summary.teachers if summary else [TeacherSummary(t) for t in teacher_ids]
    model_name = _repo_name(repo_id, "mrl-attention-reuser")
    base_tags = ["hf_mrl", "model-reuse", "attention-reuse", "latent-domains", _TASK]
    meta = _metadata(
        "hf_mrl",
        base_tags + [t for t in tags or [] if t not in base_tags],
        summary,
        teacher_ids,
        model_name,
        _eval_results(summary, summary and summary.reuser_accuracy, "reuser"),
    )
    rows = _teacher_rows(teachers, len(labels))
    local = [row["teacher"] for row, t in zip(rows, teachers, strict=True) if not t.on_hub]
    context = {
        "model_name": model_name,
        "repo_id": repo_id,
        "student_repo_id": student_repo_id,
        "hf_mrl_version": _version(),
        "paper": PAPER,
        "num_teachers": len(teacher_ids),
        "num_labels": len(labels),
        "labels_text": _labels_text(labels),
        "teachers": rows,
        "local_teachers": local,
        "uncovered_labels": _uncovered(teachers, labels),
        "embedding": config.get("embedding"),
        "embedding_text": _embedding_text(config.get("embedding") or {}, len(teacher_ids), len(labels)),
        "embed_dim": config.get("embed_dim"),
        "temperature": None if config.get("temperature") is None else f"{config['temperature']:.3g}",
        "use_bias": config.get("use_bias", True),
        "label_map": config.get("label_map"),
        "training": _training(summary) if summary else None,
        "results": _results(summary) if summary else None,
        "attention": _attention(summary) if summary else None,
        "guard": summary.guard if summary else None,
        "screening": summary.screening if summary else None,
        "reuse_strength": None if not summary or summary.reuse_strength is None else f"{summary.reuse_strength:.3f}",
        "fell_back": bool(summary and summary.fell_back),
        "trust_remote_code": bool(config.get("trust_remote_code") or (summary and summary.trust_remote_code)),
        "allow_pickle": bool(config.get("allow_pickle") or (summary and summary.allow_pickle)),
        "endpoint_teachers": [t for t in teacher_ids if t.startswith("endpoint:")],
        "endpoint_top_k": (summary and summary.endpoints or {}).get("top_k") or "k",
        "endpoint_calls": summary.endpoints if summary else None,
    }
    return render_card("reuser", {"card_data": meta, **context})


def student_card(
    student_config: dict,
    summary: RunSummary | None = None,
    *,
    repo_id: str | None = None,
    reuser_repo_id: str | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """The student's card (a timm or transformers model: it loads without hf_mrl).

    The card says which method trained the student (`summary.method`) and tells apart a delivered method student from
    the supervised-only student that the never-worse guard delivered in its place (`summary.fell_back`): only a
    student that learnt from teachers lists them as its base models and speaks of distillation.

    Args:
        student_config: `architecture`, `num_params`, `label_names`, `input_size` (C, H, W), `mean`, `std`,
            `interpolation`, `crop_pct`, and `library` (`timm`, the default, or `transformers`: the card's
            `library_name`, tags and loading snippet).
        summary: the run that trained it.
        repo_id: the student's Hub repo (used in the loading snippet).
        reuser_repo_id: the attention reuser of the run (MRL only), linked from the card.
        tags: extra Hub tags.
    """
    labels = [str(n) for n in student_config["label_names"]]
    library = student_config.get("library") or "timm"
    if library not in ("timm", "transformers"):
        raise ValueError(f"student_config['library'] must be 'timm' or 'transformers'; got {library!r}.")
    teachers = summary.teachers if summary else []
    method = summary.method if summary else "mrl"
    text = method_text(method)
    fell_back = bool(summary and summary.fell_back)
    from_teachers = text.teachers and not fell_back  # this student learnt from the teachers' predictions
    model_name = _repo_name(repo_id, f"{method}-student")
    base_tags = ["hf_mrl", library, _TASK]
    if from_teachers:
        base_tags += ["knowledge-distillation", "model-reuse"]
    elif text.unlabeled and not fell_back:
        base_tags += ["semi-supervised"]
    meta = _metadata(
        library,
        base_tags + [t for t in tags or [] if t not in base_tags],
        summary,
        [t.id for t in teachers] if from_teachers else [],
        model_name,
        _eval_results(summary, summary and summary.student_accuracy, "student"),
    )
    size = student_config.get("input_size") or (3, 224, 224)
    num_params = student_config.get("num_params")
    context = {
        "model_name": model_name,
        "repo_id": repo_id,
        "reuser_repo_id": reuser_repo_id if method == "mrl" else None,
        "hf_mrl_version": _version(),
        "paper": PAPER,
        "method": method,
        "method_name": text.name,
        "method_how": text.how,
        "method_source": text.source.format(k=len(teachers)),
        "uses_teachers": text.teachers,
        "uses_unlabeled": text.unlabeled,
        "fell_back": fell_back,
        "from_teachers": from_teachers,
        "library": library,
        "architecture": student_config.get("architecture", "unknown"),
        "num_params": None if num_params is None else f"{num_params / 1e6:.2f}M",
        "num_labels": len(labels),
        "labels_text": _labels_text(labels),
        "input_size": f"{size[-2]}x{size[-1]}",
        "mean": list(student_config.get("mean", ())),
        "std": list(student_config.get("std", ())),
        "interpolation": student_config.get("interpolation", "bilinear"),
        "crop_pct": student_config.get("crop_pct", 1.0),
        "teachers": _teacher_rows(teachers, len(labels)),
        "training": _training(summary, "supervised" if fell_back else method) if summary else None,
        "results": _results(summary) if summary else None,
        "uncovered_labels": _uncovered(teachers, labels),
        "guard": summary.guard if summary else None,
        "trust_remote_code": bool(summary and summary.trust_remote_code),
        "allow_pickle": bool(summary and summary.allow_pickle),
    }
    return render_card("student", {"card_data": meta, **context})


def _uncovered(teachers: list[TeacherSummary], labels: list[str]) -> list[str]:
    if not teachers or any(t.labels_covered is None for t in teachers):
        return []
    missing = set.intersection(*(set(t.missing_labels) for t in teachers))
    return [label for label in labels if label in missing]


def _embedding_text(spec: dict, k: int, c: int) -> str:
    kind = spec.get("type")
    if kind == "teacher-outputs":
        return f"the concatenated log-probabilities of the {k} teachers ({k} x {c} features): no extra model"
    if kind == "pixels":
        return f"a fixed random projection of the 32x32 input pixels to {spec.get('dim')} features"
    if kind == "encoder":
        return f"pooled features of the frozen backbone `{spec.get('model_id')}`"
    return "unknown"


def validate_card(card: ModelCard | str) -> ModelCard:
    """Parse a rendered card the way the Hub reads it and check its metadata; return the parsed card.

    Raises `ValueError` naming the problem: a YAML header that is missing or not a mapping, a `model-index` that
    huggingface_hub cannot parse back into eval results, a `base_model` that is not a Hub model id, or a missing
    `library_name` / `pipeline_tag`.
    """
    from huggingface_hub.utils import validate_repo_id

    text = str(card)
    if not text.startswith("---"):
        raise ValueError("The model card has no YAML metadata header.")
    parsed = ModelCard(text)  # strict: raises ValueError on a malformed header or model-index
    data = parsed.data
    for key in ("library_name", "pipeline_tag"):
        if not data.get(key):
            raise ValueError(f"The model card metadata has no `{key}`.")
    base = data.get("base_model")
    for model_id in [base] if isinstance(base, str) else base or []:
        if not isinstance(model_id, str) or "@" in model_id:
            raise ValueError(f"`base_model` entry {model_id!r} must be a full `org/name` id without a revision.")
        try:
            validate_repo_id(model_id)
        except ValueError as err:
            raise ValueError(f"`base_model` entry {model_id!r} is not a Hub model id: {err}") from err
        if "/" not in model_id:
            raise ValueError(f"`base_model` entry {model_id!r} must be a full `org/name` id without a revision.")
    if "model-index" in data.to_dict():
        for result in data.eval_results or []:
            if not isinstance(result.metric_value, (int, float)):
                raise ValueError(f"Metric {result.metric_type!r} has a non-numeric value {result.metric_value!r}.")
    return parsed


def _version() -> str:
    from hf_mrl import __version__

    return __version__
