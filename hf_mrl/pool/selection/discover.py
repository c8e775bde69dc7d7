"""Candidates from a Hub search or a list of ids: what a candidate is, the search and its cache."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hf_mrl.pool.endpoint import (
    is_endpoint,
)
from hf_mrl.pool.model_pool import parse_teacher_id
from hf_mrl.utils import atomic_write_json, cache_root, read_json

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
