"""The student: any timm / transformers classifier, and loading the saved student with timm and with transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_images, make_transformers_teacher, one_torch_thread
from PIL import Image

from hf_mrl.training.student import (
    DEFAULT_STUDENT,
    TransformersStudent,
    create_student,
    load_student,
    save_student,
    student_preprocess,
)

LABELS = ["cat", "dog", "bird"]


def _pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _pipeline_top1(folder, images: torch.Tensor) -> list[str]:
    from transformers import pipeline

    pipe = pipeline("image-classification", model=str(folder), device="cpu")
    return [out[0]["label"] for out in pipe(_pil(images), top_k=1, batch_size=32)]


def _train_two_steps(student, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Two optimiser steps, so the head is no longer at its initialisation (predictions are not ties)."""
    preprocess = student_preprocess(student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    student.train()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(student(preprocess(images)), labels).backward()
        optimizer.step()
    student.eval()


# --------------------------------------------------------------------------------------------- default student


def test_the_default_student_is_unchanged():
    """Digits-LD results must not move: the same timm call, so the same parameters and init for a seed."""
    import timm

    torch.manual_seed(3)
    student = create_student([str(d) for d in range(10)], image_size=32)
    torch.manual_seed(3)
    reference = timm.create_model("resnet10t", num_classes=10, **DEFAULT_STUDENT["model_args"])
    assert _same_weights(student, reference)
    cfg = student.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["crop_pct"] == 1.0
    assert create_student(LABELS).pretrained_cfg["input_size"] == (3, 32, 32)  # image_size=None: still 32


@pytest.fixture(scope="module")
def digits():
    """100 Digits-LD test images (all classes) and the labeled split."""
    from hf_mrl.data import LABEL_NAMES, dataset_to_tensors, load_digits_ld

    ds = load_digits_ld("MUS", labeled_per_class=10, seed=0)
    rows = np.linspace(0, len(ds["test"]) - 1, 100).astype(int).tolist()
    test, _, _ = dataset_to_tensors(ds["test"].select(rows))
    labeled, labels, _ = dataset_to_tensors(ds["labeled"])
    return list(LABEL_NAMES), test, labeled, labels


def test_the_saved_student_loads_with_timm_automodel_and_pipeline(digits, tmp_path):
    import timm
    from transformers import AutoModelForImageClassification

    names, test, labeled, labels = digits
    torch.manual_seed(0)
    with one_torch_thread():
        student = create_student(names, image_size=32)
        _train_two_steps(student, labeled, labels)
        save_student(student, tmp_path / "student")
        config = json.loads((tmp_path / "student" / "config.json").read_text())
        assert "num_classes" not in config["model_args"]  # transformers passes num_classes itself

        by_timm = timm.create_model(f"local-dir:{tmp_path / 'student'}", pretrained=True).eval()
        pixels = student_preprocess(by_timm)(test)
        with torch.no_grad():
            timm_logits = by_timm(pixels)
            torch.testing.assert_close(timm_logits, student(student_preprocess(student)(test)))
            by_auto = AutoModelForImageClassification.from_pretrained(tmp_path / "student").eval()
            torch.testing.assert_close(by_auto(pixel_values=pixels).logits, timm_logits, rtol=1e-5, atol=1e-5)
        assert [by_auto.config.id2label[i] for i in range(10)] == names

        # timm's own eval transform on PIL images, as a timm user would run it, agrees too.
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=by_timm))
        with torch.no_grad():
            timm_pil = by_timm(torch.stack([transform(p) for p in _pil(test)])).argmax(-1)
        timm_top1 = timm_logits.argmax(-1)
        assert torch.equal(timm_pil, timm_top1)
        assert timm_top1.unique().numel() > 1  # a trained head, not one class everywhere
        assert _pipeline_top1(tmp_path / "student", test) == [names[i] for i in timm_top1]
        assert load_student(tmp_path / "student").pretrained_cfg["label_names"] == names


def test_pipeline_and_student_preprocess_agree_on_images_of_other_shapes(tmp_path):
    """Non-square, larger images: timm's transform of the saved config squashes them as `student_preprocess` does."""
    from transformers import pipeline

    torch.manual_seed(0)
    student = create_student(LABELS, image_size=16).eval()
    with torch.no_grad():
        student.fc.weight.mul_(20)  # spread the probabilities so that a crop would move them visibly
    save_student(student, tmp_path / "s")
    pipe = pipeline("image-classification", model=str(tmp_path / "s"), device="cpu")
    for h, w in [(40, 64), (16, 16), (70, 20)]:
        image = make_images(1, size=max(h, w), seed=h)[:, :, :h, :w]
        with torch.no_grad():
            expected = student(student_preprocess(student)(image)).softmax(-1)[0]
        got = {out["label"]: out["score"] for out in pipe(_pil(image)[0], top_k=3)}
        assert [got[n] for n in LABELS] == pytest.approx(expected.tolist(), abs=2e-3)


# --------------------------------------------------------------------------------------------- any timm student


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    """A local timm resnet18 checkpoint with 5 classes, saved as timm pushes it to the Hub (no network)."""
    import timm

    folder = tmp_path_factory.mktemp("r18")
    torch.manual_seed(11)
    with one_torch_thread():
        model = timm.create_model("resnet18", num_classes=5).eval()
        model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.4, 0.45, 0.5), "std": (0.2, 0.25, 0.3)}
        timm.models.save_for_hf(
            model, str(folder), model_config={"label_names": list("vwxyz")}, safe_serialization=True
        )
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("labels", [LABELS, list("abcde")], ids=["3-classes", "5-classes-as-the-checkpoint"])
def test_a_pretrained_timm_student_keeps_the_backbone_and_gets_a_new_head(resnet18_checkpoint, labels):
    folder, weights = resnet18_checkpoint
    with one_torch_thread():
        student = create_student(labels, architecture=f"local-dir:{folder}", pretrained=True)
    state = student.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items() if not k.startswith("fc."))
    assert state["fc.weight"].shape == (len(labels), 512) and student.num_classes == len(labels)
    if len(labels) == 5:  # same count as the checkpoint: timm would have kept its head
        assert not torch.equal(state["fc.weight"], weights["fc.weight"])
    cfg = student.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["mean"] == (0.4, 0.45, 0.5) and cfg["std"] == (0.2, 0.25, 0.3)
    assert cfg["label_names"] == labels and cfg["architecture"] == "resnet18"
    assert student.hf_mrl_base_model == str(folder)


def test_a_pretrained_timm_student_takes_an_image_size_and_saves_for_timm_and_pipeline(resnet18_checkpoint, tmp_path):
    import timm

    folder, weights = resnet18_checkpoint
    torch.manual_seed(0)
    images = make_images(12, size=24, seed=4)
    with one_torch_thread():
        student = create_student(LABELS, image_size=24, architecture=str(folder), pretrained=True)
        assert student.pretrained_cfg["input_size"] == (3, 24, 24)
        assert student.pretrained_cfg["mean"] == (0.4, 0.45, 0.5)  # the weights' normalisation, whatever the size
        assert not student.hf_mrl_model_args  # nothing that points at the source checkpoint is saved
        _train_two_steps(student, images, torch.arange(12) % 3)
        save_student(student, tmp_path / "s")
        reloaded = timm.create_model(f"local-dir:{tmp_path / 's'}", pretrained=True).eval()
        assert _same_weights(reloaded, student)
        with torch.no_grad():
            top1 = reloaded(student_preprocess(reloaded)(images)).argmax(-1)
        assert _pipeline_top1(tmp_path / "s", images) == [LABELS[i] for i in top1]


def test_a_timm_student_from_a_weights_file_overlay(resnet18_checkpoint, tmp_path):
    """timm's own way of pointing an architecture at a local weights file; the file path is not saved."""
    folder, weights = resnet18_checkpoint
    with one_torch_thread():
        student = create_student(
            LABELS,
            architecture="resnet18",
            pretrained=True,
            model_args={"pretrained_cfg_overlay": {"file": str(folder / "model.safetensors")}},
        )
        assert torch.equal(student.state_dict()["conv1.weight"], weights["conv1.weight"])
        assert student.hf_mrl_base_model == "resnet18"  # not timm's Hub id: the weights came from the file
        save_student(student, tmp_path / "s")
    assert "pretrained_cfg_overlay" not in json.loads((tmp_path / "s" / "config.json").read_text())["model_args"]


# ------------------------------------------------------------------------------------- transformers students


def _tiny_vit(folder, labels):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(5)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.3] * 3, image_std=[0.2] * 3).save_pretrained(
        folder
    )
    return folder


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_a_transformers_student_round_trips_through_load_student_and_pipeline(kind, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    source = tmp_path / "source"
    if kind == "resnet":
        make_transformers_teacher(source, list("vwxyz"))
    else:
        _tiny_vit(source, list("vwxyz"))
    checkpoint = load_file(source / "model.safetensors")
    images = make_images(10, size=20, seed=6)
    torch.manual_seed(1)
    with one_torch_thread():
        student = create_student(LABELS, architecture=str(source), pretrained=True)
        assert isinstance(student, TransformersStudent) and student.num_classes == 3
        prefix = student.model.base_model_prefix + "."
        state = student.model.state_dict()
        backbone = {k: v for k, v in checkpoint.items() if k.startswith(prefix) and k in state}
        assert backbone and all(torch.equal(state[k], v) for k, v in backbone.items())
        heads = [k for k in state if not k.startswith(prefix)]
        assert heads and all(state[k].shape[0] == 3 for k in heads if k.endswith("weight"))
        cfg = student.pretrained_cfg
        assert cfg["input_size"] == (3, 16, 16) and cfg["label_names"] == LABELS
        if kind == "vit":
            assert cfg["mean"] == (0.3, 0.3, 0.3) and cfg["std"] == (0.2, 0.2, 0.2)

        _train_two_steps(student, images, torch.arange(10) % 3)
        save_student(student, tmp_path / "s")
        pixels = student_preprocess(student)(images)
        with torch.no_grad():
            logits = student(pixels)
            reloaded = load_student(tmp_path / "s")
            torch.testing.assert_close(reloaded(pixels), logits)
            auto = AutoModelForImageClassification.from_pretrained(tmp_path / "s").eval()
            torch.testing.assert_close(auto(pixel_values=pixels).logits, logits)
        assert reloaded.pretrained_cfg == cfg
        assert _pipeline_top1(tmp_path / "s", images) == [LABELS[i] for i in logits.argmax(-1)]


def test_a_transformers_student_at_another_size_interpolates_position_embeddings(tmp_path):
    source = _tiny_vit(tmp_path / "vit", list("vwxyz"))
    with one_torch_thread():
        student = create_student(LABELS, image_size=24, architecture=str(source), pretrained=True)
        out = student(student_preprocess(student)(make_images(2, size=24)))
    assert out.shape == (2, 3) and student.pretrained_cfg["input_size"] == (3, 24, 24)


def test_a_fresh_transformers_student_is_seeded_and_scales_pixels_like_a_fresh_timm_one(tmp_path):
    source = make_transformers_teacher(tmp_path / "tr", list("vwxyz"))
    torch.manual_seed(2)
    a = create_student(LABELS, architecture=str(source))
    torch.manual_seed(2)
    b = create_student(LABELS, architecture=str(source))
    assert _same_weights(a, b)
    assert a.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and a.hf_mrl_base_model is None


# ------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "architecture, error, message",
    [
        ("no_such_net", ValueError, r"neither a timm architecture \(see `timm.list_models\(\)`\), nor a Hub id"),
        ("resnet81", ValueError, r"Did you mean 'resnet18'"),
        ("local-dir:/no/such/folder", ValueError, r"is not a folder on this machine"),
        (42, TypeError, r"architecture must be a timm architecture, a Hub id or a folder \(str\); got int"),
    ],
)
def test_unknown_students_are_refused_clearly(architecture, error, message):
    with pytest.raises(error, match=message):
        create_student(LABELS, architecture=architecture)


def test_model_args_of_a_transformers_student_are_refused(tmp_path):
    source = make_transformers_teacher(tmp_path / "tr", list("vwxyz"))
    with pytest.raises(ValueError, match=r"model_args .* only apply to timm students"):
        create_student(LABELS, architecture=str(source), model_args={"depth": 2})


def test_a_folder_that_is_no_checkpoint_names_the_student(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"Student .* has no config.json"):
        create_student(LABELS, architecture=str(tmp_path / "empty"))


def test_a_hub_student_is_read_from_the_loopback_hub(local_hub, resnet18_checkpoint):
    """`hf-hub:` and bare Hub ids go through the Hub cache, with the resolved commit as the base model."""
    from huggingface_hub import HfApi

    folder, weights = resnet18_checkpoint
    api = HfApi()
    api.create_repo("org/r18")
    api.upload_folder(repo_id="org/r18", folder_path=str(folder))
    with one_torch_thread():
        student = create_student(LABELS, architecture="hf-hub:org/r18", pretrained=True)
    assert torch.equal(student.state_dict()["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"])
    commit = api.model_info("org/r18").sha
    assert student.hf_mrl_base_model == f"org/r18@{commit}"


# ------------------------------------------------------------------------------------------------- the trainer


@pytest.mark.parametrize("library", ["timm", "transformers"])
def test_the_trainer_runs_mrl_with_a_pretrained_student_from_its_spec(library, tmp_path):
    """`student_spec={"architecture": ..., "pretrained": True}` through today's trainer: steps, outer steps
    (the hypergradient calls the student functionally), prediction, and saving the result."""
    from helpers import make_timm_teacher
    from test_trainer import TEACHERS, _config, _data, _reuse

    from hf_mrl import StudentTrainer

    if library == "timm":
        source = f"local-dir:{make_timm_teacher(tmp_path / 'src', list('vwxyz'))}"
    else:
        source = str(make_transformers_teacher(tmp_path / "src", list("vwxyz")))
    data = _data()
    spec = {"architecture": source, "pretrained": True}
    with one_torch_thread():
        trainer = StudentTrainer(_config(outer_every=1), data, _reuse(data), teacher_ids=TEACHERS, student_spec=spec)
        before = trainer.strategy.reuser.prototypes.detach().clone()
        for step in range(2):
            logs = trainer.training_step(step)
        assert all(np.isfinite(v) for v in logs.values())
        assert not torch.equal(
            trainer.strategy.reuser.prototypes.detach(), before
        )  # outer steps reached the prototypes
        predictions = trainer.predict(data.test_images)
        student = trainer.accelerator.unwrap_model(trainer.student)
        save_student(student, tmp_path / "student")
        reloaded = load_student(tmp_path / "student")
        with torch.no_grad():
            again = reloaded(student_preprocess(reloaded)(data.test_images)).argmax(-1)
    assert predictions.shape == (len(data.test_images),) and torch.equal(again, predictions)


def test_a_transformers_student_by_hub_id_from_the_loopback_hub(local_hub, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("org/tiny-resnet")
    api.upload_folder(repo_id="org/tiny-resnet", folder_path=str(make_transformers_teacher(tmp_path / "tr", "vwxyz")))
    commit = api.model_info("org/tiny-resnet").sha
    with one_torch_thread():
        student = create_student(LABELS, architecture=f"org/tiny-resnet@{commit}", pretrained=True)
    assert isinstance(student, TransformersStudent) and student.num_classes == 3
    assert student.hf_mrl_base_model == f"org/tiny-resnet@{commit}"
