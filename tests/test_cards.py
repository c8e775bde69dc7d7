"""Model cards (structure, metadata, validation), the latent-domain metric module, and both from an installed wheel."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_mrl.hub.cards import RunSummary, TeacherSummary, reuser_card, student_card, validate_card

ROOT = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


def _summary(**changes) -> RunSummary:
    data = {
        "teachers": [
            TeacherSummary(f"org/mnist-teacher@{SHA}", "timm", 3, [], 0.25, 0.8),
            TeacherSummary("/home/someone/teachers/svhn", "transformers", 2, ["b"], 0.75, 0.5),
        ],
        "label_names": ["a", "b", "c"],
        "dataset": "Digits-LD MUS (10 labels per class)",
        "dataset_id": "digits-ld",
        "dataset_config": "MUS",
        "num_labeled": 30,
        "num_unlabeled": 900,
        "num_test": 400,
        "max_steps": 100,
        "seed": 3,
        "hyperparameters": {"max_steps": 100, "outer_every": 5, "batch_size": 16, "unlabeled_batch_size": 32},
        "student_accuracy": 0.8125,
        "supervised_accuracy": 0.75,
        "reuser_accuracy": 0.85,
        "per_domain": {
            "M": {"student": 0.9, "supervised": 0.8, "reuser": 0.95},
            "S": {"student": 0.7, "supervised": 0.72, "reuser": 0.75},
        },
        "worst_domain": {"student": 0.7, "supervised": 0.72, "reuser": 0.75},
        "attention_by_domain": {"M": [0.8, 0.2], "S": [0.1, 0.9]},
        "guard": {
            "folds": 3,
            "held_out": 30,
            "method_accuracy": 0.9,
            "supervised_accuracy": 0.8,
            "gain": 0.1,
            "gain_stderr": 0.05,
            "z": 2.0,
            "decision": "keep",
            "margin": 0.02,
            "confidence": 0.95,
            "repeats": 2,
            "loss_upper": -0.01,
            "trainings": 12,
            "reason": "loss upper bound -1.0 points < margin 2.0",
        },
        "screening": [
            {"id": f"org/mnist-teacher@{SHA}", "accuracy": 0.8, "leep_gain": 1.2, "flags": []},
            {"id": "/home/someone/teachers/svhn", "accuracy": 0.1, "leep_gain": 0.01, "flags": ["noise"]},
        ],
        "reuse_strength": 0.93,
    }
    return RunSummary(**{**data, **changes})


CONFIG = {
    "teachers": [f"org/mnist-teacher@{SHA}", "/home/someone/teachers/svhn"],
    "label_names": ["a", "b", "c"],
    "embed_dim": 6,
    "embedding": {"type": "teacher-outputs"},
    "temperature": 2.449,
    "use_bias": True,
}
STUDENT = {
    "architecture": "resnet10t",
    "num_params": 320_000,
    "label_names": ["a", "b", "c"],
    "input_size": (3, 32, 32),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}

REUSER_SECTIONS = [
    "# mrl-digits",
    "## How to use",
    "## Teachers",
    "## Embedding",
    "## Training",
    "## Results",
    "## Never-worse guard",
    "## Pool screening",
    "## Attention by latent domain",
    "## Limitations",
]
STUDENT_SECTIONS = [
    "# mrl-digits-student",
    "## How to use",
    "## Training",
    "## Results",
    "## Never-worse guard",
    "## Limitations",
]


def _headings(text: str) -> list[str]:
    body = text.split("\n---\n", 1)[1]
    body = re.sub(r"```.*?```", "", body, flags=re.S)  # not the comments in code blocks
    return [line for line in body.splitlines() if line.startswith("#")]


def _metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def _model_index(meta: dict) -> dict[tuple[str, str | None], float]:
    (entry,) = meta["model-index"]
    return {(m["type"], r["dataset"].get("config")): m["value"] for r in entry["results"] for m in r["metrics"]}


def _rendered_reuser() -> str:
    return str(reuser_card(CONFIG, _summary(), repo_id="org/mrl-digits", student_repo_id="org/mrl-digits-student"))


def _rendered_student() -> str:
    return str(student_card(STUDENT, _summary(), repo_id="org/mrl-digits-student", reuser_repo_id="org/mrl-digits"))


def check_reuser_card(text: str) -> None:
    """The reuser card's expected structure (also run on the card rendered from an installed wheel)."""
    assert _headings(text) == REUSER_SECTIONS
    meta = _metadata(text)
    assert meta["library_name"] == "hf_mrl" and meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == ["org/mnist-teacher"]  # Hub teachers only, without revision
    assert _model_index(meta) == {
        ("accuracy", "MUS"): 0.85,
        ("worst_domain_accuracy", "MUS"): 0.75,
        ("accuracy", "MUS/M"): 0.95,
        ("accuracy", "MUS/S"): 0.75,
    }
    lines = text.splitlines()
    assert 'reuser = AttentionReuser.from_pretrained("org/mrl-digits")  # fetches the teachers below' in lines
    # The teacher table: id, revision, library, label coverage, mean attention, accuracy alone.
    assert f"| T1 | `org/mnist-teacher` | `{SHA[:12]}` | timm | 3/3 | 0.250 | 0.8000 |" in lines
    assert "| T2 | local folder `svhn` | n/a | transformers | 2/3 (lacks `b`) | 0.750 | 0.5000 |" in lines
    assert "/home/someone" not in text  # a local path is not published
    assert "psi(x): the concatenated log-probabilities of the 2 teachers" in text
    assert "- Data: Digits-LD MUS (10 labels per class). 30 labeled images, 900 unlabeled" in text
    assert re.search(r"Budget: 100 student steps .* seed 3", text, flags=re.S)
    assert "| MRL student | 0.8125 | 0.7000 |" in lines
    assert "| supervised-only student (same labels, architecture, steps, seed) | 0.7500 | 0.7200 |" in lines
    assert "| attention reuser (weighted teachers) | 0.8500 | 0.7500 |" in lines
    assert "| best single teacher (T1) | 0.8000 | n/a |" in lines
    assert "**Never worse than supervised-only: yes.**" in text
    assert "| S | 0.7000 | 0.7200 | 0.7500 |" in lines
    assert "on\n1 of 2 domains" in text
    assert "| latent domain | T1 | T2 | most attended |" in lines
    assert "| M | 0.80 `████████  ` | 0.20 `██        ` | T1 |" in lines
    assert "1 teacher(s) (local folder `svhn`) were local folders" in text
    assert "Decision: **keep**" in text and "gain\n+0.1000 +/- 0.0500 (standard error corrected" in text
    assert "Non-inferiority margin: **2.0 points**" in text and "2 x 3-fold cross-validation" in text
    assert "| T2 | `svhn` | 0.100 | +0.010 | noise |" in lines
    assert "final reuse strength was 0.930" in text
    assert "\n\n\n" not in text


def check_student_card(text: str) -> None:
    assert _headings(text) == STUDENT_SECTIONS
    meta = _metadata(text)
    assert meta["library_name"] == "timm" and meta["base_model"] == ["org/mnist-teacher"]
    assert {"knowledge-distillation", "hf_mrl", "timm"} <= set(meta["tags"])
    assert _model_index(meta)[("accuracy", "MUS")] == 0.8125
    assert _model_index(meta)[("worst_domain_accuracy", "MUS")] == 0.7
    assert 'model = timm.create_model("hf-hub:org/mrl-digits-student", pretrained=True).eval()' in text
    assert "import hf_mrl" not in text and "from hf_mrl" not in text  # it loads with timm alone
    assert "Inputs: RGB, resized to 32x32 (bilinear" in text
    assert "resnet10t, 0.32M parameters" in text
    assert f"| T1 | `org/mnist-teacher` | `{SHA[:12]}` | timm | 3/3 | 0.8000 |" in text.splitlines()
    assert "([`org/mrl-digits`](https://huggingface.co/org/mrl-digits))" in text
    assert "| **this student** | 0.8125 | 0.7000 |" in text.splitlines()
    assert "**Never worse than supervised-only: yes** (+0.0625)." in text
    assert "\n\n\n" not in text


def test_reuser_card_structure():
    text = _rendered_reuser()
    check_reuser_card(text)
    validate_card(text)


def test_student_card_structure():
    text = _rendered_student()
    check_student_card(text)
    validate_card(text)


def test_cards_pass_huggingface_hub_metadata_parsing():
    for text in (_rendered_reuser(), _rendered_student()):
        card = ModelCard(text)  # strict parsing: a malformed model-index raises
        assert card.data.eval_results and card.data.eval_results[0].task_type == "image-classification"
        assert card.data.model_name in ("mrl-digits", "mrl-digits-student")
        # Round trip: what huggingface_hub writes back is what we wrote.
        assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()


def test_a_worse_student_is_said_so():
    summary = _summary(student_accuracy=0.7, supervised_accuracy=0.75, per_domain=None, worst_domain=None)
    summary.attention_by_domain = None
    text = str(student_card(STUDENT, summary))
    assert "**Never worse than supervised-only: no** (-0.0500)." in text
    assert "the supervised-only student is the better choice" in text
    assert "worst latent domain" not in text
    reuser_text = str(reuser_card(CONFIG, summary))
    assert "Attention by latent domain" not in reuser_text
    assert "No latent-domain labels" in reuser_text
    assert 'AttentionReuser.from_pretrained("PATH_OR_REPO_ID")' in reuser_text


def test_card_of_an_untrained_reuser_does_not_invent_results():
    text = str(reuser_card({**CONFIG, "teachers": [f"org/a@{SHA}", f"org/b@{SHA}"]}))
    assert "Not recorded" in text and "Not evaluated" in text
    meta = _metadata(text)
    assert "model-index" not in meta and meta["base_model"] == ["org/a", "org/b"]
    validate_card(text)


def test_uncovered_labels_are_listed():
    teachers = [
        TeacherSummary(f"org/a@{SHA}", "timm", 2, ["b"]),
        TeacherSummary(f"org/c@{SHA}", "timm", 1, ["a", "b"]),
    ]
    text = str(reuser_card(CONFIG, _summary(teachers=teachers, attention_by_domain=None)))
    assert "No teacher covers: b." in text


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"base_model": ["org/a@abc"]}, "without a revision"),
        ({"base_model": ["/abs/path"]}, "not a Hub model id"),
        ({"library_name": None}, "library_name"),
        ({"model-index": [{"name": "x", "results": [{"metrics": []}]}]}, "model_index"),
    ],
)
def test_validate_card_rejects_bad_metadata(change, words):
    text = _rendered_student()
    meta = {**_metadata(text), **change}
    meta = {k: v for k, v in meta.items() if v is not None}
    bad = "---\n" + yaml.safe_dump(meta) + "---\n" + text.split("\n---\n", 1)[1]
    with pytest.raises(ValueError, match=words):
        validate_card(bad)


def test_push_validation_uses_the_hub_endpoint(local_hub):
    ModelCard(_rendered_reuser()).validate()  # the Hub's YAML check, as `ModelCard.push_to_hub` runs it
    assert ("POST", "/api/validate-yaml") in local_hub.requests_log


# ----------------------------------------------------------------------------------------------- the metric


def test_latent_domain_accuracy_metric_loads_offline_by_path(hf_offline):
    import evaluate

    from hf_mrl.metrics import METRIC_PATH, accuracy_report

    metric = evaluate.load(METRIC_PATH)
    out = metric.compute(
        predictions=[0, 1, 1, 0, 2], references=[0, 1, 0, 0, 2], domains=[0, 0, 1, 1, -1], domain_names=["p", "s"]
    )
    assert out == {
        "accuracy": 0.8,
        "per_domain_accuracy": {"p": 1.0, "s": 0.5},
        "domain_counts": {"p": 2, "s": 2},
        "worst_domain_accuracy": 0.5,
        "worst_domain": "s",
    }
    assert metric.compute(predictions=[1, 1], references=[1, 0]) == {"accuracy": 0.5}
    import torch

    report = accuracy_report(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 1, 1]))
    assert report == {
        "accuracy": 0.75,
        "per_domain": {"0": 1.0, "1": 0.5},
        "worst_domain_accuracy": 0.5,
        "worst_domain": "1",
    }
    assert accuracy_report(torch.tensor([2]), torch.tensor([2]), torch.tensor([-1])) == {"accuracy": 1.0}


# ----------------------------------------------------------------------------------------------- methods, fallback

FALL_BACK = {
    "delivered": "supervised",
    "student_accuracy": 0.75,  # the delivered student is the supervised-only one
    "method_student_accuracy": 0.7,
    "guard": {**_summary().guard, "gain": -0.2, "z": -4.0, "decision": "fall_back"},
    "per_domain": {
        "M": {"student": 0.8, "supervised": 0.8, "reuser": 0.95},
        "S": {"student": 0.72, "supervised": 0.72},
    },
    "worst_domain": {"student": 0.72, "supervised": 0.72, "reuser": 0.75},
}


def _no_reuser(method: str, **changes) -> RunSummary:
    """A run of a method without reuser (and, for `teachers=[]`, without pool)."""
    base = {"reuser_accuracy": None, "attention_by_domain": None, "reuse_strength": None, "per_domain": None}
    return _summary(method=method, delivered="method", worst_domain=None, **{**base, **changes})


def test_student_card_of_a_fallback_run_does_not_say_distilled():
    text = str(student_card(STUDENT, _summary(**FALL_BACK), repo_id="org/mrl-digits-student"))
    meta, body = _metadata(text), text.split("\n---\n", 1)[1]
    intro = body.split("## How to use")[0]
    assert "distilled" not in body and "distil" not in intro
    assert "trained with hf_mrl 0.1.0 on the labeled images alone" in intro and "github.com" not in text
    assert "**supervised-only**" in intro and "never-worse guard" in intro and "student by MRL" in intro
    assert "accuracy 0.7500, that of the supervised-only\nstudent; the MRL student it replaced scored 0.7000" in intro
    lines = body.splitlines()
    assert "| **this student** (supervised-only, delivered by the guard) | 0.7500 | 0.7200 |" in lines
    assert "| MRL student (not delivered) | 0.7000 | n/a |" in lines
    assert "Never worse than supervised-only" not in body
    assert "this student did not learn from them" in body and "Teachers (frozen" not in body
    assert "- Budget: 100 steps (batches of 16 labeled images)" in body
    assert "Decision: **fall_back**" in body
    # Hub metadata: the delivered student derives from no teacher.
    assert "base_model" not in meta and not {"knowledge-distillation", "model-reuse"} & set(meta["tags"])
    assert _model_index(meta)[("accuracy", "MUS")] == 0.75
    validate_card(text)

    # The same run delivering the reuse student says distilled, as before.
    kept = str(student_card(STUDENT, _summary(delivered="method", method_student_accuracy=0.8125)))
    assert "distilled with hf_mrl" in kept.split("## How to use")[0]
    # A summary without `delivered` (older callers) falls back on the guard's decision.
    assert _summary(**{**FALL_BACK, "delivered": None}).fell_back
    assert str(student_card(STUDENT, _summary(**{**FALL_BACK, "delivered": None}))) == str(
        student_card(STUDENT, _summary(**FALL_BACK))
    )


def test_reuser_card_of_a_fallback_run_says_its_student_is_supervised_only():
    text = str(reuser_card(CONFIG, _summary(**FALL_BACK), student_repo_id="org/mrl-digits-student"))
    assert "A small student distilled from it" not in text
    assert (
        "[`org/mrl-digits-student`](https://huggingface.co/org/mrl-digits-student), is the\nsupervised-only one"
        in text
    )
    assert "- Delivered: **the supervised-only student**" in text
    assert "| delivered student: the supervised-only one (the guard fell back) | 0.7500 | 0.7200 |" in text
    assert "| MRL student (not delivered) | 0.7000 | n/a |" in text.splitlines()
    assert "| latent domain | delivered (supervised-only) | reuser |" in text
    assert "Never worse than supervised-only" not in text
    validate_card(text)


def test_reuser_card_keeps_guard_and_screening_without_domain_labels():
    summary = _summary(per_domain=None, worst_domain=None, attention_by_domain=None)
    text = str(reuser_card(CONFIG, summary, repo_id="org/mrl-digits"))
    assert _headings(text) == [h for h in REUSER_SECTIONS if h != "## Attention by latent domain"]
    assert "Decision: **keep**" in text and "| T2 | `svhn` | 0.100 | +0.010 | noise |" in text


@pytest.mark.parametrize("method", ["supervised", "pl", "mean-teacher", "vat", "fixmatch", "mr-bs", "mr-cr", "oracle"])
def test_student_card_of_every_method_without_reuser(method):
    from hf_mrl.hub.cards import METHOD_TEXT

    info = METHOD_TEXT[method]
    changes = {} if info.teachers else {"teachers": [], "screening": []}
    if method == "supervised":
        changes.update(guard=None, student_accuracy=0.75)
    summary = _no_reuser(
        method,
        hyperparameters={"max_steps": 100, "outer_lr": 0.01, "unlabeled_weight": 1.0, "kd_lambda": 1.0},
        **changes,
    )
    text = str(student_card(STUDENT, summary, repo_id="org/s-student", reuser_repo_id="org/s"))
    meta, body = _metadata(text), text.split("\n---\n", 1)[1]
    intro = body.split("## How to use")[0]
    validate_card(text)
    assert _headings(text) == ["# s-student", *STUDENT_SECTIONS[1:]]
    assert info.name in intro
    assert "reuser" not in body and "attention" not in body and "org/s)" not in body and "outer_lr" not in body
    assert ('"kd_lambda"' in body) == info.teachers
    assert ('"unlabeled_weight"' in body) == (method in ("pl", "mean-teacher", "vat", "fixmatch"))
    if info.teachers:
        assert "distilled with hf_mrl" in intro and meta["base_model"] == ["org/mnist-teacher"]
        assert "Teachers (frozen" in body and "knowledge-distillation" in meta["tags"]
    else:
        assert "distil" not in body and "base_model" not in meta and "| T1 |" not in body
        assert "knowledge-distillation" not in meta["tags"]
    if method == "supervised":
        assert "Not applicable: this is the supervised-only student itself." in body
        assert "| **this student** (supervised-only) | 0.7500 |" in body.splitlines()
        assert "supervised-only student (same labels" not in body
    else:
        assert "**Never worse than supervised-only: yes** (+0.0625)." in body
        assert f"compared the {info.name} student with the" in body
    assert ("**A reference, not a method:**" in intro) == (method == "oracle")


def test_run_summary_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="No card text for method 'nope'"):
        _summary(method="nope")


def test_a_transformers_students_card_says_transformers_and_loads_with_it(tmp_path):
    """The card of a transformers student (saved with `save_pretrained`) names transformers as its library, in its
    metadata, tags and loading snippet; a timm student's still says timm."""
    from helpers import make_transformers_teacher, one_torch_thread

    from hf_mrl.training.reuse_trainer import _student_facts
    from hf_mrl.training.student import TransformersStudent, create_student

    source = make_transformers_teacher(tmp_path / "tr", list("vwxyz"))
    with one_torch_thread():
        student = create_student(["a", "b", "c"], architecture=str(source), pretrained=True)
    assert isinstance(student, TransformersStudent)
    facts = _student_facts(student)
    assert facts["library"] == "transformers"
    text = str(student_card(facts, _summary(), repo_id="org/mrl-digits-student"))
    validate_card(text)
    meta = _metadata(text)
    assert meta["library_name"] == "transformers"
    assert "transformers" in meta["tags"] and "timm" not in meta["tags"]
    assert 'AutoModelForImageClassification.from_pretrained("org/mrl-digits-student")' in text
    assert "timm.create_model" not in text and "A small transformers image classifier" in text
    timm_card = str(student_card({**STUDENT, "library": "timm"}, _summary(), repo_id="org/mrl-digits-student"))
    assert _metadata(timm_card)["library_name"] == "timm" and "timm.create_model" in timm_card
    with pytest.raises(ValueError, match="library"):
        student_card({**STUDENT, "library": "keras"})
