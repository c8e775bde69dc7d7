"""`AttentionReuser.predict` (and `reuser(images)`) on inputs as Hugging Face users hand them over."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from helpers import make_images, make_timm_teacher, make_transformers_teacher, one_torch_thread
from PIL import Image

from hf_mrl import AttentionReuser, Embedding, ModelPool
from hf_mrl.data.inputs import image_batches

LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def reuser(tmp_path_factory) -> AttentionReuser:
    """A reuser over a real pool: a transformers teacher (16 px processor) and a timm teacher (16 px config)."""
    root = tmp_path_factory.mktemp("teachers")
    with one_torch_thread():
        pool = ModelPool(
            [
                str(make_transformers_teacher(root / "tr", ["b", "a", "c"])),
                str(make_timm_teacher(root / "tm", LABELS)),
            ],
            LABELS,
        )
        images = make_images(12, seed=2)
        probs = pool.probs(images)
        embedding = Embedding("pixels")  # uses the images themselves, not only the teacher outputs
        feats = embedding(images, probs)
        reuser = AttentionReuser(pool.ids, LABELS, embed_dim=feats.shape[1], embedding=embedding.spec)
        reuser.fit_standardizer(feats)
        reuser.init_prototypes(feats, probs, torch.arange(12) % 3, generator=torch.Generator().manual_seed(0))
    reuser.attach_pool(pool)
    return reuser


def _pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]


def _same(got: dict, expected: dict) -> None:
    assert torch.equal(got["predictions"], expected["predictions"])
    torch.testing.assert_close(got["probs"], expected["probs"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["weights"], expected["weights"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return make_images(6, size=20, seed=5)


def test_pil_list_and_single_pil_equal_the_tensor(reuser, images):
    with one_torch_thread():
        expected = reuser.predict(images)
        assert expected["weights"].std(0).sum() > 0  # routing depends on the input
        _same(reuser.predict(_pil(images)), expected)
        single = reuser.predict(_pil(images)[3])
    assert single["probs"].shape == (1, 3)
    torch.testing.assert_close(single["probs"][0], expected["probs"][3], rtol=0, atol=1e-6)


def test_numpy_float_and_chw_inputs_equal_the_tensor(reuser, images):
    hwc = images.permute(0, 2, 3, 1).numpy()
    with one_torch_thread():
        expected = reuser.predict(images)
        _same(reuser.predict(list(hwc)), expected)  # HWC uint8 arrays
        _same(reuser.predict(hwc), expected)  # one NHWC array
        _same(reuser.predict([x.astype(np.float32) / 255 for x in hwc]), expected)  # HWC float in [0, 1]
        _same(reuser.predict(images.float() / 255), expected)  # BCHW float
        _same(reuser.predict(list(images)), expected)  # CHW uint8 tensors
        _same(reuser(images), expected)  # calling the reuser on images is predict


def test_dataset_column_and_undecoded_dicts_equal_the_tensor(reuser, images):
    ds = datasets.Dataset.from_dict(
        {"image": list(images.permute(0, 2, 3, 1).numpy()), "label": [0, 1, 2, 0, 1, 2]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=LABELS)}),
    )
    with one_torch_thread():
        expected = reuser.predict(images)
        _same(reuser.predict(ds["image"]), expected)  # a datasets.Column of PIL images
        _same(reuser.predict(ds), expected)  # the one Image column of a Dataset
        raw = ds.cast_column("image", datasets.Image(decode=False))["image"]  # {"bytes", "path"} dicts
        assert isinstance(raw[0], dict)
        _same(reuser.predict(raw), expected)
        _same(reuser.predict(ds["image"], batch_size=4), expected)  # decoded in chunks, results in input order


def test_images_of_different_sizes_each_go_through_every_teacher_at_their_own_size(reuser):
    small, large = make_images(3, size=12, seed=7), make_images(2, size=40, seed=8)
    mixed = [_pil(small)[0], _pil(large)[0], _pil(small)[1], _pil(large)[1], _pil(small)[2]]
    with one_torch_thread():
        got = reuser.predict(mixed)
        a, b = reuser.predict(small), reuser.predict(large)
    for key in ("probs", "weights"):
        expected = torch.stack([a[key][0], b[key][0], a[key][1], b[key][1], a[key][2]])
        torch.testing.assert_close(got[key], expected, rtol=0, atol=1e-6)


def test_grey_and_rgba_images_are_converted_as_training_does(reuser):
    """Grey repeated; alpha composited onto white as training decodes it (not dropped: test_image_conversion.py)."""
    from hf_mrl.data.images import to_rgb

    grey = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    rgba = Image.fromarray(np.full((16, 16, 4), 90, dtype=np.uint8))
    with one_torch_thread():
        _same(reuser.predict([grey, rgba]), reuser.predict([grey.convert("RGB"), to_rgb(rgba)]))
        _same(reuser.predict(np.asarray(grey)), reuser.predict(grey))


def test_an_image_file_path_is_read(reuser, images, tmp_path):
    path = tmp_path / "x.png"
    _pil(images)[0].save(path)
    with one_torch_thread():
        _same(reuser.predict(str(path)), reuser.predict(images[:1]))


@pytest.mark.parametrize(
    "bad",
    [
        42,
        {"a": 1},
        b"bytes",
        (x for x in range(2)),
        torch.zeros(2, 3, 8, 8, dtype=torch.int64),
        [Image.new("RGB", (8, 8)), 3.5],
    ],
    ids=["int", "dict", "bytes", "generator", "int64-tensor", "list-with-a-float"],
)
def test_unsupported_inputs_raise_a_type_error_saying_what_is_accepted(reuser, bad):
    with pytest.raises(TypeError, match=r"(Expected images as a PIL image, a numpy array|dtype uint8 or float)"):
        reuser.predict(bad)


def test_unsupported_input_message_names_the_type_and_position():
    with pytest.raises(TypeError, match=r"Item 1 of the images: Expected images as a PIL image.*got builtins\.float"):
        list(image_batches([Image.new("RGB", (8, 8)), 3.5]))


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(2, 3, 8, 8) * 2, r"Float image tensors must lie in \[0, 1\]; got values in"),
        (np.zeros((8, 8, 3), np.float32) - 1, r"Float numpy images must lie in \[0, 1\]"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), r"It looks channels-last: permute"),
        (torch.zeros(5, 8), r"Expected an image tensor \(C, H, W\)"),
        ([], r"Got no images"),
        (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), r"empty batch"),
        ("/no/such/file.png", r"not an image file on this machine"),
        ({"bytes": b"not an image", "path": None}, r"Could not decode the image"),
    ],
    ids=["float-range", "numpy-range", "hwc-tensor", "2d-tensor", "empty-list", "empty-batch", "no-file", "corrupt"],
)
def test_bad_image_values_raise_a_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        list(image_batches(bad))


def test_a_dataset_without_exactly_one_image_column_is_refused():
    ds = datasets.Dataset.from_dict({"label": [0, 1]})
    with pytest.raises(TypeError, match=r"needs exactly one Image column.*dataset\['image'\]"):
        list(image_batches(ds))


def test_a_corrupt_png_in_bytes_names_the_problem():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="Item 0 of the images: Could not decode"):
        list(image_batches([{"bytes": buf.getvalue()[:20], "path": None}]))


def test_teacher_outputs_are_read_by_split_name():
    from hf_mrl.reuse.outputs import TeacherOutputs

    t = {k: torch.full((2, 1, 3), float(i)) for i, k in enumerate("lut")}
    f = {k: torch.full((2, 4), 10.0 + i) for i, k in enumerate("lut")}
    out = TeacherOutputs(**{f"probs_{k}": v for k, v in t.items()}, **{f"feats_{k}": v for k, v in f.items()})
    assert out.test.probs is out.probs_t and out.test.feats is out.feats_t
    assert out.labeled.probs is out.probs_l and out.split("unlabeled").feats is out.feats_u
    with pytest.raises(ValueError, match=r"Unknown split 't'; choose one of \['labeled', 'unlabeled', 'test'\]"):
        out.split("t")  # the letters are the storage, not a split's name
