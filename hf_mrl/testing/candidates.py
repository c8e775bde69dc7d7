"""A population of Hub image classifiers to select teachers from: Digits-LD experts of uneven quality and the junk
a real Hub search returns.

Every candidate is derived from the three Digits-LD teachers of :func:`hf_mrl.pool.builder.build_digits_pool`
without training: Gaussian noise added to the weights at several strengths (relative to each tensor's spread) makes
experts of every quality; the rest are other label sets, permuted labels, placeholder labels, random weights,
near-duplicates, gated, pickle-only, remote-code, unsupported-library and weightless repositories. The accuracy of
every loadable candidate on each domain's source validation set is measured and written to ``manifest.json``.

Built once under ``cache_root()/selection_candidates_v{N}`` (about a minute on 2 cores) and reused by later runs.
:func:`populate_hub` uploads them to a Hub (a :class:`~hf_mrl.testing.LocalHub` in tests) with the real client;
``python -m hf_mrl.testing.candidates --port 8765`` serves them on 127.0.0.1 for manual runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from hf_mrl.utils import atomic_dir, atomic_write_json, cache_root

__all__ = ["build_candidates", "load_manifest", "populate_hub", "main"]

logger = logging.getLogger(__name__)

_VERSION = 1
DOMAIN_NAMES = {"M": "mnist", "U": "usps", "S": "svhn"}
_ARCH = {"M": "resnet-timm", "U": "convnext", "S": "resnet"}
_ORGS = ("digits-lab", "pixel-works", "tiny-vision", "edge-models")
NOISE = (0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)  # relative weight-noise strengths
_LICENSES = ("mit", "apache-2.0", "cc-by-nc-4.0", "other")
_DIGITS = [str(i) for i in range(10)]
_REMOTE_CODE = "import torch\n\nraise RuntimeError('remote code of a selection candidate was executed')\n"


def _perturb(tensors: dict[str, torch.Tensor], strength: float, seed: int, replace: bool = False) -> dict:
    """Add N(0, (strength * std)^2) to every float weight (or replace it, for random weights); BN statistics kept."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in tensors.items():
        if not t.is_floating_point() or "running_" in name or t.numel() < 2:
            out[name] = t.clone()
            continue
        noise = torch.randn(t.shape, generator=gen) * float(t.float().std()) * (1.0 if replace else strength)
        out[name] = (noise if replace else t + noise).to(t.dtype).contiguous()
    return out


def _set_labels(config: dict, labels: list[str]) -> dict:
    config = json.loads(json.dumps(config))
    if "pretrained_cfg" in config:  # timm
        config["label_names"] = labels
        config["pretrained_cfg"]["label_names"] = labels
    else:
        config["id2label"] = {str(i): n for i, n in enumerate(labels)}
        config["label2id"] = {n: i for i, n in enumerate(labels)}
    return config


def _card(domain: str, library: str, license: str, text: str) -> str:
    return (
        f"---\nlibrary_name: {library}\npipeline_tag: image-classification\nlicense: {license}\n"
        f"tags:\n- digits\n- {DOMAIN_NAMES.get(domain, 'other')}\n---\n\n# {text}\n"
    )


def _specs() -> list[dict[str, Any]]:
    """Every candidate as a recipe: its source teacher, what is done to it, and where it goes."""
    specs: list[dict[str, Any]] = []

    def add(name: str, domain: str, kind: str, **kw: Any) -> None:
        org = _ORGS[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(_ORGS)]
        specs.append({"repo_id": f"{org}/{name}", "domain": domain, "kind": kind, **kw})

    for d in "MUS":
        base = f"{DOMAIN_NAMES[d]}-{_ARCH[d]}"
        for i, s in enumerate(NOISE):
            for seed in (0, 1) if s > 0 else (0,):
                add(f"{base}-n{int(s * 100):03d}-s{seed}", d, "expert", noise=s, seed=100 * i + seed)
        add(f"{base}-mirror", d, "near_duplicate", noise=1e-4, seed=7)
        add(f"{base}-n010-s0-copy", d, "near_duplicate", noise=0.1, seed=100 * NOISE.index(0.1), jitter=1e-4)
        add(f"{base}-letters", d, "other_labels", labels=[chr(ord("A") + i) for i in range(10)])
        add(f"{base}-animals", d, "other_labels", labels=[f"animal-{i}" for i in range(10)])
        add(f"{base}-half", d, "partial_labels", labels=_DIGITS[:5] + [f"x{i}" for i in range(5)])
        add(f"{base}-generic", d, "generic_labels", labels=[f"LABEL_{i}" for i in range(10)])
        for p in (0, 1):
            add(f"{base}-shuffled-{p}", d, "permuted_labels", permutation_seed=p)
        for p in (0, 1):
            add(f"{base}-scratch-{p}", d, "random_weights", seed=1000 + p)
        add(f"{base}-gated", d, "gated")
        add(f"{base}-bin", d, "pickle_only")
        add(f"{base}-custom", d, "remote_code")
        add(f"{base}-noweights", d, "no_weights")
    add("keras-digits", "", "unsupported_library", library="keras")
    add("sklearn-digits", "", "unsupported_library", library="sklearn")
    return specs


def _write_candidate(spec: dict, source: Path, folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    config = json.loads((source / "config.json").read_text())
    library = "timm" if "pretrained_cfg" in config else "transformers"
    license = _LICENSES[int(hashlib.sha1(spec["repo_id"].encode()).hexdigest(), 16) % len(_LICENSES)]
    kind = spec["kind"]
    text = f"{spec['repo_id']} ({kind})"
    if kind == "unsupported_library":
        (folder / "README.md").write_text(_card("", spec["library"], license, text))
        (folder / "model.keras").write_bytes(hashlib.sha256(spec["repo_id"].encode()).digest() * 64)
        return
    for extra in ("preprocessor_config.json",):
        if (source / extra).is_file():
            shutil.copy(source / extra, folder / extra)
    weights = load_file(source / "model.safetensors")
    if kind in ("expert", "near_duplicate"):
        weights = _perturb(weights, spec["noise"], spec["seed"])
        if spec.get("jitter"):
            weights = _perturb(weights, spec["jitter"], spec["seed"] + 1)
    elif kind == "random_weights":
        weights = _perturb(weights, 1.0, spec["seed"], replace=True)
    if "labels" in spec:
        config = _set_labels(config, spec["labels"])
    elif kind == "permuted_labels":
        order = torch.randperm(10, generator=torch.Generator().manual_seed(spec["permutation_seed"])).tolist()
        config = _set_labels(config, [_DIGITS[i] for i in order])
    if kind == "remote_code":
        config["auto_map"] = {"AutoModelForImageClassification": "modeling_digits.DigitsNet"}
        (folder / "modeling_digits.py").write_text(_REMOTE_CODE)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "README.md").write_text(_card(spec["domain"], library, license, text))
    if kind == "pickle_only":
        torch.save(weights, folder / "pytorch_model.bin")
    elif kind != "no_weights":
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


@torch.no_grad()
def _accuracies(folder: Path, validation: dict) -> dict[str, float] | None:
    """Accuracy on each domain's source validation set through the pool's own loading and label mapping."""
    from hf_mrl.pool.model_pool import ModelPool, Teacher

    try:
        teacher = Teacher.load(str(folder), allow_pickle=True)
        pool = ModelPool([teacher], _DIGITS)
    except ValueError:  # no shared labels, placeholder labels, no weights...: not a digit classifier for this target
        return None
    out = {}
    for d, (x, y) in validation.items():
        out[d] = round((pool.probs(x)[:, 0].argmax(-1) == y).float().mean().item(), 4)
    return out


def build_candidates(output_dir: str | Path | None = None) -> Path:
    """Build (or reuse) the candidate folders and `manifest.json`; returns the folder holding them.

    >>> folder = build_candidates()  # doctest: +SKIP
    >>> len(load_manifest(folder)["candidates"]) >= 100  # doctest: +SKIP
    True
    """
    from hf_mrl.data import dataset_to_tensors, load_source
    from hf_mrl.pool.builder import build_digits_pool

    out = Path(output_dir) if output_dir is not None else cache_root() / f"selection_candidates_v{_VERSION}"
    pool_dir = build_digits_pool().parent
    sources = {d: pool_dir / f"teacher-{d}" for d in "MUS"}
    source_hash = hashlib.sha256(b"".join((p / "model.safetensors").read_bytes() for p in sources.values()))
    key = {"version": _VERSION, "sources": source_hash.hexdigest()[:16], "specs": len(_specs())}
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") == key:
        return out
    logger.info("Building %d selection candidates in %s", len(_specs()), out)
    validation = {}
    for d in "MUS":
        x, y, _ = dataset_to_tensors(load_source(d)["validation"])
        validation[d] = (x[:500], y[:500])
    entries = []
    for spec in _specs():
        folder = out / "repos" / spec["repo_id"]
        with atomic_dir(folder) as tmp:
            _write_candidate(spec, sources.get(spec["domain"], sources["M"]), tmp)
        entries.append({**spec, "accuracy": _accuracies(folder, validation)})
    atomic_write_json(manifest, {"key": key, "candidates": entries})
    return out


def load_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def _downloads(repo_id: str) -> int:
    """A deterministic, heavy-tailed popularity, unrelated to quality (as on the Hub)."""
    h = int(hashlib.sha1(repo_id.encode()).hexdigest()[:8], 16)
    return int(10 + (h % 1000) ** 2 / 50)


def populate_hub(hub, folder: str | Path, repo_ids: list[str] | None = None) -> list[dict]:
    """Upload candidates to `hub` (a running LocalHub the clients point at) with the real client; returns entries.

    Download counters are set, `gated` candidates are gated. Repositories already on the hub are left as they are,
    so a persistent hub root is filled once.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_local")
    entries = load_manifest(folder)["candidates"]
    if repo_ids is not None:
        wanted = set(repo_ids)
        entries = [e for e in entries if e["repo_id"] in wanted]
    for e in entries:
        if api.repo_exists(e["repo_id"]):
            continue
        api.create_repo(e["repo_id"])
        api.upload_folder(repo_id=e["repo_id"], folder_path=Path(folder) / "repos" / e["repo_id"], commit_message="v1")
        hub.set_model_stats(e["repo_id"], downloads=_downloads(e["repo_id"]))
        if e["kind"] == "gated":
            hub.set_gated(e["repo_id"])
    return entries


def main(argv: list[str] | None = None) -> int:
    """Build the candidates and serve them on a LocalHub on 127.0.0.1 until interrupted."""
    import time

    from hf_mrl.testing.hub_server import LocalHub

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--hub_root", default=None, help="where the server keeps its repos (default: in the cache)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    folder = build_candidates()
    root = Path(args.hub_root) if args.hub_root else folder / "hub"
    with LocalHub(root, port=args.port) as hub:
        entries = populate_hub(hub, folder)
        print(f"{len(entries)} candidates served at {hub.url} (HF_ENDPOINT={hub.url})", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
