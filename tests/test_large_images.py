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
    real_decode = images_module.decode_original
    monkeypatch.setattr(images_module, "decode_original", lambda *a, **k: opened.append(1) or real_decode(*a, **k))
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


# -- a large PNG decoded band by band (hf_mrl.data.png_bands) ---------------------------------------------------
def _png(arr: np.ndarray, mode: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def _noisy(shape) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    a[: shape[0] // 2] //= 3  # structure across bands: a wrong row filter or a misplaced band shows
    return a


@pytest.mark.parametrize(
    "mode,shape",
    [("RGB", (301, 500, 3)), ("L", (500, 301)), ("RGBA", (333, 333, 4)), ("LA", (250, 130, 2)), ("RGB", (90, 700, 3))],
)
def test_a_banded_png_has_the_pixels_of_a_whole_decode(mode, shape):
    from hf_mrl.data.png_bands import reduce_png

    data = _png(_noisy(shape), mode)
    whole = Image.open(io.BytesIO(data))
    whole.thumbnail((64, 64), Image.Resampling.BICUBIC, reducing_gap=2.0)
    for band_rows in (7, 16, 1000):  # several bands (not whole reduction blocks: rounded), and one
        img, size = reduce_png(data, 64, band_rows=band_rows)
        assert size == (shape[1], shape[0]) and img.mode == mode and img.size == whole.size
        assert np.array_equal(np.asarray(img), np.asarray(whole)), band_rows


def test_a_banded_png_never_holds_its_full_size(monkeypatch):
    data = _png(_noisy((1200, 900, 3)), "RGB")
    decoded = []
    real_load = Image.Image.load

    def load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", load)
    img, full = images_module.decode_original({"bytes": data, "path": None}, 256)
    assert full == (900, 1200) and max(img.size) == 256
    # bands of rows (and the row above) and the half-size reduction; never the 900 x 1200 pixels at once
    assert decoded and max(w * h for w, h in decoded) <= 900 * 1200 // 3


def test_what_cannot_be_banded_is_decoded_whole():
    from hf_mrl.data.png_bands import reduce_png

    rgb = _noisy((300, 300, 3))
    sixteen = io.BytesIO()
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(sixteen, format="PNG")
    keyed = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(keyed, format="PNG", transparency=(0, 0, 0))
    for data in (
        _png(rgb, "RGB"),  # control: this one is banded
        _palette(rgb),
        sixteen.getvalue(),
        keyed.getvalue(),
        _interlaced(rgb),
        _encoded((300, 300), "JPEG"),
    ):
        out = reduce_png(data, 64)
        assert (out is not None) == (data == _png(rgb, "RGB"))
    assert reduce_png(_png(rgb, "RGB"), 300) is None  # no larger than asked: nothing to reduce


def _palette(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, format="PNG")
    return buf.getvalue()


def _interlaced(rgb: np.ndarray) -> bytes:
    data = bytearray(_png(rgb, "RGB"))
    # Pillow does not write Adam7; mark the header interlaced (its CRC fixed) as a file from elsewhere would be
    import struct
    import zlib

    start = 8 + 8
    data[start + 12] = 1
    data[start + 13 : start + 17] = struct.pack(">I", zlib.crc32(bytes(data[start - 4 : start + 13])) & 0xFFFFFFFF)
    return bytes(data)


def test_a_truncated_large_png_is_a_decoding_error():
    data = _png(_noisy((600, 600, 3)), "RGB", compress_level=1)
    cut = data[: len(data) // 2] + data[-12:]  # its IEND kept: the rows stop short
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": cut, "path": None}]}, features=datasets.Features({"image": datasets.Image()})
    )
    with pytest.raises(ValueError, match=r"row 0 of x .*cannot be decoded.*truncated"):
        ImageSet(ds, "image", 8, "x").originals([0])
