"""Hostile teachers and pools: real Hub-format checkpoints that a `ModelPool` loads like any other teacher.

The robustness report (`benchmarks/robustness.py`) trains MRL on pools that cannot help, or that actively mislead, and
checks that the delivered student is never worse than the supervised-only one. Every hostile teacher here is a
folder with config.json + model.safetensors (+ preprocessor_config.json) + README.md, loaded by the same timm /
transformers code paths as a Hub teacher; nothing is faked at the pool level.

Kinds of teacher (`role` in each folder's `hostile_info.json`; a folder without one is an `honest` teacher):

- `random`: a digit teacher's architecture, freshly initialised (seeded), whose classifier is rescaled so that its
  logits have a chosen spread on digit images: confident, input-dependent and meaningless (a "random-logit" teacher).
- `permuted`: a good Digits-LD teacher whose label names are permuted by a derangement (weights untouched): the pool
  maps its outputs by name, so every correct answer of the teacher lands on a wrong class.
- `unrelated`: a tiny timm classifier trained for a few seconds on a synthetic 10-class task that has nothing to do
  with digits (grating orientation, grating frequency, colour hue), saved with the digit names as its labels.
- `duplicate`: a byte-for-byte copy of an honest teacher in another folder (the pool refuses the same id twice).
- `swapped`: a good Digits-LD teacher whose label names are cycled among `k` of the 10 classes only (`swap<k>-<domain>`;
  the k classes are the first k of one seeded class order, so `swap6` errs on a superset of `swap5`'s classes): right
  on the other 10 - k classes, confidently wrong on those k. The harm grows with k; the power curve of the guard uses
  pools of such teachers (`swap-<k>`: all three honest teachers swapped on the same k classes).

Pools (`HOSTILE_POOLS`): `random`, `permuted` and `unrelated` hold only hostile teachers (no good teacher to fall
back on: the strictest test of the never-worse mechanisms); `one-good` hides one good teacher (teacher-S) among six
bad ones; `duplicates` is the honest pool with two extra copies of teacher-M.

    pools = build_hostile_pools()  # {"honest": Path, "random": Path, ...}: pool files, built once and cached
    pool = ModelPool.from_file(pools["permuted"], label_names=[str(d) for d in range(10)])
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from hf_mrl.utils import atomic_dir, atomic_write_text, cache_root, torch_threads

__all__ = [
    "BAD_ROLES",
    "DIGITS",
    "HOSTILE_POOLS",
    "SWAP_LEVELS",
    "UNRELATED_TASKS",
    "build_hostile_pools",
    "default_hostile_dir",
    "derangement",
    "make_duplicate_teacher",
    "make_permuted_teacher",
    "make_random_teacher",
    "make_unrelated_teacher",
    "swap_permutation",
    "synthetic_task",
    "teacher_role",
]

logger = logging.getLogger(__name__)

HOSTILE_VERSION = 1
INFO_FILE = "hostile_info.json"
DIGITS = [str(i) for i in range(10)]
ROLES = ("honest", "random", "permuted", "unrelated", "duplicate", "swapped")
BAD_ROLES = ("random", "permuted", "unrelated")

# task -> the timm architecture of its teacher
UNRELATED_TASKS = {"orientation": "test_efficientnet", "frequency": "test_resnet", "hue": "test_convnext"}

# pool name -> teacher folder names; `teacher-X` are the honest Digits-LD teachers (X a domain code).
HOSTILE_POOLS = {
    "random": ["random-M", "random-U", "random-S"],
    "permuted": ["permuted-M", "permuted-U", "permuted-S"],
    "unrelated": ["unrelated-orientation", "unrelated-frequency", "unrelated-hue"],
    "one-good": [
        "teacher-S",
        "random-M",
        "random-U",
        "permuted-M",
        "permuted-U",
        "unrelated-orientation",
        "unrelated-frequency",
    ],
    "duplicates": ["teacher-M", "duplicate-M-1", "duplicate-M-2", "teacher-U", "teacher-S"],
}
# Graded harm: the honest pool with every teacher's labels cycled among the same k classes (see `swap_permutation`).
SWAP_LEVELS = (4, 5, 6, 7, 8)
HOSTILE_POOLS.update({f"swap-{k}": [f"swap{k}-M", f"swap{k}-U", f"swap{k}-S"] for k in SWAP_LEVELS})


def default_hostile_dir() -> Path:
    return cache_root() / f"robustness_pools_v{HOSTILE_VERSION}"


def teacher_role(folder: str | os.PathLike) -> str:
    """`honest` for an ordinary teacher folder, else the role recorded by the builder that made it."""
    info = Path(folder) / INFO_FILE
    if not info.is_file():
        return "honest"
    return json.loads(info.read_text())["role"]


# ------------------------------------------------------------------------------------------------ helpers


def _source_hash(folder: Path) -> str:
    """Hash of what shapes a teacher's outputs: weights and the (pre)processing configs."""
    from hf_mrl.pool.model_pool import _files_hash, _weight_files

    files = _weight_files(folder) + [folder / f for f in ("config.json", "preprocessor_config.json")]
    return _files_hash([f for f in files if f.is_file()])


def _is_built(folder: Path, expected: dict) -> bool:
    info = folder / INFO_FILE
    try:
        recorded = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(k) == v for k, v in expected.items())


def _write_info(folder: Path, info: dict) -> None:
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2))


def _card(title: str, body: str) -> str:
    return (
        "---\ntags:\n- image-classification\n- hf_mrl-hostile-teacher\n---\n\n"
        f"# {title}\n\n{body}\n\nBuilt by `benchmarks/hostile.py` for the robustness report (`benchmarks/robustness.py`): "
        "**a deliberately bad teacher, do not use it for anything else.**\n"
    )


def _classifier(model: torch.nn.Module, num_classes: int) -> torch.nn.Linear:
    """The output layer: the last `nn.Linear` with `num_classes` outputs."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ValueError(f"No linear classifier with {num_classes} outputs in {type(model).__name__}.")
    return heads[-1]


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) without fixed points (every class moves)."""
    if n < 2:
        raise ValueError(f"A derangement needs n >= 2; got {n}.")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm.tolist()


def swap_permutation(n: int, k: int, seed: int = 0) -> list[int]:
    """A permutation of range(n) that cycles the first `k` classes of a seeded class order and fixes the others.

    Nested in k: the classes moved at k are among those moved at k + 1 (same `seed`).
    """
    if not 2 <= k <= n:
        raise ValueError(f"k must be in [2, {n}]; got {k}.")
    order = np.random.default_rng(seed).permutation(n).tolist()[:k]
    perm = list(range(n))
    for i, c in enumerate(order):
        perm[c] = order[(i + 1) % k]
    return perm


# ------------------------------------------------------------------------------------------------ builders


def make_random_teacher(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    calibration_images: torch.Tensor | None = None,
    logit_std: float = 3.0,
) -> Path:
    """A randomly initialised teacher of `source`'s architecture, labels and preprocessing.

    The classifier gets random weights, rescaled so that on `calibration_images` (uint8 (N, 3, H, W); random noise
    images when None) every class logit has mean 0 and standard deviation `logit_std`: the teacher is confident and
    its answer changes with the input, but it knows nothing (chance accuracy). Nothing of `source`'s training is kept.
    """
    with torch_threads(1):  # the same seed gives the same weights whatever the core count
        return _make_random_teacher(source, out_dir, seed, calibration_images, logit_std)


def _make_random_teacher(source, out_dir, seed, calibration_images, logit_std) -> Path:
    from hf_mrl.pool.model_pool import Teacher, _detect_library

    source, out_dir = Path(source), Path(out_dir)
    library, config = _detect_library(source, str(source))
    reference = Teacher.load(str(source))  # its preprocessing and labels; its weights are not used
    torch.manual_seed(seed)
    if library == "timm":
        import timm

        model = timm.create_model(f"local-dir:{source}", pretrained=False)
    else:
        from transformers import AutoConfig, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(source))
    model.eval()
    if calibration_images is None:
        gen = torch.Generator().manual_seed(seed)
        calibration_images = torch.randint(0, 256, (256, 3, 32, 32), generator=gen, dtype=torch.uint8)
    head = _classifier(model, len(reference.label_names))
    feats = []
    hook = head.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().flatten(1)))
    with torch.no_grad():
        for i in range(0, len(calibration_images), 256):
            model(reference.preprocess(calibration_images[i : i + 256]))
    hook.remove()
    f = torch.cat(feats).double()  # (N, d): what the classifier reads
    gen = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(head.out_features, head.in_features, generator=gen, dtype=torch.float64)
    z = f @ w.T  # (N, C)
    w = w * (logit_std / z.std(0).clamp_min(1e-6))[:, None]
    b = -(f @ w.T).mean(0)
    with torch.no_grad():
        head.weight.copy_(w.float())
        head.bias.copy_(b.float())
    with atomic_dir(out_dir) as tmp:
        if library == "timm":
            import timm

            timm.models.save_for_hf(
                model,
                str(tmp),
                model_config={"label_names": list(reference.label_names)},
                model_args=config.get("model_args"),
                safe_serialization=True,
            )
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            if (source / "preprocessor_config.json").is_file():
                shutil.copy2(source / "preprocessor_config.json", tmp / "preprocessor_config.json")
        (tmp / "README.md").write_text(
            _card(
                "Random-logit teacher",
                f"The architecture of `{source.name}` with random weights (seed {seed}); classifier rescaled to "
                f"logits of standard deviation {logit_std} per class on {len(calibration_images)} calibration "
                "images. Confident, input-dependent, and at chance accuracy.",
            )
        )
        _write_info(
            tmp,
            {
                "version": HOSTILE_VERSION,
                "role": "random",
                "source": source.name,
                "source_hash": _source_hash(source),
                "seed": seed,
                "logit_std": logit_std,
                "calibration": _fingerprint(calibration_images),
            },
        )
    return out_dir


def make_permuted_teacher(
    source: str | os.PathLike, out_dir: str | os.PathLike, permutation: Sequence[int], role: str = "permuted"
) -> Path:
    """A copy of `source` whose output `i` is renamed `label_names[permutation[i]]` (weights unchanged).

    When `source` says class d, the pool now reads class `permutation[d]`; `inverse[c]` for the pool's class c
    recovers the teacher's answer, so its predictions are as good as before up to that permutation.
    """
    source, out_dir = Path(source), Path(out_dir)
    config = json.loads((source / "config.json").read_text())
    perm = [int(p) for p in permutation]
    if sorted(perm) != list(range(len(perm))):
        raise ValueError(f"{permutation} is not a permutation of range({len(perm)}).")
    with atomic_dir(out_dir) as tmp:
        for f in source.iterdir():
            if f.is_file() and f.name not in ("build_info.json", INFO_FILE, "README.md"):
                shutil.copy2(f, tmp / f.name)
        if "id2label" in config:  # transformers
            names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        else:  # timm
            names = config.get("label_names") or config["pretrained_cfg"]["label_names"]
        if len(names) != len(perm):
            raise ValueError(f"{source} has {len(names)} labels; the permutation has {len(perm)}.")
        new = [names[perm[i]] for i in range(len(perm))]
        if "id2label" in config:
            config["id2label"] = {str(i): n for i, n in enumerate(new)}
            config["label2id"] = {n: i for i, n in enumerate(new)}
        else:
            config["label_names"] = new
            if "label_names" in config.get("pretrained_cfg", {}):
                config["pretrained_cfg"]["label_names"] = new
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "README.md").write_text(
            _card(
                "Label-permuted teacher",
                f"The weights of `{source.name}` with its label names permuted: output i, which means `{names[0]}`.."
                f"`{names[-1]}` i, is now called `names[perm[i]]`, perm = {perm}. Every answer it gets right lands "
                "on a wrong class.",
            )
        )
        _write_info(
            tmp,
            {
                "version": HOSTILE_VERSION,
                "role": role,
                "source": source.name,
                "source_hash": _source_hash(source),
                "permutation": perm,
            },
        )
    return out_dir


def make_duplicate_teacher(source: str | os.PathLike, out_dir: str | os.PathLike, copy: int = 1) -> Path:
    """A byte-for-byte copy of `source` in another folder, so a pool can hold the same teacher twice."""
    source, out_dir = Path(source), Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for f in source.iterdir():
            if f.is_file() and f.name != INFO_FILE:
                shutil.copy2(f, tmp / f.name)
        _write_info(
            tmp,
            {
                "version": HOSTILE_VERSION,
                "role": "duplicate",
                "source": source.name,
                "source_hash": _source_hash(source),
                "copy": copy,
            },
        )
    return out_dir


def synthetic_task(task: str, n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A 10-class image task unrelated to digits: uint8 images (n, 3, size, size) and labels (n,).

    - `orientation`: a sinusoidal grating whose angle is class k * 18 degrees (+-3);
    - `frequency`: a grating of period 3 * 2 ** (k / 3) pixels (3 to 24 at 32 x 32; +-5%), any angle;
    - `hue`: a textured colour field whose hue is in the k-th tenth of the colour circle.
    Random phase, colours, contrast and pixel noise throughout; seeded.
    """
    if task not in UNRELATED_TASKS:
        raise ValueError(f"Unknown task {task!r}; choose from {list(UNRELATED_TASKS)}.")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size  # (size, size)
    if task == "orientation":
        theta = (labels + rng.uniform(-1 / 6, 1 / 6, n)) * np.pi / 10
        freq = rng.uniform(2.0, 5.0, n)
    elif task == "frequency":
        theta = rng.uniform(0, np.pi, n)
        freq = size / (3.0 * 2.0 ** (labels / 3) * rng.uniform(0.95, 1.05, n))  # cycles per image
    if task in ("orientation", "frequency"):
        phase = rng.uniform(0, 2 * np.pi, n)
        proj = xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None]
        wave = (1 + np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])) / 2  # (n, s, s) in [0, 1]
        c1 = rng.uniform(0, 255, (n, 3))
        c2 = np.clip(255 - c1 + rng.uniform(-40, 40, (n, 3)), 0, 255)  # a contrasting second colour
        img = c1[:, :, None, None] * wave[:, None] + c2[:, :, None, None] * (1 - wave[:, None])
    else:
        hue = (labels + rng.uniform(0.1, 0.9, n)) / 10
        sat, val = rng.uniform(0.6, 1, n), rng.uniform(0.6, 1, n)
        rgb = np.array([colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hue, sat, val, strict=True)])
        cells = rng.uniform(0.6, 1.0, (n, 1, 4, 4))
        texture = np.kron(cells, np.ones((1, 1, size // 4, size // 4)))  # (n, 1, s, s) blocky brightness
        img = 255 * rgb[:, :, None, None] * texture
    img = img + rng.normal(0, 10, img.shape)
    images = torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8))
    return images, torch.from_numpy(labels.astype(np.int64))


def make_unrelated_teacher(
    task: str,
    out_dir: str | os.PathLike,
    seed: int = 0,
    architecture: str | None = None,
    num_train: int = 2000,
    epochs: int = 3,
) -> Path:
    """A tiny timm classifier trained on `synthetic_task(task)`, saved with the digit names as its labels.

    Class k of the task is called digit `k`: a pool maps its outputs onto the digit classes by name, so the teacher
    answers digit questions with grating orientations (or frequencies, or hues). Its accuracy on a held-out part of
    its own task is recorded in `hostile_info.json`.
    """
    import timm

    from hf_mrl.pool.builder import _accuracy, make_timm_classifier, train_classifier

    out_dir = Path(out_dir)
    architecture = architecture or UNRELATED_TASKS[task]
    images, labels = synthetic_task(task, num_train + 500, seed=seed)
    with torch_threads(1):  # the same seed gives the same weights whatever the core count
        torch.manual_seed(seed)
        model, preprocess = make_timm_classifier(architecture)
        train_classifier(model, preprocess, images[:num_train], labels[:num_train], epochs, seed=seed)
        acc = _accuracy(model, preprocess, images[num_train:], labels[num_train:])
    with atomic_dir(out_dir) as tmp:
        timm.models.save_for_hf(model, str(tmp), model_config={"label_names": DIGITS}, safe_serialization=True)
        (tmp / "README.md").write_text(
            _card(
                f"Unrelated-task teacher ({task})",
                f"A timm `{architecture}` trained on a synthetic 10-class `{task}` task (held-out accuracy "
                f"{acc:.3f}), whose class k is named digit `{DIGITS[0]}`..`{DIGITS[-1]}` by position.",
            )
        )
        _write_info(tmp, _unrelated_info(task, seed, architecture, num_train, epochs) | {"task_accuracy": acc})
    return out_dir


def _unrelated_info(task: str, seed: int, architecture: str, num_train: int, epochs: int) -> dict:
    return {
        "version": HOSTILE_VERSION,
        "role": "unrelated",
        "task": task,
        "seed": seed,
        "architecture": architecture,
        "num_train": num_train,
        "epochs": epochs,
    }


def _fingerprint(images: torch.Tensor) -> str:
    from hf_mrl.pool.cache import fingerprint

    return fingerprint(images)


# ------------------------------------------------------------------------------------------------ the pools


def _honest_teachers(honest: Mapping[str, str | os.PathLike] | str | os.PathLike | None) -> dict[str, Path]:
    """Domain code -> folder of each honest teacher (folders named `teacher-<code>` in a pool file)."""
    if isinstance(honest, Mapping):
        return {str(k): Path(v) for k, v in honest.items()}
    from hf_mrl.pool.model_pool import parse_pool_file

    if honest is None:
        from hf_mrl.pool.builder import build_digits_pool

        honest = build_digits_pool()
    out = {}
    for entry in parse_pool_file(honest):
        name = Path(entry).name
        if not (os.path.isdir(entry) and name.startswith("teacher-")):
            raise ValueError(f"Honest pool entry {entry!r} is not a local `teacher-<domain>` folder.")
        out[name.removeprefix("teacher-")] = Path(entry)
    return out


def _digits_calibration(n: int = 600, seed: int = 0) -> torch.Tensor:
    """A seeded sample of Digits-LD source images (every domain): what the random teachers are calibrated on."""
    from hf_mrl.pool.builder import _source_tensors

    gen = torch.Generator().manual_seed(seed)
    parts = []
    for domain in "MUS":
        (images, _), _ = _source_tensors(domain)
        parts.append(images[torch.randperm(len(images), generator=gen)[: n // 3]])
    return torch.cat(parts)


def _write_pool_file(path: Path, folders: Sequence[Path], title: str) -> Path:
    lines = [f"# {title} (paths relative to this file)"]
    lines += [os.path.relpath(f, path.parent) for f in folders]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _sub_seed(seed: int, tag: str) -> int:
    """A distinct, stable seed per teacher."""
    return 1000 * seed + zlib.crc32(tag.encode()) % 1000


def build_hostile_pools(
    output_dir: str | os.PathLike | None = None,
    honest: Mapping[str, str | os.PathLike] | str | os.PathLike | None = None,
    seed: int = 0,
    calibration_images: torch.Tensor | None = None,
    unrelated: dict | None = None,
    pools: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Build (or reuse) every hostile teacher and write one pool file per pool; returns {pool name: pool file}.

    Args:
        output_dir: where the teachers and `pool-<name>.txt` files go (`$HF_MRL_CACHE/robustness_pools_v1`).
        honest: the honest teachers: a pool file of `teacher-<domain>` folders, or {domain: folder}; None builds (or
            reuses) the Digits-LD pool. "honest" in the result is that pool file (or one written for the mapping).
        seed: seeds the random weights, the derangements and the unrelated tasks.
        calibration_images: what the random teachers' logits are scaled on; None: Digits-LD source images.
        unrelated: `make_unrelated_teacher` options (`num_train`, `epochs`) for every unrelated teacher.
        pools: which hostile pools to build (default: all of `HOSTILE_POOLS`).

    A teacher whose `hostile_info.json` matches what would be built (including a hash of its source teacher's
    weights) is reused, so a second call trains nothing.
    """
    out = Path(output_dir) if output_dir is not None else default_hostile_dir()
    out.mkdir(parents=True, exist_ok=True)
    wanted = list(pools) if pools is not None else list(HOSTILE_POOLS)
    unknown = sorted(set(wanted) - set(HOSTILE_POOLS))
    if unknown:
        raise ValueError(f"Unknown hostile pools {unknown}; choose from {list(HOSTILE_POOLS)}.")
    if honest is None:
        from hf_mrl.pool.builder import build_digits_pool

        honest = build_digits_pool()
    teachers = _honest_teachers(honest)
    if isinstance(honest, Mapping):
        honest_file = _write_pool_file(out / "pool-honest.txt", list(teachers.values()), "Honest teachers")
    else:
        honest_file = Path(honest)
    options = {"num_train": 2000, "epochs": 3, **(unrelated or {})}
    folders: dict[str, Path] = {f"teacher-{code}": path for code, path in teachers.items()}
    calibration = None
    for name in sorted({n for p in wanted for n in HOSTILE_POOLS[p]} - set(folders)):
        kind, _, arg = name.partition("-")
        folder = out / name
        code = arg.partition("-")[0]
        if kind.startswith("swap"):
            kind, code = "swapped", arg
        if kind in ("random", "permuted", "duplicate", "swapped") and code not in teachers:
            raise ValueError(f"Teacher {name!r} needs the honest teacher `teacher-{code}`; have {sorted(teachers)}.")
        if kind == "random":
            if calibration is None:
                calibration = calibration_images if calibration_images is not None else _digits_calibration()
            expected = {
                "version": HOSTILE_VERSION,
                "role": "random",
                "source_hash": _source_hash(teachers[code]),
                "seed": _sub_seed(seed, name),
                "calibration": _fingerprint(calibration),
            }
            if not _is_built(folder, expected):
                logger.info("Building random-logit teacher %s", name)
                make_random_teacher(teachers[code], folder, seed=expected["seed"], calibration_images=calibration)
        elif kind == "permuted":
            perm = derangement(10, seed=_sub_seed(seed, name))
            expected = {
                "version": HOSTILE_VERSION,
                "role": "permuted",
                "source_hash": _source_hash(teachers[code]),
                "permutation": perm,
            }
            if not _is_built(folder, expected):
                logger.info("Building label-permuted teacher %s", name)
                make_permuted_teacher(teachers[code], folder, perm)
        elif kind == "swapped":
            perm = swap_permutation(10, int(name.partition("-")[0].removeprefix("swap")), seed=seed)
            expected = {
                "version": HOSTILE_VERSION,
                "role": "swapped",
                "source_hash": _source_hash(teachers[code]),
                "permutation": perm,
            }
            if not _is_built(folder, expected):
                logger.info("Building label-swapped teacher %s", name)
                make_permuted_teacher(teachers[code], folder, perm, role="swapped")
        elif kind == "duplicate":
            copy = int(arg.partition("-")[2] or 1)
            expected = {
                "version": HOSTILE_VERSION,
                "role": "duplicate",
                "source_hash": _source_hash(teachers[code]),
                "copy": copy,
            }
            if not _is_built(folder, expected):
                logger.info("Building duplicate teacher %s", name)
                make_duplicate_teacher(teachers[code], folder, copy=copy)
        elif kind == "unrelated" and arg in UNRELATED_TASKS:
            expected = _unrelated_info(arg, seed, UNRELATED_TASKS[arg], options["num_train"], options["epochs"])
            if not _is_built(folder, expected):
                logger.info("Training unrelated-task teacher %s", name)
                make_unrelated_teacher(arg, folder, seed=seed, **options)
        else:
            raise ValueError(f"Teacher {name!r} of HOSTILE_POOLS: unknown kind.")
        folders[name] = folder
    result = {"honest": honest_file}
    for p in wanted:
        result[p] = _write_pool_file(out / f"pool-{p}.txt", [folders[n] for n in HOSTILE_POOLS[p]], f"{p} pool")
    return result
