"""A large PNG reduced while it is decoded, a band of rows at a time: its full-size pixels are never all held.

PNG has no reduced decode (JPEG's `draft`), so a 10000 x 10000 original costs 300 MB of pixels however small the
size it is wanted at. Its rows are filtered against the row above only, so the stream can be inflated band by band:
each band, prefixed with the previous band's last row unfiltered, is a small PNG of its own that Pillow decodes.
The bands are box-reduced as `Image.thumbnail` reduces the whole image and the result resized as it does, so the
pixels are the same as decoding whole and calling `thumbnail((max_side, max_side), BICUBIC, reducing_gap=2.0)`
(tests/test_large_images.py compares them). Only 8-bit grey, RGB, grey-alpha and RGBA, non-interlaced PNGs without
a transparency key, EXIF orientation or animation take this path; anything else is decoded whole.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MODES = {0: ("L", 1), 2: ("RGB", 3), 4: ("LA", 2), 6: ("RGBA", 4)}  # colour type -> mode, channels (8-bit)
_UNSUPPORTED = {b"tRNS", b"eXIf", b"acTL"}  # a transparency key, an orientation, an animation: the whole decode
_PREMULTIPLIED = {"LA": "La", "RGBA": "RGBa"}  # as Image.resize filters images with alpha
_REDUCING_GAP = 2.0


def _chunks(data: bytes):
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        yield kind, pos + 8, length
        if kind == b"IEND":
            return
        pos += 12 + length


def banded_header(data: bytes) -> tuple[int, int, int, list] | None:
    """(width, height, colour type, chunks) of a PNG this module can decode by bands; None for any other file."""
    if not data.startswith(SIGNATURE):
        return None
    chunks = list(_chunks(data))
    if not chunks or chunks[0][0] != b"IHDR" or chunks[0][2] != 13:
        return None
    start = chunks[0][1]
    width, height, depth, colour, method, filtering, interlace = struct.unpack(">IIBBBBB", data[start : start + 13])
    if depth != 8 or colour not in _MODES or method or filtering or interlace:
        return None
    if {kind for kind, _, _ in chunks} & _UNSUPPORTED:
        return None
    texts = (data[s : s + n] for kind, s, n in chunks if kind in (b"tEXt", b"zTXt", b"iTXt"))
    if any(text.startswith(b"Raw profile type exif") for text in texts):  # an orientation Pillow would apply
        return None
    return width, height, colour, chunks


def thumbnail_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size `Image.thumbnail((max_side, max_side))` gives an image of this size (aspect kept)."""

    def round_aspect(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    x = y = max_side
    aspect = width / height
    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _png(width: int, height: int, colour: int, raw: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    # level 0: stored, not compressed; the band is decoded at once
    return SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


def reduce_png(data: bytes, max_side: int, band_rows: int = 256):
    """The PNG `data` reduced to at most `max_side` on its long side, decoded by bands -> (PIL image in its own
    mode, the original's size); None when the file is not one this module decodes by bands or is no larger than
    `max_side`. Pillow's decompression-bomb limit applies as to a whole decode."""
    from PIL import Image

    header = banded_header(data)
    if header is None:
        return None
    width, height, colour, chunks = header
    if max(width, height) <= max_side:
        return None
    if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"Image size ({width * height} pixels) exceeds limit of {2 * Image.MAX_IMAGE_PIXELS} pixels, "
            "could be decompression bomb DOS attack."
        )
    mode, channels = _MODES[colour]
    size = thumbnail_size(width, height, max_side)
    fx = int(width / size[0] / _REDUCING_GAP) or 1
    fy = int(height / size[1] / _REDUCING_GAP) or 1
    band_rows = max(fy, band_rows - band_rows % fy)  # whole reduction blocks per band: the same pixels as whole
    work_mode = _PREMULTIPLIED.get(mode, mode)
    reduced = Image.new(work_mode, (math.ceil(width / fx), math.ceil(height / fy)))
    stride = 1 + width * channels
    inflate = zlib.decompressobj()
    parts = (data[s : s + n] for kind, s, n in chunks if kind == b"IDAT")
    pending, previous = b"", None

    def take(n: int) -> bytes:
        nonlocal pending
        out = bytearray()
        while len(out) < n:
            if not pending:
                pending = next(parts, None)
                if pending is None:
                    raise ValueError("the PNG ends before its last row (truncated)")
            out += inflate.decompress(pending, n - len(out))
            pending = inflate.unconsumed_tail
        return bytes(out)

    for top in range(0, height, band_rows):
        rows = min(band_rows, height - top)
        raw = take(rows * stride)
        if previous is None:
            band = Image.open(io.BytesIO(_png(width, rows, colour, raw)))
            band.load()
        else:  # the row above, unfiltered (filter type 0), then this band's rows filtered against it
            band = Image.open(io.BytesIO(_png(width, rows + 1, colour, b"\x00" + previous + raw)))
            band.load()
            band = band.crop((0, 1, width, rows + 1))
        previous = band.crop((0, rows - 1, width, rows)).tobytes()
        if work_mode != mode:
            band = band.convert(work_mode)
        reduced.paste(band.reduce((fx, fy)) if fx > 1 or fy > 1 else band, (0, top // fy))
        del band
    img = reduced.resize(size, Image.Resampling.BICUBIC, box=(0, 0, width / fx, height / fy))
    return (img.convert(mode) if work_mode != mode else img), (width, height)
