"""Images the way Hugging Face users hand them over, turned into the uint8 (B, 3, H, W) batches the pool reads.

Accepted: a PIL image, a numpy array (HW, HWC or NHWC; uint8, or float in [0, 1]), a torch tensor (CHW or BCHW;
uint8, or float in [0, 1]), a `datasets` image value (`{"bytes": ..., "path": ...}`), a path to an image file, a list
or tuple of any of these (sizes may differ), a `datasets` image column (`dataset["image"]`) or a `datasets.Dataset`
with one image column. Images of different sizes are never resized here: each teacher's own processor sees each
original image, so images are grouped by size and every group is one batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["ACCEPTED_IMAGES", "image_batches", "to_uint8_image"]

ACCEPTED_IMAGES = (
    "a PIL image, a numpy array (HW, HWC or NHWC; uint8, or float in [0, 1]), a torch tensor (CHW or BCHW; uint8, "
    "or float in [0, 1]), a `datasets` image dict ({'bytes', 'path'}), a path to an image file, or a list / "
    "`datasets` column / `datasets.Dataset` of those"
)
_CHANNELS = (1, 3, 4)


def _error(got) -> TypeError:
    return TypeError(f"Expected images as {ACCEPTED_IMAGES}; got {type(got).__module__}.{type(got).__qualname__}.")


def _to_uint8(x: torch.Tensor, what: str) -> torch.Tensor:
    """uint8 as is; float in [0, 1] scaled to 0..255 and rounded (what PIL would hold); anything else refused."""
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool or not (x.is_floating_point()):
        raise TypeError(f"Expected {what} of dtype uint8 or float (in [0, 1]); got {x.dtype}.")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        lo, hi = x.min().item(), x.max().item()
        raise ValueError(
            f"Float {what} must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]. Pass uint8 pixels (0..255) or "
            "divide by 255."
        )
    return (x.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _rgb(x: torch.Tensor, what: str) -> torch.Tensor:
    """(B, C, H, W) with C in 1, 3, 4 -> (B, 3, H, W): grey repeated, alpha composited onto white."""
    c = x.shape[1]
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    if c == 4:  # alpha composited onto white, as training does (not dropped)
        return _from_rgba(x)
    return x


def _from_tensor(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in _CHANNELS:
        hint = (
            " It looks channels-last: permute to (C, H, W) (`x.permute(2, 0, 1)`), or pass a numpy array."
            if x.ndim in (3, 4) and x.shape[-1] in _CHANNELS
            else ""
        )
        raise ValueError(
            f"Expected an image tensor (C, H, W) or a batch (B, C, H, W) with C in {_CHANNELS}; got shape "
            f"{tuple(x.shape)}.{hint}"
        )
    return _rgb(_to_uint8(x.detach().cpu(), "image tensors"), "tensor")


def _from_array(a: np.ndarray) -> torch.Tensor:
    if a.dtype == np.uint16 and a.ndim == 2:  # a 16-bit grey image, scaled as training scales an I;16 PNG
        from PIL import Image

        return _from_pil(Image.fromarray(a))
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or a.dtype == np.uint8):
        raise TypeError(f"Expected a numpy image of dtype uint8 or float (in [0, 1]); got {a.dtype}.")
    if a.ndim == 2:  # one grey image
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in _CHANNELS:
        raise ValueError(
            f"Expected a numpy image (H, W), (H, W, C) or a batch (N, H, W, C) with C in {_CHANNELS}; got shape "
            f"{a.shape}. A channels-first array is a torch tensor's layout: pass `torch.from_numpy(a)`."
        )
    a = np.ascontiguousarray(a) if a.flags.writeable else a.copy()  # torch refuses read-only memory
    x = torch.from_numpy(a).permute(0, 3, 1, 2)
    return _rgb(_to_uint8(x, "numpy images"), "array")


def _from_pil(image) -> torch.Tensor:
    """The conversion training uses (`hf_mrl.data.images.to_rgb`: alpha composited onto white, 16-bit scaled, CMYK and
    palettes converted), so that `predict` sees the same pixels as the run that trained the reuser."""
    from hf_mrl.data.images import to_rgb

    return torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1).unsqueeze(0).contiguous()


def _from_rgba(x: torch.Tensor) -> torch.Tensor:
    """(B, 4, H, W) uint8 -> RGB composited onto white through PIL, exactly as training decodes an RGBA image."""
    from PIL import Image

    hwc = x.permute(0, 2, 3, 1).numpy()
    return torch.cat([_from_pil(Image.fromarray(np.ascontiguousarray(a), mode="RGBA")) for a in hwc])


def to_uint8_image(item) -> torch.Tensor:
    """One input item (an image or a batch of them) -> uint8 (B, 3, H, W). `TypeError` for anything unsupported."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return _from_pil(item)
    if isinstance(item, torch.Tensor):
        return _from_tensor(item)
    if isinstance(item, np.ndarray):
        return _from_array(item)
    if isinstance(item, dict) and ("bytes" in item or "path" in item):
        from hf_mrl.data.images import decode_image

        try:
            return _from_pil(decode_image(item))  # as training decodes it (EXIF orientation applied)
        except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"Could not decode the image {_short(item)}: {err}") from None
    if isinstance(item, (str, os.PathLike)):
        if not os.path.isfile(item):
            raise ValueError(f"{str(item)!r} is not an image file on this machine (URLs are not fetched).")
        try:
            from hf_mrl.data.images import decode_image

            return _from_pil(decode_image({"path": os.fspath(item), "bytes": None}))
        except OSError as err:
            raise ValueError(f"Could not read the image file {str(item)!r}: {err}") from None
    raise _error(item)


def _short(item: dict) -> str:
    return f"(path={item.get('path')!r})" if item.get("path") else "(from bytes)"


def _items(images) -> tuple[Sequence, bool]:
    """The input as a sequence of items, and whether each item is already a batch (one tensor / array)."""
    import datasets
    from PIL import Image

    if isinstance(images, (torch.Tensor, np.ndarray)):
        return [images], images.ndim == 4
    if isinstance(images, (Image.Image, dict, str, os.PathLike)):
        return [images], False
    if isinstance(images, datasets.Dataset):
        columns = [n for n, f in images.features.items() if isinstance(f, datasets.Image)]
        if len(columns) != 1:
            raise TypeError(
                f"A datasets.Dataset passed as images needs exactly one Image column; this one has {columns or 'none'} "
                f"(columns: {images.column_names}). Pass the column: `dataset['image']`."
            )
        return images[columns[0]], False
    if isinstance(images, Sequence):
        return images, False
    raise _error(images)


def image_batches(images, chunk_size: int = 256) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Split any accepted input into uint8 (n, 3, H, W) batches of same-size images, in chunks of `chunk_size` items.

    Yields `(positions, batch)`, `positions` being the indices of the batch's images in the input, so results can be
    put back in input order. At most `chunk_size` inputs are decoded at a time (a long dataset column is read lazily).

    >>> from PIL import Image
    >>> [(pos, b.shape) for pos, b in image_batches([Image.new("RGB", (8, 6)), Image.new("L", (4, 4))])]
    [([0], torch.Size([1, 3, 6, 8])), ([1], torch.Size([1, 3, 4, 4]))]
    """
    items, batched = _items(images)
    if batched:  # one (B, C, H, W) tensor or (N, H, W, C) array: one size, one batch
        batch = to_uint8_image(items[0])
        if not len(batch):
            raise ValueError(f"Got an empty batch of images (shape {tuple(items[0].shape)}).")
        yield list(range(len(batch))), batch
        return
    start = 0
    chunk: list = []
    seen = False
    for item in items:
        chunk.append(item)
        if len(chunk) == chunk_size:
            yield from _grouped(chunk, start)
            start, chunk, seen = start + len(chunk), [], True
    if chunk:
        yield from _grouped(chunk, start)
    elif not seen:
        raise ValueError(f"Got no images (an empty {type(images).__name__}).")


def _grouped(chunk: list, start: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
    for i, item in enumerate(chunk):
        if isinstance(item, (list, tuple)) or isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim == 4:
            raise TypeError(
                f"Item {start + i} of the images is itself a batch ({type(item).__name__}); pass one flat list of "
                f"images, or one (B, C, H, W) tensor."
            )
        try:
            x = to_uint8_image(item)
        except TypeError as err:
            raise TypeError(f"Item {start + i} of the images: {err}") from None
        except ValueError as err:
            raise ValueError(f"Item {start + i} of the images: {err}") from None
        groups.setdefault(tuple(x.shape[-2:]), []).append((start + i, x[0]))
    for members in groups.values():
        yield [p for p, _ in members], torch.stack([x for _, x in members])
