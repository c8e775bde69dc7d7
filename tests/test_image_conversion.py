"""One image conversion: an image fed to `predict` (PIL, bytes, file, array) gets the pixels training decoded from
the dataset for it, for RGBA, LA, P with transparency, 16-bit grey and CMYK (the issue: predict dropped alpha and
clipped 16-bit images where training composites onto white and scales)."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_mrl.data.images import ImageSet
from hf_mrl.data.inputs import image_batches

SIDE = 8


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, SIDE * SIDE).reshape(SIDE, SIDE).astype(np.uint8)  # every alpha level
    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    grey16 = (np.arange(SIDE * SIDE, dtype=np.uint16).reshape(SIDE, SIDE) * 1000).astype(np.uint16)
    return {
        "RGBA": Image.fromarray(rgba, mode="RGBA"),
        "LA": Image.fromarray(rgba[..., [0, 3]], mode="LA"),
        "P+transparency": palette,
        "I;16": Image.fromarray(grey16),
        "CMYK": Image.fromarray(rgba, mode="RGBA").convert("RGB").convert("CMYK"),
    }


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if img.mode == "CMYK" else "PNG")  # PNG has no CMYK
    return buf.getvalue()


def _trained(data: bytes) -> torch.Tensor:
    """What training reads: the image's bytes in a datasets Image column, decoded by the ImageSet at its own size."""
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None}]}, features=datasets.Features({"image": datasets.Image()})
    )
    return ImageSet(ds, "image", SIDE, "test")[0:1]


@pytest.mark.parametrize("mode", list(_images()))
def test_predict_inputs_get_the_pixels_training_sees(mode, tmp_path):
    img = _images()[mode]
    data = _png(img)
    reloaded = Image.open(io.BytesIO(data))
    assert reloaded.mode == img.mode or mode == "P+transparency" and reloaded.mode == "P"
    trained = _trained(data)
    path = tmp_path / "image.png"
    path.write_bytes(data)
    for given in (reloaded, {"bytes": data, "path": None}, str(path)):
        ((_, batch),) = list(image_batches([given]))
        assert torch.equal(batch, trained), (mode, type(given).__name__)
    if mode == "RGBA":  # an RGBA array or tensor too (channels last / first), not its alpha dropped
        a = np.array(reloaded)
        for given in (a, torch.from_numpy(a).permute(2, 0, 1)):
            ((_, batch),) = list(image_batches(given))
            assert torch.equal(batch, trained)
        assert not torch.equal(trained[0], torch.from_numpy(a[..., :3]).permute(2, 0, 1))
    if mode == "I;16":  # scaled, not clipped to white
        assert len(trained.unique()) > 10
        ((_, batch),) = list(image_batches(np.asarray(reloaded)))
        assert torch.equal(batch, trained)
