"""The local Hub's storage: repositories as folders of commits, and the model-info fields the Hub derives from them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


_NAME = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}")


_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


class HubError(Exception):
    """An error answered the way the Hub does: status, ``X-Error-Code``/``X-Error-Message`` and ``{"error": ...}``."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.extra = status, message, code, headers or {}, extra


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # email.message.Message: case-insensitive
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e

    @property
    def bearer(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    """Git blob sha1: the ``oid`` the Hub reports for regular files and that the client compares to skip uploads."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    # Readers run in other threads: never let them see a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _check_path(path: str) -> str:
    parts = path.strip("/").split("/")  # a trailing "/" marks a folder
    if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return "/".join(parts)


class _Repo:
    """One repo on disk: content-addressed objects, one JSON snapshot per commit, and refs."""

    def __init__(self, path: Path, repo_type: str, repo_id: str):
        self.path, self.repo_type, self.repo_id = path, repo_type, repo_id

    def _read(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def _write(self, name: str, data: dict) -> None:
        _write_atomic(self.path / name, json.dumps(data, indent=1).encode())

    @property
    def meta(self) -> dict:
        return self._read("meta.json")

    def update_meta(self, **changes: Any) -> None:
        self._write("meta.json", {**self.meta, **changes})

    @property
    def refs(self) -> dict[str, dict[str, str]]:
        return self._read("refs.json")

    def set_ref(self, kind: str, name: str, sha: str | None) -> None:
        refs = self.refs
        if sha is None:
            refs[kind].pop(name, None)
        else:
            refs[kind][name] = sha
        self._write("refs.json", refs)

    def commit(self, sha: str) -> dict:
        return self._read(f"commits/{sha}.json")

    def resolve(self, revision: str) -> str:
        """Commit sha of a branch, tag, full sha or unique sha prefix (>= 7 hex chars)."""
        refs = self.refs
        for kind in ("branches", "tags"):
            if revision in refs[kind]:
                return refs[kind][revision]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [p.stem for p in (self.path / "commits").glob(f"{revision}*.json")]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def files(self, sha: str) -> dict[str, str]:
        return self.commit(sha)["files"]

    def blob(self, oid: str) -> Path:
        return self.path / "objects" / oid

    def add_blob(self, data: bytes) -> str:
        oid = _git_oid(data)
        if not self.blob(oid).exists():
            _write_atomic(self.blob(oid), data)
        return oid

    def add_commit(self, files: dict[str, str], parents: list[str], title: str, message: str, author: str) -> str:
        date = _now()
        record = {"parents": parents, "title": title, "message": message, "author": author, "date": date}
        # The nanosecond clock keeps two identical commits on the same parent distinct, as git's timestamps do.
        seed = json.dumps({**record, "files": files, "ns": time.time_ns()}, sort_keys=True).encode()
        sha = hashlib.sha1(seed).hexdigest()
        self._write(f"commits/{sha}.json", {"id": sha, **record, "files": files})
        return sha


_CONFIG_KEYS = ("architectures", "model_type", "auto_map")  # the config.json keys the Hub shows in model info


_LIST_FIELDS = ("id", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag", "library_name")


_FULL_FIELDS = ("author", "sha", "lastModified", "gated", "disabled", "siblings")


_SORT_KEYS = {"downloads", "likes", "lastModified", "createdAt", "trendingScore", "id"}


def _card_metadata(repo: _Repo, files: dict[str, str]) -> dict:
    """The YAML header of README.md (the model card metadata), {} when absent or invalid."""
    if "README.md" not in files:
        return {}
    text = repo.blob(files["README.md"]).read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    import yaml  # a huggingface_hub dependency

    try:
        data = yaml.safe_load(m[1])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _safetensors_parameters(repo: _Repo, files: dict[str, str]) -> dict[str, Any] | None:
    """Parameter counts per dtype from the headers of the commit's safetensors files, as the Hub reports them."""
    params: dict[str, int] = {}
    found = False
    for path, oid in files.items():
        if not path.endswith(".safetensors"):
            continue
        counts: dict[str, int] = {}
        try:
            with open(repo.blob(oid), "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(min(n, 1 << 24)))
            for name, entry in header.items():
                if name != "__metadata__":
                    numel = 1
                    for d in entry["shape"]:
                        numel *= int(d)
                    counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + numel
        except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError):
            continue  # a truncated or corrupted file is listed but not counted, as on the Hub
        found = True
        for dtype, numel in counts.items():
            params[dtype] = params.get(dtype, 0) + numel
    return {"parameters": params, "total": sum(params.values())} if found else None


def _model_fields(repo: _Repo, sha: str, meta: dict) -> dict[str, Any]:
    """The model-only fields of model info at commit `sha` (list_models shows a subset of them)."""
    files = repo.files(sha)
    card = _card_metadata(repo, files)
    config: dict = {}
    if "config.json" in files:
        try:
            loaded = json.loads(repo.blob(files["config.json"]).read_bytes())
            config = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            pass
    library = card.get("library_name")
    if not library and ("model_type" in config or "architectures" in config):
        library = "transformers"
    elif not library and "architecture" in config and "pretrained_cfg" in config:
        library = "timm"
    pipeline = card.get("pipeline_tag")
    if not pipeline and any(str(a).endswith("ForImageClassification") for a in config.get("architectures") or []):
        pipeline = "image-classification"
    card_tags = card.get("tags") or []
    tags = [str(t) for t in (card_tags if isinstance(card_tags, list) else [card_tags])]
    tags += [t for t in (library, pipeline, config.get("model_type")) if t]
    if any(p.endswith(".safetensors") for p in files):
        tags.append("safetensors")
    if config.get("auto_map"):
        tags.append("custom_code")
    if card.get("license"):
        tags.append(f"license:{card['license']}")
    tags.append("region:us")
    fields: dict[str, Any] = {
        "modelId": repo.repo_id,
        "downloads": meta.get("downloads", 0),
        "likes": meta.get("likes", 0),
        "trendingScore": 0,
        "library_name": library,
        "pipeline_tag": pipeline,
        "tags": list(dict.fromkeys(tags)),
        "cardData": card or None,
        "usedStorage": sum(repo.blob(oid).stat().st_size for oid in set(files.values())),
    }
    if config:
        fields["config"] = {k: config[k] for k in _CONFIG_KEYS if k in config}
    if (safetensors := _safetensors_parameters(repo, files)) is not None:
        fields["safetensors"] = safetensors
    return {k: v for k, v in fields.items() if v is not None}
