"""The metadata screen: what a candidate's config and files say before any weight is downloaded; the download budget."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hf_mrl.pool.labels import load_label_map, map_labels, normalize_label
from hf_mrl.pool.selection.discover import (
    _PICKLE,
    _WEIGHT_PATTERNS,
    SUPPORTED_LIBRARIES,
    Candidate,
    _labels_from_config,
)
from hf_mrl.utils import atomic_write_json, atomic_write_text, cache_root, read_json

logger = logging.getLogger(__name__)


def _own_entries(label_map: dict | None, c: Candidate) -> dict[str, list[str]]:
    """The per-teacher entries of a label map that name this candidate: by repo id, or `repo_id@revision`."""
    names = {c.repo_id, c.id}
    own: dict[str, list[str]] = {}
    for key, entries in (label_map or {}).items():
        if isinstance(entries, dict) and key in names:  # as a training pool matches them: `t.name` or `t.id`
            own.update(entries)
    return own


def _shared_entries(label_map: dict | None) -> dict[str, list[str]]:
    return {k: v for k, v in (label_map or {}).items() if not isinstance(v, dict)}


def _pool_label_map(label_map: dict | None, c: Candidate, known: set[str]) -> dict | None:
    """The label map as a one-teacher `ModelPool` for `c` takes it, giving the mapping the training pool gives it.

    A training pool checks that every shared name means something to some teacher of the pool; alone, this candidate
    need not know them all, so names it lacks are dropped (`map_labels` skips them in a shared map anyway), and a
    class none of whose names it knows is left to name matching, as in the full pool.
    """
    if not label_map:
        return None
    shared = {}
    for target, names in _shared_entries(label_map).items():
        mine = [n for n in names if normalize_label(n) in known]
        if mine or not names:
            shared[target] = mine
    own = _own_entries(label_map, c)
    return {**shared, **({c.id: own} if own else {})} or None


def _check_label_map(label_map: dict | None, label_names: Sequence[str]) -> None:
    """Fail once, before any Hub request, on a map naming a target class the target lacks (every candidate would)."""
    from hf_mrl.pool.labels import close_matches

    norm = {normalize_label(n) for n in label_names}
    for key, entries in (label_map or {}).items():
        for target in entries if isinstance(entries, dict) else [key]:
            if normalize_label(target) not in norm:
                close = close_matches(target, list(label_names))
                where = f" (entries of {key!r})" if isinstance(entries, dict) else ""
                raise ValueError(
                    f"The label map{where} names target class {target!r}, which the target task does not have"
                    + (f"; close matches: {close}" if close else "")
                    + f". The target classes are {list(label_names)[:20]}."
                )


def _metadata(c: Candidate, cache_dir: Path, token) -> dict:
    """Model info (pinned) and config.json of a candidate, cached per commit: no weights are downloaded."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    folder = cache_dir / "metadata" / c.repo_id.replace("/", "--")
    ref = folder / f"ref-{hashlib.sha256((c.revision or 'main').encode()).hexdigest()[:16]}.txt"
    sha = c.revision if c.revision and len(c.revision) == 40 else None
    if sha is None and constants.HF_HUB_OFFLINE and ref.is_file():
        sha = ref.read_text().strip()  # the commit this branch or tag had when it was screened online
    if sha is not None and (folder / f"{sha}.json").is_file():
        return read_json(folder / f"{sha}.json")
    if constants.HF_HUB_OFFLINE:
        raise ValueError("HF_HUB_OFFLINE=1 and its metadata are not cached: run once online")
    info = HfApi().model_info(c.repo_id, revision=c.revision, files_metadata=True, token=token)
    files = {s.rfilename: s.size for s in info.siblings or []}
    meta = {
        "sha": info.sha,
        "gated": info.gated,
        "downloads": info.downloads,
        "library": info.library_name,
        "pipeline_tag": info.pipeline_tag,
        "license": (info.card_data or {}).get("license") if info.card_data is not None else None,
        "files": files,
        "parameters": info.safetensors.total if info.safetensors else None,
        "info_config": info.config or {},
        "config": None,
    }
    if "config.json" in files:
        try:  # a gated repo may be open to this user's token: ask for the file rather than trust the flag
            path = hf_hub_download(c.repo_id, "config.json", revision=info.sha, token=token)
            meta["config"] = read_json(path)
        except GatedRepoError:
            meta["denied"] = True
        except ValueError:
            meta["config"] = "invalid"
    elif info.gated:
        meta["denied"] = True
    atomic_write_json(folder / f"{info.sha}.json", meta)
    atomic_write_text(ref, info.sha)
    return meta


def _screen_one(
    c: Candidate,
    meta: dict,
    label_names: list[str],
    *,
    libraries: Sequence[str],
    allow_remote_code: bool,
    max_parameters: int | None,
    max_weight_bytes: int | None,
    min_covered: int,
    label_map: dict | None = None,
) -> None:
    c.revision, c.license = meta["sha"], meta["license"]
    c.downloads = meta["downloads"] if meta["downloads"] is not None else c.downloads
    files: dict = meta["files"]
    config = meta["config"] if isinstance(meta["config"], dict) else None
    library = meta["library"]
    if library is None and config is not None:
        library = "timm" if "pretrained_cfg" in config else "transformers" if "model_type" in config else None
    c.library = library
    weights = {f: s for f, s in files.items() if f.endswith(".safetensors")}
    c.weight_bytes = sum(s or 0 for s in weights.values()) if weights else None
    c.num_parameters = meta["parameters"]
    if meta.get("denied"):
        return c.reject("metadata", "gated: its files need an accepted access request (request access on its page)")
    if library not in libraries:
        return c.reject("metadata", f"unsupported library {library!r}: the pool loads {', '.join(libraries)} models")
    if config is None:
        what = "invalid JSON" if meta["config"] == "invalid" else "missing"
        return c.reject("metadata", f"config.json {what}: not a loadable {library} checkpoint")
    auto_map = config.get("auto_map") or meta["info_config"].get("auto_map")
    if auto_map and not allow_remote_code:
        return c.reject("metadata", "remote code: `auto_map` in config.json needs its own Python code to load")
    if not weights:
        pickles = [f for f in files if f in _PICKLE]
        if pickles:
            return c.reject("metadata", f"no safetensors weights: only pickle ({pickles[0]}), which can run code")
        return c.reject("metadata", "no weights: no model.safetensors in the repository")
    if max_parameters is not None and c.num_parameters is not None and c.num_parameters > max_parameters:
        return c.reject("metadata", f"too large: {c.num_parameters:,} parameters > the limit {max_parameters:,}")
    if max_weight_bytes is not None and c.weight_bytes > max_weight_bytes:
        return c.reject("metadata", f"too large: {c.weight_bytes:,} bytes of weights > the limit {max_weight_bytes:,}")
    labels = _labels_from_config(config)
    c.labels = labels
    own = _own_entries(label_map, c)  # the pool's matching: this candidate's entries, then the shared ones, then names
    overridden = {normalize_label(t) for t in own}
    try:
        mapping = map_labels(
            labels or [],
            label_names,
            teacher_name=f"Candidate {c.repo_id!r}",
            label_map=own,
            shared_label_map={
                t: v for t, v in _shared_entries(label_map).items() if normalize_label(t) not in overridden
            },
        )
    except ValueError as err:
        return c.reject("metadata", f"{'its label map entries do not fit' if own else 'no label overlap'}: {err}")
    c.covered = mapping.num_covered
    if c.covered < min_covered:
        return c.reject("metadata", f"label overlap too small: covers {c.covered}/{len(label_names)} target classes")
    return None


def screen_metadata(
    candidates: Sequence[Candidate],
    label_names: Sequence[str],
    *,
    libraries: Sequence[str] = SUPPORTED_LIBRARIES,
    allow_remote_code: bool = False,
    max_parameters: int | None = 100_000_000,
    max_weight_bytes: int | None = None,
    min_covered: int = 1,
    label_map: str | os.PathLike | dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    max_workers: int = 8,
) -> list[Candidate]:
    """Screen candidates from model info, card metadata and config.json only; returns the survivors.

    Every rejected candidate gets `status="rejected"`, `stage="metadata"` and a `reason`; survivors are pinned to
    the commit whose metadata was read. Nothing here downloads weights or imports a candidate's code. `label_map`
    (a JSON file or dict, as `ModelPool` takes it) joins labels whose names differ; entries keyed by a teacher
    apply to the candidate with that repo id (or `repo_id@commit`).
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = Path(cache_dir or cache_root() / "selection")
    label_names = [str(n) for n in label_names]
    label_map = load_label_map(label_map)
    _check_label_map(label_map, label_names)

    def one(c: Candidate) -> None:
        try:
            meta = _metadata(c, cache, token)
        except GatedRepoError:
            return c.reject(
                "metadata", "gated: its files need an accepted access request (request access on its page)"
            )
        except RevisionNotFoundError:
            return c.reject("metadata", f"revision not found: {c.revision!r}")
        except RepositoryNotFoundError:
            return c.reject("metadata", "not found on the Hub (or private)")
        except HfHubHTTPError as err:
            return c.reject("metadata", f"Hub error: {err}")
        except ValueError as err:
            return c.reject("metadata", str(err))
        _screen_one(
            c,
            meta,
            label_names,
            libraries=libraries,
            allow_remote_code=allow_remote_code,
            max_parameters=max_parameters,
            max_weight_bytes=max_weight_bytes,
            min_covered=min_covered,
            label_map=label_map,
        )

    with ThreadPoolExecutor(max_workers) as pool:
        list(pool.map(one, candidates))
    return [c for c in candidates if c.status != "rejected"]


def apply_download_budget(candidates: Sequence[Candidate], budget_bytes: int | None) -> list[Candidate]:
    """Keep candidates, in the given order (most downloaded first), until their weights exceed the budget."""
    if budget_bytes is None:
        return list(candidates)
    kept, spent = [], 0
    for c in candidates:
        size = c.weight_bytes or 0
        if spent + size > budget_bytes:
            c.reject("budget", f"over the download budget: {spent + size:,} > {budget_bytes:,} bytes")
            continue
        spent += size
        kept.append(c)
    return kept


def download_candidates(candidates: Sequence[Candidate], *, token=None, max_workers: int = 4) -> int:
    """Fetch the survivors' weights into huggingface_hub's cache, several repos at once; returns how many downloaded.

    Downloads resume where an interrupted one stopped (huggingface_hub keeps `.incomplete` files); a candidate
    already in the cache at its pinned commit costs nothing. Only safetensors, JSON and cards are fetched: never
    pickle weights or Python files.
    """
    from huggingface_hub import constants, snapshot_download, try_to_load_from_cache

    def cached(c: Candidate) -> bool:
        return all(
            isinstance(try_to_load_from_cache(c.repo_id, f, revision=c.revision), str)
            for f in ("config.json", "model.safetensors")
        )

    todo = [c for c in candidates if not cached(c)]
    if constants.HF_HUB_OFFLINE:
        return 0  # Teacher.load says which one is missing

    def fetch(c: Candidate) -> None:
        try:
            snapshot_download(c.repo_id, revision=c.revision, allow_patterns=list(_WEIGHT_PATTERNS), token=token)
        except Exception as err:  # reported per candidate by the load that follows
            logger.warning("Could not download %s: %s", c.id, err)

    with ThreadPoolExecutor(max_workers) as pool:
        list(pool.map(fetch, todo))
    return len(todo)
