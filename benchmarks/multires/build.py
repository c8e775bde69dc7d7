"""Build the multi-resolution latent-domain benchmark (MultiRes-LD) and its three teachers, offline.

Three latent domains, each at its own native size, each drawing its digit glyphs from one Digits-LD domain (no
download): the class is carried by a digit of about 14-22 px (a 28-34 px plate holding a 20-26 px digit in `plate`) somewhere in a cluttered
canvas of 96-128 px. A 32 px thumbnail shrinks that digit to 4-7 px among clutter of the same scale, so the old data
path (decode once to `image_size`, then resize for the teacher) loses most of what the teachers need.

| domain | glyphs from | native size | style |
| --- | --- | --- | --- |
| `chalk` | Digits-LD M (MNIST) | 96 px | light strokes on a dark smudged board, chalk-line clutter |
| `graph` | Digits-LD U (UCI 8x8) | 112 px | ink on graph paper (fine grid), ink scribbles |
| `plate` | Digits-LD S (printed) | 128 px | a small house-number plate on a textured wall among blank plates |

Glyphs of the teachers' source parts (`source_<domain>_train` / `_validation`) and of the target
(`labeled` / `unlabeled` / `test`) come from the disjoint Digits-LD source and target parts of the glyph domain.
Everything is seeded; the dataset and each teacher are cached in the output folder (rebuilt when the recorded
build parameters differ).

    python benchmarks/multires/build.py --output_dir runs/multires-ld      # dataset + teachers
    python benchmarks/multires/build.py --output_dir /tmp/x --small --no_teachers   # tiny, for tests
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

VERSION = 1
LABELS = [str(i) for i in range(10)]
DOMAIN_NAMES = ["chalk", "graph", "plate"]
GLYPH_SOURCE = {"chalk": "M", "graph": "U", "plate": "S"}
NATIVE_SIZE = {"chalk": 96, "graph": 112, "plate": 128}
# Per-domain sample counts: teacher source train / validation, target train (labeled + unlabeled) / test.
FULL = {"source_train": 1500, "source_validation": 300, "target_train": 500, "target_test": 200, "labeled_pool": 10}
SMALL = {"source_train": 20, "source_validation": 10, "target_train": 40, "target_test": 10, "labeled_pool": 2}
SEED = 20261202
SPLIT_NAMES = ("source_train", "source_validation", "target_train", "target_test")  # Digits-LD's fixed split

# Small batches: many steps from few images (a from-scratch CNN needs steps more than epochs here).
_TRAINING = {"epochs": 12, "train_images": 960, "batch_size": 16, "lr": 3e-3}
# Teachers: one per domain, all with a downsampling stem so CPU training at 96-128 px stays affordable.
TEACHERS = {
    "chalk": {
        "library": "timm",
        "architecture": "resnet10t",
        "model_args": {"channels": [16, 32, 48, 64], "stem_width": 8},
        **_TRAINING,
    },
    "graph": {"library": "transformers", "model_type": "resnet", **_TRAINING},
    "plate": {
        "library": "timm",
        "architecture": "resnet10t",
        "model_args": {"channels": [16, 32, 64, 80], "stem_width": 8},
        **_TRAINING,
        # A house-number plate among blank ones is the hardest to find: on 960 images x 16 epochs this teacher
        # stayed at 26% validation accuracy; on all 1,500 x 30 it reaches 91%.
        "epochs": 30,
        "train_images": 1500,
    },
}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

logger = logging.getLogger("multires")


# ----------------------------------------------------------------------------------------------- rendering


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    grid = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC))


def _glyph_alpha(rgb32: np.ndarray, height: float, rng: np.random.Generator) -> np.ndarray:
    """A grey Digits-LD digit (M or U) as a tight alpha mask `height` px tall, slightly stretched and rotated."""
    gray = rgb32.astype(np.float32).mean(-1)
    ys, xs = np.nonzero(gray > 40)
    if len(ys):
        gray = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = gray.shape
    new_h = max(4, int(round(height)))
    new_w = max(2, int(round(w * new_h / h * rng.uniform(0.85, 1.15))))
    img = Image.fromarray(gray.clip(0, 255).astype(np.uint8)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    img = img.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR, expand=True)
    return np.asarray(img, dtype=np.float32) / 255.0


def _place(size: int, h: int, w: int, rng: np.random.Generator, margin: int | None = None) -> tuple[int, int]:
    """A random top-left corner; by default anywhere in the central 70% of the canvas (the digit's place)."""
    margin = int(0.15 * size) if margin is None else margin
    return int(rng.integers(margin, max(margin + 1, size - h - margin))), int(
        rng.integers(margin, max(margin + 1, size - w - margin))
    )


def _blend(canvas: np.ndarray, alpha: np.ndarray, colour, y: int, x: int) -> None:
    h, w = alpha.shape
    h, w = min(h, canvas.shape[0] - y), min(w, canvas.shape[1] - x)
    a = alpha[:h, :w, None]
    region = canvas[y : y + h, x : x + w]
    region[:] = region * (1 - a) + np.asarray(colour, dtype=np.float32) * a


def _strokes(size: int, rng: np.random.Generator, n: int, width: tuple[int, int], curvy: bool) -> np.ndarray:
    """An alpha layer of `n` random strokes (straight chalk lines, or curvy scribbles) of digit-like scale."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        x, y = rng.uniform(0, size, 2)
        points = [(x, y)]
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 7)) if curvy else 1):
            angle += rng.uniform(-1.2, 1.2) if curvy else 0.0
            step = rng.uniform(3, 8) if curvy else rng.uniform(6, 22)
            x, y = x + step * np.cos(angle), y + step * np.sin(angle)
            points.append((x, y))
        draw.line(points, fill=int(rng.uniform(110, 255)), width=int(rng.integers(width[0], width[1] + 1)))
    return np.asarray(layer, dtype=np.float32) / 255.0


def _render_chalk(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = NATIVE_SIZE["chalk"]
    base = rng.uniform(25, 70) * np.array([rng.uniform(0.7, 1.0), rng.uniform(0.85, 1.1), rng.uniform(0.7, 1.0)])
    canvas = base + rng.uniform(6, 18) * _smooth(rng, size, int(rng.integers(3, 8)))[..., None]
    smudge = np.clip(_smooth(rng, size, int(rng.integers(4, 9))), 0, None)[..., None]
    canvas = canvas + rng.uniform(10, 35) * smudge  # wiped chalk
    chalk = rng.uniform(200, 250) * np.array([1.0, rng.uniform(0.92, 1.0), rng.uniform(0.85, 1.0)])
    clutter = np.maximum(
        _strokes(size, rng, int(rng.integers(3, 7)), (1, 2), curvy=False),
        _strokes(size, rng, int(rng.integers(1, 3)), (1, 1), curvy=True),
    ) * rng.uniform(0.2, 0.45)
    canvas = canvas * (1 - clutter[..., None]) + chalk * clutter[..., None]
    alpha = _glyph_alpha(glyph, rng.uniform(14, 20), rng) * rng.uniform(0.8, 1.0)
    y, x = _place(size, *alpha.shape, rng)
    _blend(canvas, alpha, chalk, y, x)
    canvas = canvas + rng.normal(0, rng.uniform(2, 7), canvas.shape)
    return canvas.clip(0, 255).astype(np.uint8)


def _render_graph(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = NATIVE_SIZE["graph"]
    paper = rng.uniform(215, 250) * np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.85, 1.0)])
    canvas = np.broadcast_to(paper, (size, size, 3)).astype(np.float32).copy()
    canvas += rng.uniform(2, 8) * _smooth(rng, size, int(rng.integers(3, 7)))[..., None]
    pitch, offset = rng.uniform(5.5, 8.5), rng.uniform(0, 8, 2)
    coords = np.arange(size, dtype=np.float32)
    lines_y = (np.abs(((coords - offset[0]) % pitch) - pitch / 2) > pitch / 2 - 0.6).astype(np.float32)
    lines_x = (np.abs(((coords - offset[1]) % pitch) - pitch / 2) > pitch / 2 - 0.6).astype(np.float32)
    grid = np.maximum(lines_y[:, None], lines_x[None, :]) * rng.uniform(0.25, 0.5)
    grid_colour = np.array([rng.uniform(90, 160), rng.uniform(150, 200), rng.uniform(200, 240)])
    canvas = canvas * (1 - grid[..., None]) + grid_colour * grid[..., None]
    ink = np.array([rng.uniform(10, 60), rng.uniform(10, 60), rng.uniform(60, 160)])
    scribbles = _strokes(size, rng, int(rng.integers(2, 5)), (1, 2), curvy=True) * rng.uniform(0.3, 0.6)
    canvas = canvas * (1 - scribbles[..., None]) + ink * scribbles[..., None]
    alpha = _glyph_alpha(glyph, rng.uniform(16, 22), rng)
    y, x = _place(size, *alpha.shape, rng)
    _blend(canvas, alpha, ink, y, x)
    canvas = canvas + rng.normal(0, rng.uniform(2, 6), canvas.shape)
    return canvas.clip(0, 255).astype(np.uint8)


def _render_plate(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = NATIVE_SIZE["plate"]
    wall = rng.uniform(60, 200, 3)
    canvas = wall + rng.uniform(10, 30) * _smooth(rng, size, int(rng.integers(4, 10)))[..., None]
    canvas = canvas + rng.uniform(5, 15) * _smooth(rng, size, 32)[..., None]  # fine texture
    for _ in range(int(rng.integers(1, 4))):  # blank plates and fragments, same scale as the real one
        h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
        y, x = _place(size, h, w, rng, margin=0)
        colour = rng.uniform(0, 255, 3)
        canvas[y : y + h, x : x + w] = colour + rng.normal(0, 6, (h, w, 3))
        if rng.random() < 0.5:  # a bar or two on it, stroke-like
            bar_y = int(rng.integers(y, y + h))
            canvas[bar_y : bar_y + 2, x : x + w] = 255 - colour
    side = int(round(rng.uniform(28, 34)))
    plate = np.asarray(Image.fromarray(glyph).resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32)
    y, x = _place(size, side, side, rng)
    canvas[y : y + side, x : x + side] = plate
    pil = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.6)))
    out = np.asarray(pil, dtype=np.float32) + rng.normal(0, rng.uniform(2, 6), (size, size, 3))
    return out.clip(0, 255).astype(np.uint8)


RENDER = {"chalk": _render_chalk, "graph": _render_graph, "plate": _render_plate}


def _renderer_hash() -> str:
    """A digest of the rendering code, so an edit of it never reuses a stale cached dataset."""
    import hashlib
    import inspect

    parts = [_smooth, _glyph_alpha, _place, _blend, _strokes, *RENDER.values(), render, _take]
    return hashlib.sha256("".join(inspect.getsource(f) for f in parts).encode()).hexdigest()[:16]


def render(domain: str, glyph: np.ndarray, seed: int, index: int) -> np.ndarray:
    """One sample of `domain` (uint8 HxWx3 at the domain's native size); depends only on (seed, domain, index)."""
    rng = np.random.default_rng([seed, DOMAIN_NAMES.index(domain), index])
    return RENDER[domain](glyph, rng)


# ----------------------------------------------------------------------------------------------- dataset


def _png(rgb: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _glyphs(code: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A Digits-LD domain as (32 px RGB images, labels) and its fixed source/target split indices."""
    from hf_mrl.data.digits_ld import _split_indices, load_domain

    ds = load_domain(code).with_format("numpy")
    return np.asarray(ds["image"]), np.asarray(ds["label"], dtype=np.int64), _split_indices(code)


def _take(idx: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` draws from `idx`, class-balanced, cycling through the glyphs when `n` exceeds them (new canvases)."""
    per_class = [rng.permutation(idx[labels[idx] == c]) for c in range(len(LABELS))]
    out = [pc[i % len(pc)] for i in range(-(-n // len(LABELS))) for pc in per_class][:n]
    return np.asarray(out, dtype=np.int64)


def _features():
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=LABELS),
            "domain": datasets.ClassLabel(names=DOMAIN_NAMES),
        }
    )


def build_dataset(
    output_dir: str | Path, sizes: dict | None = None, seed: int = SEED, force: bool = False, glyphs=None
) -> Path:
    """Write (or reuse) the benchmark as a `DatasetDict` under `output_dir/data`; returns that folder.

    Splits: `labeled` (a pool of `labeled_pool` samples per class and domain, from which runs draw their labels),
    `unlabeled` (the rest of target-train), `test`, and per domain `source_<domain>_train` / `_validation` (for
    that domain's teacher only). Columns: `image` (PNG at the domain's native size), `label` (`ClassLabel`),
    `domain` (`ClassLabel` `chalk`/`graph`/`plate`, evaluation only). `glyphs` replaces the Digits-LD glyph
    source (a function of the Digits-LD domain code, as `_glyphs`; tests), and is then never cached.
    """
    import datasets

    sizes = dict(sizes or FULL)
    out = Path(output_dir) / "data"
    info = {
        "version": VERSION,
        "seed": seed,
        "sizes": sizes,
        "native_size": NATIVE_SIZE,
        "glyphs": GLYPH_SOURCE,
        "renderer": _renderer_hash(),
    }
    info_file = Path(output_dir) / "data_info.json"
    if glyphs is not None:
        force, info["glyphs"] = True, "custom"
    if not force and info_file.is_file() and json.loads(info_file.read_text()) == info and out.is_dir():
        logger.info("Reusing the dataset in %s", out)
        return out
    rows: dict[str, dict[str, list]] = {}

    def add(split: str, images, labels, domain: str) -> None:
        part = rows.setdefault(split, {"image": [], "label": [], "domain": []})
        part["image"] += [_png(im) for im in images]
        part["label"] += [int(y) for y in labels]
        part["domain"] += [DOMAIN_NAMES.index(domain)] * len(labels)

    start = time.time()
    for d, domain in enumerate(DOMAIN_NAMES):
        images32, labels, split = (glyphs or _glyphs)(GLYPH_SOURCE[domain])
        rng = np.random.default_rng([seed, d, 0])
        parts = {name: _take(split[name], labels, sizes[name], rng) for name in SPLIT_NAMES}
        if len(set(parts["target_train"].tolist())) < len(parts["target_train"]):
            raise ValueError(f"Domain {domain}: asked for more target-train samples than glyphs.")
        counter = 0
        rendered = {}
        for name, idx in parts.items():
            rendered[name] = [render(domain, images32[i], seed, counter + j) for j, i in enumerate(idx)]
            counter += len(idx)
        add(f"source_{domain}_train", rendered["source_train"], labels[parts["source_train"]], domain)
        add(f"source_{domain}_validation", rendered["source_validation"], labels[parts["source_validation"]], domain)
        y = labels[parts["target_train"]]
        pooled = np.zeros(len(y), dtype=bool)
        for c in range(len(LABELS)):  # the first draws of each class (already shuffled) form the labeled pool
            pooled[np.flatnonzero(y == c)[: sizes["labeled_pool"]]] = True
        images = rendered["target_train"]
        add("labeled", [images[i] for i in np.flatnonzero(pooled)], y[pooled], domain)
        add("unlabeled", [images[i] for i in np.flatnonzero(~pooled)], y[~pooled], domain)
        add("test", rendered["target_test"], labels[parts["target_test"]], domain)
    dd = datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(cols, features=_features()) for split, cols in rows.items()}
    )
    from hf_mrl.utils import atomic_dir

    with atomic_dir(out) as tmp:
        dd.save_to_disk(str(tmp))
    info_file.write_text(json.dumps(info, indent=2))
    logger.info("Built the dataset in %.0f s: %s", time.time() - start, {k: len(v) for k, v in dd.items()})
    return out


# ----------------------------------------------------------------------------------------------- teachers


def _tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A single-domain split as uint8 (N, 3, S, S) at its native size, and labels."""
    raw = split.with_format("numpy")
    x = torch.from_numpy(np.stack([np.asarray(im) for im in raw["image"]])).permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(np.asarray(raw["label"], dtype=np.int64))


def make_teacher(domain: str):
    """A fresh teacher for `domain` at its native size: (model, native preprocessing of uint8 tensors, saver)."""
    spec, size = TEACHERS[domain], NATIVE_SIZE[domain]
    if spec["library"] == "timm":
        import timm

        model = timm.create_model(spec["architecture"], num_classes=len(LABELS), **spec["model_args"])
        mean, std = _IMAGENET
        model.pretrained_cfg = {
            **model.pretrained_cfg,
            "input_size": (3, size, size),
            "test_input_size": (3, size, size),
            "crop_pct": 1.0,
            "test_crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": mean,
            "std": std,
            "label_names": list(LABELS),
        }

        def save(folder: Path) -> None:
            timm.models.save_for_hf(
                model,
                str(folder),
                model_config={"label_names": list(LABELS)},
                model_args=spec["model_args"],
                safe_serialization=True,
            )

    else:
        from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

        config = ResNetConfig(
            num_channels=3,
            embedding_size=16,
            hidden_sizes=[24, 48, 96],
            depths=[1, 1, 1],
            layer_type="basic",
            id2label=dict(enumerate(LABELS)),
            label2id={n: i for i, n in enumerate(LABELS)},
        )
        model = ResNetForImageClassification(config)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        processor = ViTImageProcessor(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std))

        def save(folder: Path) -> None:
            model.save_pretrained(folder)
            processor.save_pretrained(folder)

    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    def preprocess(images: torch.Tensor) -> torch.Tensor:  # native-size images: no resize, as its processor does
        return (images.float() / 255.0 - m) / s

    return model, preprocess, save


@torch.no_grad()
def _accuracy(model, preprocess, x, y) -> float:
    outs = [model(preprocess(x[i : i + 128])) for i in range(0, len(x), 128)]
    logits = torch.cat([getattr(o, "logits", o) for o in outs])
    return (logits.argmax(-1) == y).float().mean().item()


def _card(domain: str, spec: dict, acc: float) -> str:
    size = NATIVE_SIZE[domain]
    return (
        f"---\nlibrary_name: {spec['library']}\ntags:\n- image-classification\n- multires-ld\n- hf_mrl-teacher\n---\n\n"
        f"# MultiRes-LD teacher for domain `{domain}` ({size} px)\n\n"
        f"A small {spec['library']} digit classifier trained at {size}x{size} only on the source part of the "
        f"MultiRes-LD domain `{domain}` (built by `benchmarks/multires/build.py`). Validation accuracy on that "
        f"domain at its native size: {acc:.4f}. One teacher of an hf_mrl pool; weak on the other domains by design.\n"
    )


def _train_teacher(root: Path, domain: str, spec: dict, expected: dict, seed: int, threads: int | None) -> float:
    """Train one teacher on its domain's source part at the native size and save it; returns validation accuracy."""
    import datasets

    from hf_mrl.pool.builder import train_classifier
    from hf_mrl.utils import atomic_dir

    if threads:
        torch.set_num_threads(threads)
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {domain} %(message)s", stream=sys.stdout)
    data = datasets.load_from_disk(str(root / "data"))
    source = data[f"source_{domain}_train"]  # class-balanced in order: its first rows are too
    x_tr, y_tr = _tensors(source.select(range(min(len(source), spec.get("train_images", len(source))))))
    x_va, y_va = _tensors(data[f"source_{domain}_validation"])
    torch.manual_seed(seed)
    model, preprocess, save = make_teacher(domain)
    start = time.time()
    logger.info(
        "Training the %s teacher of %s at %d px on %d images", spec["library"], domain, x_tr.shape[-1], len(x_tr)
    )
    train_classifier(
        model, preprocess, x_tr, y_tr, spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"], seed=seed
    )
    acc = _accuracy(model, preprocess, x_va, y_va)
    elapsed = time.time() - start
    logger.info("Teacher %s: validation accuracy %.4f (%.0f s)", domain, acc, elapsed)
    folder = root / "teachers" / domain
    with atomic_dir(folder) as tmp:
        save(tmp)
        (tmp / "README.md").write_text(_card(domain, spec, acc))
        info = {**expected, "val_accuracy": acc, "train_seconds": round(elapsed, 1)}
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2))
    return acc


def build_teachers(output_dir: str | Path, seed: int = 0, epochs: dict | None = None, workers: int = 1) -> Path:
    """Train (or reuse) one teacher per domain under `output_dir/teachers/<domain>`; returns `hub-ids.txt`.

    `workers` > 1 trains that many teachers side by side, one process (one torch thread) each.
    """
    root = Path(output_dir)
    data_info = json.loads((root / "data_info.json").read_text())
    # What a teacher's training data depends on (not the target-side sizes).
    data_info["sizes"] = {k: data_info["sizes"][k] for k in ("source_train", "source_validation")}
    names, todo = [], []
    for domain in DOMAIN_NAMES:
        spec = {**TEACHERS[domain], "epochs": (epochs or {}).get(domain, TEACHERS[domain]["epochs"])}
        folder = root / "teachers" / domain
        expected = {"version": VERSION, "domain": domain, "spec": spec, "seed": seed, "data": data_info}
        info_file = folder / "build_info.json"
        recorded = json.loads(info_file.read_text()) if info_file.is_file() else {}
        names.append(f"teachers/{domain}")
        if all(recorded.get(k) == v for k, v in expected.items()):
            logger.info("Reusing teacher %s", folder)
        else:
            todo.append((root, domain, spec, expected, seed))
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as ex:
            for future in [ex.submit(_train_teacher, *job, 1) for job in todo]:
                future.result()
    else:
        for job in todo:
            _train_teacher(*job, None)
    pool = root / "hub-ids.txt"
    pool.write_text(
        "# MultiRes-LD teachers, one per latent domain (paths relative to this file)\n" + "\n".join(names) + "\n"
    )
    return pool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/multires-ld")
    parser.add_argument("--small", action="store_true", help="a tiny dataset (tests)")
    parser.add_argument("--no_teachers", action="store_true")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the rendering")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3, help="teachers trained side by side (1 thread each)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    build_dataset(args.output_dir, SMALL if args.small else FULL, seed=args.seed)
    if not args.no_teachers:
        pool = build_teachers(args.output_dir, workers=args.workers)
        print(f"Pool file: {pool}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
