"""Large originals: decoded once, reduced to `MAX_SIDE` on their long side (JPEG drafted by libjpeg), kept so, and
named once in a warning with their row; PIL's raw DecompressionBombWarning is not what the user sees."""

from __future__ import annotations

import io
import logging
import warnings

import datasets
import numpy as np
import pytest
from PIL import Image

import hf_mrl.data.images as images_module
from hf_mrl.data.images import ImageSet


def _encoded(size, fmt) -> bytes:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]  # a gradient: resizing keeps its shape
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_large_original_is_decoded_once_reduced_and_named(fmt, monkeypatch, caplog):
    monkeypatch.setattr(images_module, "MAX_SIDE", 256)
    items = [{"bytes": _encoded((16, 16), fmt), "path": None} for _ in range(3)]
    items.insert(2, {"bytes": _encoded((2000, 1000), fmt), "path": None})
    ds = datasets.Dataset.from_dict({"image": items}, features=datasets.Features({"image": datasets.Image()}))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    images = ImageSet(ds, "image", 8, "split 'train' of 'big'")
    with caplog.at_level(logging.WARNING, logger="hf_mrl.data.images"):
        originals = images.originals([2, 0])
        for _ in range(3):
            batch = images[[0, 1, 2, 3]]  # every batch holds it, as when it sits in a small labeled set
            images.subset([2, 3]).resized(4)[:]
    assert originals[0].size == (256, 128) and originals[1].size == (16, 16)  # aspect kept
    assert batch.shape == (4, 3, 8, 8)
    assert opened.count(1) == 1 + 1 + 3 * (3 + 1)  # the large one once; the small ones at every read
    warned = [r.getMessage() for r in caplog.records if "decoded once" in r.getMessage()]
    assert len(warned) == 1 and "row 2 of split 'train' of 'big' is 2000x1000" in warned[0], warned


def test_no_decompression_bomb_warning_for_what_is_handled(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000 * 1000)  # as a 10000 x 10000 image is for the default
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": _encoded((1500, 1000), "PNG"), "path": None}]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        (img,) = ImageSet(ds, "image", 8, "x").originals([0])
    assert max(img.size) <= images_module.MAX_SIDE
