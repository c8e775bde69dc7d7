"""From a Hub search to a pool: discover candidate teachers, screen them, and select K for the target's domains.

Four steps, each cheap before the next costs more:

1. **discover**: `HfApi.list_models` (pipeline tag, search, filters, sorted by downloads) and/or a list of ids;
   every candidate is pinned to a commit.
2. **metadata screen** (no weights downloaded): model info, the card metadata and `config.json` decide label overlap
   with the target (the pool's own `map_labels`), library, safetensors, remote code, size and license; then a download
   budget.
3. **scored screen**: survivors are downloaded (concurrently, resumable, through huggingface_hub's cache) and loaded
   with `Teacher.load` (never pickle, never remote code); their outputs on the labeled set and an unlabeled sample
   (cached as in training) give accuracy, LEEP, confidence, and near-duplicates.
4. **selection**: a greedy choice of K maximising what routing could reach (`objective="samples"`: per labeled
   sample, the highest probability a chosen teacher gives its true class; `"clusters"`: per cluster of labeled
   samples, the accuracy of the best chosen teacher), with a penalty for teachers that agree with one already chosen
   on the unlabeled sample. The report gives the reachable accuracy (a sample counts when one chosen teacher gets it
   right) for every K, and each latent domain's (or cluster's) coverage by its best selected teacher.

It writes `pool.txt` (pinned `org/name@commit` lines, usable as `--pool`), `report.md`, `report.json` and
`reachable.png`. With `HF_HUB_OFFLINE=1` a rerun answers from the caches without a single Hub request.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .endpoint import CallBudget, EndpointError, EndpointOptions, add_endpoint_arguments, endpoint_options, is_endpoint
from .labels import label_keys, load_label_map, map_labels, normalize_label
from .pool import ModelPool, Teacher, TeacherLoadError, parse_teacher_id
from .screening import screen_teachers
from .utils import atomic_write_json, atomic_write_text, cache_root, read_json

__all__ = [
    "Candidate",
    "SelectionResult",
    "discover_candidates",
    "screen_metadata",
    "apply_download_budget",
    "download_candidates",
    "score_candidates",
    "greedy_select",
    "group_coverage",
    "select_pool",
    "write_outputs",
    "main",
]

logger = logging.getLogger(__name__)

SUPPORTED_LIBRARIES = ("transformers", "timm")
_WEIGHT_PATTERNS = ("*.json", "*.safetensors", "*.md")  # what Teacher.load fetches; never *.py, never pickle
_PICKLE = ("pytorch_model.bin", "model.bin", "open_clip_pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


@dataclass
class Candidate:
    """One candidate teacher and everything the screens found out about it.

    Attributes:
        repo_id: the Hub id; `revision` is the commit it is pinned to (`id` gives `repo_id@revision`).
        status: "kept" (passed every screen), "selected" (one of the K) or "rejected" (`stage` and `reason` say why).
        scores: accuracy, LEEP, LEEP gain, confidence on the unlabeled sample, and `duplicate_of` when flagged.
    """

    repo_id: str
    revision: str | None = None
    downloads: int | None = None
    library: str | None = None
    license: str | None = None
    num_parameters: int | None = None
    weight_bytes: int | None = None
    covered: int | None = None  # target classes the candidate's labels cover
    status: str = "kept"
    stage: str | None = None
    reason: str | None = None
    scores: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    rank: int | None = None  # 1-based order of selection
    labels: list[str] | None = field(default=None, repr=False)  # its own label names (config.json), not reported

    @property
    def id(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    def reject(self, stage: str, reason: str) -> None:
        self.status, self.stage, self.reason = "rejected", stage, reason

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["labels"]  # an ImageNet candidate would add 1000 names per row to report.json
        return out


@dataclass
class SelectionResult:
    """What `select_pool` found: every candidate, the chosen ones in order, and the reachable-accuracy curve."""

    candidates: list[Candidate]
    selected: list[Candidate]
    curve: list[float]  # reachable accuracy on the labeled set after 1..K picks
    groups: dict  # per domain / cluster: reachable accuracy of the pool and of all kept candidates
    weight_downloads: int
    seconds: float
    routed_curve: list[float] = field(default_factory=list)  # the objective: competent teacher per cluster
    clusters: list[dict] = field(default_factory=list)  # per cluster of the unlabeled sample (`unlabeled_coverage`)
    coverage_matrix: list[list[float]] = field(default_factory=list)  # (clusters, selected) competence
    label_map: dict | None = None  # the entries of the given label map the selected pool needs
    pool_file: Path | None = None
    report_file: Path | None = None


# ------------------------------------------------------------------------------------------------ 1. discover


def _query_cache(cache_dir: Path, query: dict) -> Path:
    key = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "searches" / f"{key}.json"


def discover_candidates(
    *,
    search: str | None = None,
    filters: Sequence[str] = (),
    author: str | None = None,
    pipeline_tag: str | None = "image-classification",
    max_candidates: int = 100,
    ids: Sequence[str] = (),
    use_search: bool = True,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> list[Candidate]:
    """Candidates from a Hub search (sorted by downloads, at most `max_candidates`) and/or explicit ids.

    Every candidate comes back pinned to a commit: the search result's `sha`, or the id's own `@revision` resolved
    later by `screen_metadata`. The search result is cached under `cache_dir`, so an `HF_HUB_OFFLINE=1` rerun of the
    same query finds the same candidates.

    >>> cands = discover_candidates(search="mnist", max_candidates=50)  # doctest: +SKIP
    """
    from huggingface_hub import HfApi, constants

    if not isinstance(max_candidates, int) or max_candidates < 1:
        raise ValueError(f"max_candidates must be a positive integer; got {max_candidates!r}.")
    out: dict[str, Candidate] = {}
    for entry in ids:
        if is_endpoint(entry):  # called, not downloaded: no metadata, scored on the target like the rest
            out.setdefault(entry, Candidate(entry, None))
            continue
        name, revision = parse_teacher_id(entry)
        out.setdefault(name, Candidate(name, revision))
    if use_search:
        query = {"search": search, "filter": sorted(filters), "author": author, "pipeline_tag": pipeline_tag}
        query["limit"] = max_candidates
        cached = _query_cache(Path(cache_dir or cache_root() / "selection"), query)
        if constants.HF_HUB_OFFLINE:
            if not cached.is_file():
                raise ValueError(
                    f"HF_HUB_OFFLINE=1 and this search ({query}) was never run online: run it once online, or pass "
                    "the candidates as ids (--candidates_file)."
                )
            found = read_json(cached)
        else:
            models = HfApi().list_models(
                search=search,
                filter=list(filters) or None,
                author=author,
                pipeline_tag=pipeline_tag,
                sort="downloads",
                limit=max_candidates,
                expand=["sha", "downloads", "library_name", "pipeline_tag", "tags", "gated"],
                token=token,
            )
            found = [{"id": m.id, "sha": m.sha, "downloads": m.downloads} for m in models]
            atomic_write_json(cached, found)
        for m in found:
            if m["id"] not in out:
                out[m["id"]] = Candidate(m["id"], m["sha"], downloads=m["downloads"])
    return list(out.values())


# ------------------------------------------------------------------------------------------ 2. metadata screen


def _labels_from_config(config: dict) -> list[str] | None:
    if "pretrained_cfg" in config:  # timm
        return config.get("label_names") or config["pretrained_cfg"].get("label_names")
    id2label = config.get("id2label")
    if isinstance(id2label, dict):
        try:
            return [str(id2label[k]) for k in sorted(id2label, key=int)]
        except (ValueError, TypeError):
            return None
    return None


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
    from .labels import close_matches

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


# ------------------------------------------------------------------------------------------- 3. scored screen


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


@dataclass
class _Outputs:
    labeled: torch.Tensor  # (n, K, C) probabilities over the target classes
    unlabeled: torch.Tensor  # (m, K, C)
    coverage: torch.Tensor  # (K, C) bool


def _relabelling(pred: torch.Tensor, labels: torch.Tensor, c: int) -> tuple[float, dict[int, int], torch.Tensor]:
    """The one-to-one relabelling of predictions that best explains the labels, and how much better than none.

    Counts are taken in excess of what the prediction and label frequencies alone give (a teacher that says 3 to
    everything explains nothing); the assignment is greedy on that excess (largest cell first). Returns the gain in
    excess samples over the identity, the map true class -> predicted class, and the confusion matrix.
    """
    confusion = torch.zeros(c, c)
    confusion.index_put_((labels, pred), torch.ones(len(labels)), accumulate=True)
    excess = confusion - confusion.sum(1, keepdim=True) * confusion.sum(0, keepdim=True) / len(labels)
    free = excess.clone()
    free[confusion.sum(1) == 0] = -math.inf
    mapping: dict[int, int] = {}
    for _ in range(int((confusion.sum(1) > 0).sum())):
        t, p = divmod(int(free.argmax()), c)
        mapping[t] = p
        free[t, :], free[:, p] = -math.inf, -math.inf
    gain = sum(excess[t, p].item() - excess[t, t].item() for t, p in mapping.items())
    return gain, mapping, confusion


def permuted_labels(
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    min_gain: float = 0.1,
    alpha: float = 0.01,
    rounds: int = 200,
    seed: int = 0,
) -> list[tuple[int, int, float]] | None:
    """Whether a teacher's predictions on the labeled set look like the target classes under a shuffled label order.

    The one-to-one relabelling of its predictions that best explains the labels (`_relabelling`) must explain at
    least `min_gain` of the labeled samples more than its own labels do, move at least two classes, and do so
    significantly: more than all but a fraction `alpha` of `rounds` simulated honest teachers with as many errors,
    spread like its predictions (noisy errors also gain something by relabelling, by chance; a shuffle's errors are
    structured). An expert of one latent domain keeps its shuffle on that domain's samples only; the test needs no
    more than that, where a per-class majority vote would drown in the other domains' noise.

    Returns the moved classes as `(true class, predicted class, share of its samples predicted so)`, or None.

    >>> y = torch.arange(3).repeat(10)
    >>> permuted_labels(torch.eye(3)[(y + 1) % 3], y)  # 0 -> 1, 1 -> 2, 2 -> 0
    [(0, 1, 1.0), (1, 2, 1.0), (2, 0, 1.0)]
    >>> permuted_labels(torch.eye(3)[torch.zeros_like(y)], y) is None  # everything is 0: no shuffle, just useless
    True
    """
    n, c = probs.shape
    pred = probs.argmax(-1)
    gain, mapping, confusion = _relabelling(pred, labels, c)
    moved = sorted(t for t, p in mapping.items() if p != t and confusion[t, p] > confusion[t, t])
    if len(moved) < 2 or gain < min_gain * n:
        return None
    # The null is an honest but noisy teacher: right where it is right, each error a class drawn from how often it
    # predicts each class (a shuffle's errors all go one way; a teacher that says 3 to everything errs the same under
    # both). The gain is compared with that of `rounds` such teachers.
    wrong = (pred != labels).nonzero().flatten()
    freq = torch.bincount(pred, minlength=c).float()[None, :].repeat(len(wrong), 1)  # (w, C)
    freq[torch.arange(len(wrong)), labels[wrong]] = 0  # an error is another class
    ok = freq.sum(1) > 0
    gen = torch.Generator().manual_seed(seed)
    beaten = 0
    for _ in range(rounds):
        simulated = pred.clone()
        simulated[wrong[ok]] = torch.multinomial(freq[ok], 1, generator=gen).squeeze(1)
        beaten += _relabelling(simulated, labels, c)[0] >= gain
    if (1 + beaten) / (1 + rounds) > alpha:
        return None
    counts = confusion.sum(1)
    return [(t, mapping[t], round(confusion[t, mapping[t]].item() / counts[t].item(), 3)) for t in moved]


def permuted_among_peers(
    unlabeled: torch.Tensor, *, min_confidence: float = 0.5, min_samples: int = 30, related: float = 0.7
) -> list[tuple[int, int, list[tuple[int, int, float]]] | None]:
    """Permuted labels seen on the unlabeled sample, against the other candidates: for when the labeled set holds
    too few samples of a teacher's domain for `permuted_labels` (a USPS expert and 9 labeled USPS digits).

    For each pair of candidates, on the samples both are sure of (top probability at least `min_confidence`, at
    least `min_samples` of them), they are *the same* when they agree on at least `related` of them, and *permuted*
    when they agree on at most 1 - `related` but a one-to-one relabelling (`_relabelling`) makes them agree on at
    least `related`, moving at least half the classes (two noisy experts can differ by a few systematic confusions).
    A candidate permuted against at least two peers, and against more peers than it is the same as, is flagged: the
    shuffled one is the odd one out among teachers that see the data alike.

    Args:
        unlabeled: (m, K, C) probabilities on the unlabeled sample.

    Returns:
        Per candidate, None or `(peers permuted against, the peer it agrees with most after relabelling, moved
        classes as (peer's class, its class, share))`.
    """
    m, k, c = unlabeled.shape
    conf, pred = unlabeled.max(-1)  # (m, K)
    sure = conf >= min_confidence
    permuted = torch.zeros(k, k, dtype=torch.bool)
    same = torch.zeros(k, k, dtype=torch.bool)
    best: dict[int, tuple[float, int, list]] = {}
    for i in range(k):
        for j in range(i + 1, k):
            both = sure[:, i] & sure[:, j]
            if int(both.sum()) < min_samples:
                continue
            pi, pj = pred[both, i], pred[both, j]
            agree = (pi == pj).float().mean().item()
            if agree >= related:
                same[i, j] = same[j, i] = True
                continue
            if agree > 1 - related:
                continue
            for a, b, x, y in ((i, j, pi, pj), (j, i, pj, pi)):  # b's predictions against a's as labels
                _, mapping, confusion = _relabelling(y, x, c)
                relabelled = sum(confusion[t, p].item() for t, p in mapping.items()) / len(x)
                moved = [t for t, p in mapping.items() if p != t and confusion[t, p] > confusion[t, t]]
                if relabelled >= related and len(moved) >= max(2, c // 2):
                    permuted[a, b] = True
                    if relabelled > best.get(b, (0.0,))[0]:
                        counts = confusion.sum(1)
                        pairs = [
                            (t, mapping[t], round(confusion[t, mapping[t]].item() / counts[t].item(), 3))
                            for t in sorted(moved)
                        ]
                        best[b] = (relabelled, a, pairs)
    out: list = []
    for j in range(k):
        n_perm, n_same = int(permuted[:, j].sum()), int(same[:, j].sum())
        out.append((n_perm, best[j][1], best[j][2]) if n_perm >= 2 and n_perm > n_same else None)
    return out


def _describe_permutation(
    moved: list[tuple[int, int, float]], label_names: Sequence[str], against: str = "true -> predicted", limit: int = 6
) -> str:
    shown = ", ".join(f"{label_names[t]}->{label_names[p]}" for t, p, _ in moved[:limit])
    more = f" and {len(moved) - limit} more" if len(moved) > limit else ""
    mass = sum(share for _, _, share in moved) / len(moved)
    return (
        f"labels permuted: looks like {shown}{more} ({against}, {mass:.0%} of those classes' samples): its "
        "id2label is probably in the wrong order; a per-teacher --label_map entry can fix it"
    )


def score_candidates(
    candidates: Sequence[Candidate],
    label_names: Sequence[str],
    labeled_images: torch.Tensor,
    labeled_labels: torch.Tensor,
    unlabeled_images: torch.Tensor,
    *,
    cache_dir: str | os.PathLike | None = None,
    duplicate_tolerance: float = 0.01,
    label_map: str | os.PathLike | dict | None = None,
    check_permutations: bool = True,
    token=None,
    endpoint: EndpointOptions | None = None,
) -> tuple[list[Candidate], _Outputs]:
    """Load each candidate with `Teacher.load` and score it on the target; returns the survivors and their outputs.

    Scores: accuracy, LEEP and LEEP gain on the labeled set (`screening.screen_teachers`), mean top probability on
    the unlabeled sample. Rejected here: candidates that fail to load, whose labels look permuted
    (`permuted_labels`), that are no better than chance, or are near-duplicates (mean absolute difference of their
    probabilities below `duplicate_tolerance`) of an earlier, more downloaded candidate. Labels are mapped onto the
    target's as a training `ModelPool` with the same `label_map` maps them. Teacher outputs are cached per sample
    under `cache_dir` as in training. Endpoint candidates (`endpoint:URL`) are called on the same images, under
    one call budget shared by all of them (`endpoint.max_calls`).
    """
    label_names = [str(n) for n in label_names]
    label_map = load_label_map(label_map)
    logits_dir = Path(cache_dir or cache_root() / "selection") / "logits"
    loaded, lab, unl, cov = [], [], [], []
    budget = CallBudget((endpoint or EndpointOptions()).max_calls)
    for c in candidates:
        try:
            if is_endpoint(c.id):
                pool = ModelPool([c.id], label_names, cache_dir=logits_dir, label_map=label_map, endpoint=endpoint)
                pool.budget = pool.teachers[0].budget = budget
                lab.append(pool.probs(labeled_images)[:, 0])
                unl.append(pool.probs(unlabeled_images)[:, 0])
                cov.append(pool.coverage[0])
                loaded.append(c)
                continue
            teacher = Teacher.load(c.id, token=token)  # no pickle, no remote code
            known = label_keys(teacher.label_names, teacher.label_descriptions)
            pool = ModelPool(
                [teacher], label_names, cache_dir=logits_dir, label_map=_pool_label_map(label_map, c, known)
            )
            lab.append(pool.probs(labeled_images)[:, 0])
            unl.append(pool.probs(unlabeled_images)[:, 0])
            cov.append(pool.coverage[0])
        except (TeacherLoadError, ValueError, EndpointError) as err:
            reason = getattr(err, "reason", "load_failed" if not isinstance(err, EndpointError) else "call_failed")
            c.reject("scored", f"could not be loaded ({reason}): {err}")
            continue
        loaded.append(c)
        del teacher, pool
    if not loaded:
        empty = torch.empty(0)
        return [], _Outputs(empty, empty, empty)
    labeled, unlabeled = torch.stack(lab, 1), torch.stack(unl, 1)  # (n, K, C), (m, K, C)
    coverage = torch.stack(cov)
    scores = screen_teachers(labeled, labeled_labels, [c.id for c in loaded], coverage)
    both = torch.cat([labeled, unlabeled])  # (n + m, K, C)
    peers = permuted_among_peers(unlabeled) if check_permutations else [None] * len(loaded)
    keep = []
    for j, (c, s) in enumerate(zip(loaded, scores, strict=True)):
        c.scores = {
            "accuracy": round(s.accuracy, 4),
            "leep": round(s.leep, 4),
            "leep_gain": round(s.leep_gain, 4),
            "confidence": round(unlabeled[:, j].max(-1).values.mean().item(), 4),
        }
        c.flags = [f for f in s.flags if not f.startswith("duplicates")]
        twin = next(
            (i for i in keep if (both[:, i] - both[:, j]).abs().sum(-1).mean().item() / 2 < duplicate_tolerance), None
        )
        if twin is not None:
            c.scores["duplicate_of"] = loaded[twin].id
            c.reject("scored", f"near-duplicate of {loaded[twin].id} (almost identical outputs)")
            continue
        # Before the chance test: a shuffled expert keeps its fixed points right and can pass it (an earlier K=6
        # run selected one); and "permuted" tells the user what is wrong and that a label map can fix it.
        moved = permuted_labels(labeled[:, j], labeled_labels) if check_permutations else None
        if moved is not None:
            c.scores["permutation"] = [[label_names[t], label_names[p], m] for t, p, m in moved]
            c.flags.append("labels permuted")
            c.reject("scored", _describe_permutation(moved, label_names))
            continue
        if peers[j] is not None:
            n_peers, ref, moved = peers[j]
            c.scores["permutation"] = [[label_names[t], label_names[p], m] for t, p, m in moved]
            c.scores["permuted_against"] = loaded[ref].id
            c.flags.append("labels permuted")
            c.reject(
                "scored",
                _describe_permutation(moved, label_names, f"{loaded[ref].repo_id} (and {n_peers - 1} more) -> this"),
            )
            continue
        if any("no better than chance" in f for f in s.flags):
            c.reject("scored", f"no better than chance on the labeled set (accuracy {s.accuracy:.2f})")
            continue
        keep.append(j)
    idx = torch.tensor(keep, dtype=torch.long)
    return [loaded[j] for j in keep], _Outputs(labeled[:, idx], unlabeled[:, idx], coverage[idx])


# ---------------------------------------------------------------------------------------------- 4. selection


def greedy_select(
    correct: torch.Tensor,
    k: int,
    agreement: torch.Tensor | None = None,
    redundancy: float = 0.05,
    weights: torch.Tensor | None = None,
) -> tuple[list[int], list[float]]:
    """Greedy choice of `k` columns of `correct` maximising reachable accuracy, redundancy penalised.

    Args:
        correct: (n, K) float in [0, 1]: whether (or how much: the probability of the true class) teacher j gets
            labeled sample i right.
        k: how many to choose (at most K).
        agreement: (K, K) in [0, 1], how often two teachers agree on unlabeled data; each step subtracts
            `redundancy` times the largest agreement of a candidate with those already chosen.
        weights: (n,) weight of each row (default uniform): rows may be groups of samples, e.g. clusters weighted by
            their size, with `correct` a teacher's accuracy on each group.

    Returns:
        The chosen columns in order, and the reachable accuracy `mean_i max_{j chosen} correct[i, j]` after each pick.

    >>> correct = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> greedy_select(correct, 2)[0]  # the second pick covers what the first misses, not a copy of it
    [0, 2]
    """
    n, total = correct.shape
    k = min(k, total)
    w = torch.full((n,), 1.0 / n) if weights is None else weights / weights.sum()
    chosen: list[int] = []
    best = torch.zeros(n)  # (n,) reachable so far per sample
    curve = []
    for _ in range(k):
        gain = w @ torch.clamp(correct - best[:, None], min=0)  # (K,)
        if chosen and agreement is not None:
            gain = gain - redundancy * agreement[:, chosen].max(1).values
        gain[chosen] = -math.inf
        j = int(torch.argmax(gain))
        chosen.append(j)
        best = torch.maximum(best, correct[:, j])
        curve.append((w @ best).item())
    return chosen, curve


def _kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50, centres_too: bool = False):
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        for c in range(len(centres)):
            if (assign == c).any():
                centres[c] = x[assign == c].mean(0)
    assign = torch.cdist(x, centres).argmin(1)
    return (assign, centres) if centres_too else assign


def cluster_competence(
    labeled: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor,
    n_clusters: int,
    *,
    seed: int = 0,
    prior: float = 2.0,
    bins: Sequence[float] = (0.5, 0.7, 0.85, 0.95),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clusters of the unlabeled sample and how competent each teacher is on each, from outputs alone.

    The clusters are k-means (seeded) over each sample's confidence profile, the log-odds of the top probability of
    every kept candidate: which teachers are sure of a sample says which latent domain it comes from, whatever its
    class.
    Labeled samples fall in the cluster of the nearest centre. A teacher's competence on a cluster is its accuracy
    on the cluster's labeled samples, shrunk (with weight `prior` samples) towards an estimate from the unlabeled
    ones: the mean over them of the teacher's labeled-set accuracy at that confidence (per confidence bin,
    smoothed towards its overall accuracy), so that a confident but wrong teacher is not taken for a competent one.

    Args:
        labeled: (n, K, C) probabilities on the labeled set; labels: (n,).
        unlabeled: (m, K, C) probabilities on the unlabeled sample.

    Returns:
        `unlabeled_cluster` (m,), `labeled_cluster` (n,), `competence` (G, K) and `labeled_accuracy` (G, K)
        (NaN where a cluster holds no labeled sample).
    """
    n_clusters = max(1, min(n_clusters, len(unlabeled)))
    conf_l, conf_u = labeled.max(-1).values, unlabeled.max(-1).values  # (n, K), (m, K)

    # In log-odds: a domain's experts differ from the others between 0.99 and 0.9999 as much as between 0.5 and 0.9
    # (on the Digits-LD MUS candidates, 6 clusters are 91% one domain this way, 79% on raw confidence).
    def profile(conf: torch.Tensor) -> torch.Tensor:
        return torch.logit(conf.clamp(1e-4, 1 - 1e-4))

    assign_u, centres = _kmeans(profile(conf_u), n_clusters, seed, centres_too=True)
    assign_l = torch.cdist(profile(conf_l), centres).argmin(1)
    hard = (labeled.argmax(-1) == labels[:, None]).float()  # (n, K)
    edges = torch.tensor(list(bins))
    bin_l, bin_u = torch.bucketize(conf_l, edges), torch.bucketize(conf_u, edges)  # bin index per sample and teacher
    n_bins = len(bins) + 1
    in_bin = torch.nn.functional.one_hot(bin_l, n_bins).float()  # (n, K, B)
    smooth = 2.0  # pseudo-samples at the teacher's overall accuracy: an empty bin says nothing
    calibrated = (torch.einsum("nkb,nk->kb", in_bin, hard) + smooth * hard.mean(0)[:, None]) / (
        in_bin.sum(0) + smooth
    )  # (K, B) accuracy at each confidence
    est_u = calibrated.gather(1, bin_u.T).T  # (m, K)
    members_u = torch.nn.functional.one_hot(assign_u, n_clusters).float().T  # (G, m)
    members_l = torch.nn.functional.one_hot(assign_l, n_clusters).float().T  # (G, n)
    estimate = (members_u @ est_u) / members_u.sum(1).clamp_min(1)[:, None]  # (G, K)
    n_l = members_l.sum(1)[:, None]  # (G, 1)
    labeled_acc = (members_l @ hard) / n_l.clamp_min(1)
    competence = (n_l * labeled_acc + prior * estimate) / (n_l + prior)
    labeled_acc[n_l.squeeze(1) == 0] = float("nan")
    return assign_u, assign_l, competence, labeled_acc


def unlabeled_coverage(
    competence: torch.Tensor,
    labeled_acc: torch.Tensor,
    unlabeled_cluster: torch.Tensor,
    labeled_cluster: torch.Tensor,
    chosen: Sequence[int],
    ids: Sequence[str],
    domains: torch.Tensor | None = None,
    domain_names: Sequence[str] | None = None,
    weak_threshold: float = 0.7,
) -> list[dict]:
    """Per cluster of the unlabeled sample: its size, its main latent domain (when known), the most competent
    selected teacher and the most competent candidate found (`cluster_competence`), and whether it is weak."""
    out = []
    for g in range(competence.shape[0]):
        rows = unlabeled_cluster == g
        if not rows.any():
            continue
        entry = {"cluster": g, "samples": int(rows.sum()), "share": round(rows.float().mean().item(), 4)}
        entry["labeled"] = int((labeled_cluster == g).sum())
        if domains is not None:
            values, counts = domains[rows].unique(return_counts=True)
            top = int(counts.argmax())
            name = domain_names[int(values[top])] if domain_names else str(int(values[top]))
            entry["domain"] = f"{name} {counts[top].item() / rows.sum().item():.0%}"
        if chosen:
            j = max(chosen, key=lambda i: competence[g, i].item())
            acc = labeled_acc[g, j].item()
            entry.update(
                teacher=ids[j],
                competence=round(competence[g, j].item(), 4),
                labeled_accuracy=None if math.isnan(acc) else round(acc, 4),
            )
        else:
            entry.update(teacher=None, competence=0.0, labeled_accuracy=None)
        best = int(competence[g].argmax())
        entry.update(best_candidate=ids[best], best_candidate_competence=round(competence[g, best].item(), 4))
        entry["weak"] = entry["competence"] < weak_threshold
        out.append(entry)
    return out


def group_coverage(
    hard: torch.Tensor, chosen: Sequence[int], groups: torch.Tensor, names: Sequence[str]
) -> dict[str, dict]:
    """Per group (latent domain or cluster) of labeled samples, from hard correctness (n, K):

    - `teacher`: accuracy of the best chosen teacher on the group: whether the group has a competent teacher
      (routing sends a group's samples to one teacher; it cannot pick, per sample, whichever weak one is right);
    - `reach`: oracle reachable accuracy of the chosen teachers (an upper bound, optimistic with many weak ones);
    - `best_candidate`: accuracy of the best kept candidate on the group (what the search offered).
    """
    out = {}
    for g, name in enumerate(names):
        rows = groups == g
        if not rows.any():
            continue
        sub = hard[rows]
        pool = sub[:, list(chosen)]
        out[name] = {
            "samples": int(rows.sum()),
            "teacher": round(pool.mean(0).max().item(), 4) if len(chosen) else 0.0,
            "reach": round(pool.max(1).values.mean().item(), 4) if len(chosen) else 0.0,
            "best_candidate": round(sub.mean(0).max().item(), 4),
        }
    return out


# ------------------------------------------------------------------------------------------------ the whole job


def select_pool(
    label_names: Sequence[str],
    labeled_images: torch.Tensor,
    labeled_labels: torch.Tensor,
    unlabeled_images: torch.Tensor,
    *,
    k: int = 3,
    output_dir: str | os.PathLike | None = None,
    candidates: Sequence[Candidate] | None = None,
    search: str | None = None,
    filters: Sequence[str] = (),
    author: str | None = None,
    pipeline_tag: str | None = "image-classification",
    max_candidates: int = 100,
    ids: Sequence[str] = (),
    use_search: bool = True,
    labeled_groups: torch.Tensor | None = None,
    group_names: Sequence[str] | None = None,
    unlabeled_groups: torch.Tensor | None = None,
    label_map: str | os.PathLike | dict | None = None,
    allow_remote_code: bool = False,
    max_parameters: int | None = 100_000_000,
    max_weight_bytes: int | None = None,
    min_covered: int = 1,
    download_budget_bytes: int | None = None,
    redundancy: float = 0.05,
    weak_threshold: float = 0.7,
    clusters: int | None = None,
    objective: str = "samples",
    check_permutations: bool = True,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    max_workers: int = 4,
    endpoint: EndpointOptions | None = None,
) -> SelectionResult:
    """Discover, screen and select K teachers for a target; writes the pool file and the report to `output_dir`.

    Args:
        label_names, labeled_images, labeled_labels, unlabeled_images: the target (uint8 images (N, 3, H, W)).
        k: how many teachers to select.
        candidates / search, filters, author, pipeline_tag, max_candidates, ids, use_search: see
            `discover_candidates` (`candidates` skips discovery).
        labeled_groups, group_names: latent domains of the labeled samples when known (evaluation data); otherwise
            the labeled samples are clustered (k-means on all kept candidates' outputs) into `clusters` groups.
        unlabeled_groups: latent domains of the unlabeled sample when known: each cluster of it is reported with
            its main domain.
        label_map: as `ModelPool` takes it (file or dict): the metadata screen's label overlap and the scored screen
            map labels with it; `label_map.json` in `output_dir` keeps the entries the selected pool needs.
        allow_remote_code, max_parameters, max_weight_bytes, min_covered: the metadata screen.
        download_budget_bytes: most bytes of weights to download (most downloaded candidates first).
        redundancy: weight of the agreement penalty in the greedy choice.
        weak_threshold: a group whose best selected teacher stays below it is reported as poorly covered.
        clusters: how many clusters the unlabeled sample (coverage report, `objective="coverage"`) and the labeled
            set (`objective="clusters"`) are cut into (default 2k).
        objective: "samples" (default), "clusters" or "coverage" (each cluster of the unlabeled sample needs a
            competent teacher, weighted by its size; `cluster_competence`).
        check_permutations: reject candidates whose labels look permuted (`permuted_labels`).
        seed: of the k-means clusterings.
        cache_dir: searches, metadata and teacher outputs (default `cache_root()/selection`).

    >>> result = select_pool(names, x_l, y_l, x_u, k=3, search="digits", output_dir="sel")  # doctest: +SKIP
    >>> result.pool_file.read_text().splitlines()[1]  # doctest: +SKIP
    'digits-lab/svhn-resnet-n000-s0@6f1c...'
    """
    start = time.perf_counter()
    if objective not in ("samples", "clusters", "coverage"):
        raise ValueError(f"objective must be 'samples', 'clusters' or 'coverage'; got {objective!r}.")
    if clusters is not None and (not isinstance(clusters, int) or clusters < 1):
        raise ValueError(f"clusters must be a positive integer; got {clusters!r}.")
    cache = Path(cache_dir or cache_root() / "selection")
    label_map = load_label_map(label_map)
    _check_label_map(label_map, label_names)
    if candidates is None:
        candidates = discover_candidates(
            search=search,
            filters=filters,
            author=author,
            pipeline_tag=pipeline_tag,
            max_candidates=max_candidates,
            ids=ids,
            use_search=use_search,
            cache_dir=cache,
            token=token,
        )
    candidates = list(candidates)
    if not candidates:
        raise ValueError("No candidate teachers: widen the search (--search, --filter) or pass --candidates_file.")
    called = [c for c in candidates if is_endpoint(c.id)]
    survivors = screen_metadata(
        [c for c in candidates if not is_endpoint(c.id)],
        label_names,
        allow_remote_code=allow_remote_code,
        max_parameters=max_parameters,
        max_weight_bytes=max_weight_bytes,
        min_covered=min_covered,
        label_map=label_map,
        cache_dir=cache,
        token=token,
    )
    survivors.sort(key=lambda c: -(c.downloads or 0))
    survivors = apply_download_budget(survivors, download_budget_bytes)
    downloads = download_candidates(survivors, token=token, max_workers=max_workers)
    kept, outs = score_candidates(
        survivors + called,
        label_names,
        labeled_images,
        labeled_labels,
        unlabeled_images,
        cache_dir=cache,
        label_map=label_map,
        check_permutations=check_permutations,
        token=token,
        endpoint=endpoint,
    )
    if not kept:
        raise ValueError("No candidate passed the screens: see the reasons in the report; widen the search.")
    y = labeled_labels
    domain_names = group_names  # the latent domains' names, before labeled clusters may take the place of domains
    hard = (outs.labeled.argmax(-1) == y[:, None]).float()  # (n, K)
    soft = outs.labeled[torch.arange(len(y)), :, y]  # (n, K) probability of the true class
    preds = outs.unlabeled.argmax(-1)  # (m, K)
    agreement = (preds[:, :, None] == preds[:, None, :]).float().mean(0)  # (K, K)
    # Routing sends a region of the input space to one teacher, so the objective asks for a competent teacher per
    # cluster of labeled samples (k-means on how all kept candidates see them), weighted by cluster size; with one
    # sample per cluster it is the oracle reachable accuracy, which many weak teachers inflate by luck.
    # The true-class probability only breaks ties between equally good teachers.
    n_clusters = min(clusters or 2 * k, len(y))
    cluster = _kmeans(outs.labeled.flatten(1), n_clusters, seed)  # (n,)
    members = torch.nn.functional.one_hot(cluster, n_clusters).float().T  # (G, n)
    sizes = members.sum(1)
    group_acc = (members @ (hard + 0.01 * soft)) / sizes.clamp_min(1)[:, None]  # (G, K)
    # Latent domains show in the unlabeled data, not in a few labels: each cluster of it needs a competent teacher.
    u_cluster, l_cluster, competence, labeled_acc = cluster_competence(
        outs.labeled, y, outs.unlabeled, clusters or 2 * k, seed=seed
    )
    u_sizes = torch.bincount(u_cluster, minlength=competence.shape[0]).float()
    if objective == "clusters":
        chosen, _ = greedy_select(group_acc[sizes > 0], k, agreement, redundancy, sizes[sizes > 0])
    elif objective == "coverage":
        chosen, _ = greedy_select(competence[u_sizes > 0], k, agreement, redundancy, u_sizes[u_sizes > 0])
    else:
        # The probability a teacher gives the true class: a weak teacher right by luck adds little.
        chosen, _ = greedy_select(soft, k, agreement, redundancy)
    curve = [hard[:, chosen[: i + 1]].max(1).values.mean().item() for i in range(len(chosen))]
    exact = (members @ hard) / sizes.clamp_min(1)[:, None]  # (G, K) hard accuracy per cluster
    routed = [(sizes @ exact[:, chosen[: i + 1]].max(1).values).item() / len(y) for i in range(len(chosen))]
    for rank, j in enumerate(chosen, start=1):
        kept[j].status, kept[j].rank = "selected", rank
    if labeled_groups is None:
        labeled_groups, group_names = cluster, [f"cluster {g}" for g in range(n_clusters)]
    elif group_names is None:
        group_names = [str(g) for g in range(int(labeled_groups.max()) + 1)]
    groups = group_coverage(hard, chosen, labeled_groups, group_names)
    for g in groups.values():
        g["weak"] = g["teacher"] < weak_threshold
    covered = unlabeled_coverage(
        competence,
        labeled_acc,
        u_cluster,
        l_cluster,
        chosen,
        [c.id for c in kept],
        unlabeled_groups,
        domain_names,
        weak_threshold,
    )
    result = SelectionResult(
        candidates, [kept[j] for j in chosen], curve, groups, downloads, time.perf_counter() - start, routed
    )
    result.clusters = covered
    result.coverage_matrix = competence[:, chosen].tolist()
    result.label_map = _selected_label_map(label_map, result.selected)
    if output_dir is not None:
        write_outputs(result, output_dir, weak_threshold=weak_threshold)
    return result


def _selected_label_map(label_map: dict | None, selected: Sequence[Candidate]) -> dict | None:
    """The label map for training the selected pool: a training `ModelPool` rejects entries for teachers it lacks
    and shared names none of its teachers knows, so keep only what the selected teachers use (keyed by pinned id)."""
    if not label_map:
        return None
    known = set().union(*(label_keys(c.labels or []) for c in selected))
    out: dict = {}
    for target, names in _shared_entries(label_map).items():
        mine = [n for n in names if normalize_label(n) in known]
        if mine or not names:
            out[target] = mine
    for c in selected:
        own = _own_entries(label_map, c)
        if own:
            out[c.id] = own
    return out or None


# --------------------------------------------------------------------------------------------------- outputs


def write_outputs(result: SelectionResult, output_dir: str | os.PathLike, weak_threshold: float = 0.7) -> None:
    out = Path(output_dir)
    lines = ["# Teachers selected by hf_mrl.selection, pinned to the commits that were screened"]
    if result.label_map:
        atomic_write_json(out / "label_map.json", result.label_map)
        lines.append("# their labels were matched with label_map.json: train with --label_map label_map.json")
    for c in result.selected:
        lines.append(f"{c.id}  # accuracy {c.scores['accuracy']:.3f}, LEEP {c.scores['leep']:.3f}")
    result.pool_file = atomic_write_text(out / "pool.txt", "\n".join(lines) + "\n")
    _plot(result.curve, result.routed_curve, out / "reachable.png")
    if result.clusters and result.selected:
        _plot_coverage(result, out / "coverage.png", weak_threshold)
    atomic_write_json(
        out / "report.json",
        {
            "selected": [c.id for c in result.selected],
            "reachable_accuracy": result.curve,
            "reachable_one_teacher_per_cluster": result.routed_curve,
            "groups": result.groups,
            "unlabeled_clusters": result.clusters,
            "label_map": result.label_map,
            "weight_downloads": result.weight_downloads,
            "seconds": result.seconds,
            "candidates": [c.to_dict() for c in result.candidates],
        },
    )
    result.report_file = atomic_write_text(out / "report.md", _markdown(result, weak_threshold))


def _plot(curve: list[float], routed: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(range(1, len(curve) + 1), curve, marker="o", label="oracle: any teacher right")
    if routed:
        ax.plot(range(1, len(routed) + 1), routed, marker="s", label="one teacher per cluster")
    ax.set_xlabel("K (teachers selected)")
    ax.set_ylabel("reachable accuracy (labeled set)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_coverage(result: SelectionResult, path: Path, weak_threshold: float) -> None:
    """Heat map: competence of each selected teacher on each cluster of the unlabeled sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [result.coverage_matrix[e["cluster"]] for e in result.clusters]
    labels = [
        f"{e['cluster']} ({e['share']:.0%}{', ' + e['domain'] if 'domain' in e else ''})"
        + (" weak" if e["weak"] else "")
        for e in result.clusters
    ]
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(result.selected), 1.0 + 0.32 * len(rows)))
    im = ax.imshow(torch.tensor(rows).numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    ax.set_xticks(range(len(result.selected)), [f"#{c.rank} {c.repo_id.split('/')[-1]}" for c in result.selected])
    ax.tick_params(axis="x", labelrotation=30, labelsize=6)
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.set_title(f"competence per cluster of the unlabeled sample (weak: all < {weak_threshold:.2f})", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


_REASON_KIND = re.compile(r":| \(| of ")


def _short(cid: str | None) -> str:
    return "" if cid is None else cid.split("@")[0]


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _markdown(result: SelectionResult, weak_threshold: float) -> str:
    n_rej = sum(c.status == "rejected" for c in result.candidates)
    lines = [
        "# Teacher selection report",
        "",
        f"{len(result.candidates)} candidates, {n_rej} rejected, {len(result.selected)} selected; "
        f"{result.weight_downloads} weight downloads; {result.seconds:.1f} s.",
        "",
        "Reachable accuracy (a labeled sample counts when one selected teacher gets it right) after each pick: "
        + ", ".join(f"K={i + 1}: {a:.3f}" for i, a in enumerate(result.curve))
        + "; with one teacher per cluster of labeled samples: "
        + ", ".join(f"K={i + 1}: {a:.3f}" for i, a in enumerate(result.routed_curve))
        + " (`reachable.png`).",
        "",
        "## Coverage per group",
        "",
        "A group is covered when one selected teacher is competent on it (routing picks a teacher per region of "
        "the input space, not per sample). `oracle reach` counts a sample when any selected teacher is right.",
        "",
        "| group | samples | best selected teacher | oracle reach | best candidate found | |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in result.groups.items():
        note = f"**weak: below {weak_threshold:.2f}**" if g["weak"] else ""
        lines.append(
            f"| {name} | {g['samples']} | {g['teacher']:.3f} | {g['reach']:.3f} | {g['best_candidate']:.3f} | {note} |"
        )
    weak = [n for n, g in result.groups.items() if g["weak"]]
    none_found = [n for n in weak if result.groups[n]["best_candidate"] < weak_threshold]
    if weak:
        lines += [
            "",
            f"**Poorly covered: {', '.join(weak)}.** No selected teacher is competent there, so MRL cannot route those "
            "samples to a good teacher and the student learns them mostly from their labels.",
        ]
        if none_found:
            lines.append(
                f"No candidate found is competent on {', '.join(none_found)} either: search for teachers of that "
                "domain (other --search terms or --filter tags, a larger --max_candidates), label more samples of it, "
                "or fine-tune a teacher on its labeled samples and add it with --candidates_file. See docs/selection.md."
            )
        else:
            lines.append("A competent candidate exists but was not selected: raise --k or lower --redundancy.")
    if result.clusters:
        lines += [
            "",
            "## Coverage of the unlabeled data's clusters",
            "",
            "The unlabeled sample, clustered by how sure each kept candidate is of it (a latent domain shows as a "
            "group of samples the same teachers are sure of). *Competence*: a teacher's accuracy on the cluster's "
            "labeled samples, shrunk towards its labeled-set accuracy at the confidence it shows on the cluster's "
            "unlabeled samples (`coverage.png`).",
            "",
            "| cluster | unlabeled samples | main domain | labeled samples | most competent selected teacher "
            "| competence | its labeled accuracy | best candidate found | its competence | |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in result.clusters:
            note = f"**weak: below {weak_threshold:.2f}**" if e["weak"] else ""
            lines.append(
                f"| {e['cluster']} | {e['samples']} ({e['share']:.0%}) | {e.get('domain', '')} | {e['labeled']} "
                f"| {_short(e['teacher'])} | {e['competence']:.3f} | {_fmt(e['labeled_accuracy'])} "
                f"| {_short(e['best_candidate'])} | {e['best_candidate_competence']:.3f} | {note} |"
            )
        weak = [e for e in result.clusters if e["weak"]]
        if weak:
            share = sum(e["share"] for e in weak)
            lines += [
                "",
                f"**{len(weak)} cluster(s) of the unlabeled data ({share:.0%} of it) have no competent selected "
                "teacher**"
                + (": main domains " + ", ".join(e["domain"] for e in weak) if "domain" in weak[0] else "")
                + ". See docs/selection.md, *When a domain is poorly covered*.",
            ]
    rejected: dict[str, int] = {}
    for c in result.candidates:
        if c.status == "rejected":
            key = f"{c.stage}: {_REASON_KIND.split(c.reason)[0]}"  # the kind of reason, without its details
            rejected[key] = rejected.get(key, 0) + 1
    if rejected:
        lines += ["", "Rejected: " + "; ".join(f"{n} {k}" for k, n in sorted(rejected.items(), key=lambda i: -i[1]))]
    lines += [
        "",
        "## Candidates",
        "",
        "| candidate | status | reason | downloads | library | license | accuracy | LEEP | confidence | flags |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"selected": 0, "kept": 1, "rejected": 2}
    for c in sorted(result.candidates, key=lambda c: (order[c.status], c.rank or 0, -(c.scores.get("accuracy") or 0))):
        status = f"selected #{c.rank}" if c.status == "selected" else c.status
        reason = f"{c.stage}: {c.reason}" if c.reason else ""
        reason = reason.replace("|", "/").replace("\n", " ")
        s = c.scores
        lines.append(
            f"| {c.id} | {status} | {reason} | {_fmt(c.downloads)} | {_fmt(c.library)} | {_fmt(c.license)} "
            f"| {_fmt(s.get('accuracy'))} | {_fmt(s.get('leep'))} | {_fmt(s.get('confidence'))} "
            f"| {'; '.join(c.flags).replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------------- CLI


def _parse_size(text: str | None) -> int | None:
    if text is None:
        return None
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    t = text.strip().upper().removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise ValueError(
            f"Invalid size {text!r}: expected a number with an optional K/M/G unit (e.g. 500M)."
        ) from None


def build_parser() -> argparse.ArgumentParser:
    from .cli import HelpFormatter, _show_defaults, add_data_arguments

    p = argparse.ArgumentParser(
        prog="hf-mrl select", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    p.add_argument("--output_dir", required=True, help="writes pool.txt, report.md, report.json, reachable.png")
    p.add_argument("--k", type=int, default=3, help="how many teachers to select")
    add_data_arguments(p, dataset_default="digits-ld")  # the same data flags as `hf-mrl train`, carved the same way
    p.add_argument("--unlabeled_sample", type=int, default=2000, help="unlabeled samples scored per candidate")
    p.add_argument("--search", default=None, help="Hub search term (model id substring)")
    p.add_argument("--filter", action="append", default=[], help="Hub filter tag, e.g. a library (repeatable)")
    p.add_argument("--author", default=None)
    p.add_argument("--pipeline_tag", default="image-classification")
    p.add_argument("--max_candidates", type=int, default=100, help="most candidates from the search, by downloads")
    p.add_argument("--candidates_file", default=None, help="ids to consider, one `org/name[@rev]` a line")
    p.add_argument("--no_search", action="store_true", help="only the ids of --candidates_file")
    p.add_argument("--allow_remote_code", action="store_true", help="do not reject `auto_map` repos at metadata")
    p.add_argument("--max_parameters", type=int, default=100_000_000)
    p.add_argument("--max_weight_size", default=None, help="per candidate, e.g. 500M")
    p.add_argument("--min_covered", type=int, default=1, help="fewest target classes a candidate must know")
    p.add_argument("--download_budget", default=None, help="total weights to download, e.g. 2G")
    p.add_argument("--redundancy", type=float, default=0.05)
    p.add_argument("--weak_threshold", type=float, default=0.7)
    p.add_argument(
        "--clusters",
        type=int,
        default=None,
        help="clusters of the unlabeled sample whose coverage the report shows (and of the labeled set for "
        "--objective clusters); default 2k",
    )
    p.add_argument(
        "--objective",
        choices=["samples", "clusters", "coverage"],
        default="samples",
        help="greedy objective: best true-class probability per labeled sample (samples), best teacher per "
        "cluster of labeled samples (clusters), or a competent teacher per cluster of the unlabeled sample (coverage)",
    )
    p.add_argument(
        "--label_map",
        default=None,
        help="JSON label map as train_mrl.py takes it ({target label: [teacher labels]} and/or {teacher id: {...}}): "
        "candidates whose labels differ by name are matched with it; label_map.json keeps the selected pool's part",
    )
    p.add_argument(
        "--keep_permuted",
        action="store_true",
        help="do not reject candidates whose labels look permuted (on the labeled set or against other candidates)",
    )
    p.add_argument("--cache_dir", default=None, help="searches, metadata, teacher outputs")
    p.add_argument("--max_workers", type=int, default=4, help="concurrent downloads")
    add_endpoint_arguments(p)
    _show_defaults(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """`hf-mrl select`: discover, screen and select K teachers; prints where the pool file and report are."""
    from .cli import data_options
    from .pool import parse_pool_file
    from .target import load_target
    from .utils import torch_threads

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.no_search and not args.candidates_file:
        raise ValueError("--no_search needs --candidates_file: there would be no candidate.")
    if args.clusters is not None and args.clusters < 1:
        raise ValueError(f"--clusters must be at least 1; got {args.clusters}.")
    from .labels import load_label_map

    label_map = load_label_map(args.label_map)  # a bad file fails here, before the target is loaded
    ids = parse_pool_file(args.candidates_file) if args.candidates_file else []
    try:
        target, described = load_target(args.dataset, args.labeled_per_class, **data_options(args))
    except ValueError as err:  # bad data input: one line, as `hf-mrl train` says it
        sys.exit("error: " + " ".join(str(err).split()))
    gen = torch.Generator().manual_seed(args.seed)
    sample = torch.randperm(len(target.unlabeled_images), generator=gen)[: args.unlabeled_sample]
    with torch_threads(min(torch.get_num_threads(), 2)):
        result = select_pool(
            target.label_names,
            target.labeled_images,
            target.labeled_labels,
            target.unlabeled_images[sample],
            k=args.k,
            output_dir=args.output_dir,
            search=args.search,
            filters=args.filter,
            author=args.author,
            pipeline_tag=args.pipeline_tag or None,
            max_candidates=args.max_candidates,
            ids=ids,
            use_search=not args.no_search,
            labeled_groups=target.labeled_domains,
            group_names=target.domain_names,
            unlabeled_groups=None if target.unlabeled_domains is None else target.unlabeled_domains[sample],
            label_map=label_map,
            check_permutations=not args.keep_permuted,
            seed=args.seed,
            allow_remote_code=args.allow_remote_code,
            max_parameters=args.max_parameters,
            max_weight_bytes=_parse_size(args.max_weight_size),
            min_covered=args.min_covered,
            download_budget_bytes=_parse_size(args.download_budget),
            redundancy=args.redundancy,
            weak_threshold=args.weak_threshold,
            clusters=args.clusters,
            objective=args.objective,
            cache_dir=args.cache_dir,
            max_workers=args.max_workers,
            endpoint=endpoint_options(args),
        )
    print(f"Target: {described}")
    print(f"Selected {len(result.selected)}: " + ", ".join(c.id for c in result.selected))
    print("Reachable accuracy by K: " + ", ".join(f"{a:.3f}" for a in result.curve))
    print(f"{result.weight_downloads} weight downloads, {result.seconds:.1f} s")
    print(f"Pool file: {result.pool_file}\nReport: {result.report_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
