"""A minimal Hugging Face Hub-protocol HTTP server for tests (pure stdlib).

Repos live on disk under ``root/{models,datasets,spaces}/{namespace}/{name}/``:

- ``objects/<oid>``: file contents, content-addressed by their git blob sha1 (what the Hub calls a file's ``oid``),
- ``commits/<sha>.json``: one full snapshot per commit (``{path: oid}`` plus parents, title, message, date),
- ``refs.json``: ``{"branches": {name: sha}, "tags": {name: sha}}``, ``meta.json``: private/gated flags.

Every file is stored as a regular git blob: ``preupload`` answers ``uploadMode: "regular"``, so ``huggingface_hub``
sends contents inline (base64) in the NDJSON ``commit`` payload and never needs LFS or Xet. Downloads are served
directly by ``/{repo_id}/resolve/{revision}/{path}`` (no redirect), with the ``X-Repo-Commit``, ``ETag`` and
``Content-Length`` headers that ``hf_hub_download`` requires. Errors carry the ``X-Error-Code`` header that
``huggingface_hub.utils.hf_raise_for_status`` maps to ``RepositoryNotFoundError``, ``RevisionNotFoundError``,
``EntryNotFoundError`` and ``GatedRepoError``.

Dataset repositories are served like model repositories: a parquet dataset (:func:`upload_parquet_dataset`) loads
by id through ``datasets.load_dataset``.

:func:`endpoint_patches` and :func:`cache_patches` list the module attributes that cache the Hub endpoint or the
cache folders at import time, for tests to monkeypatch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

logger = logging.getLogger(__name__)

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block interpreter exit
    hub: LocalHub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: httpx reuses connections
    timeout = 60  # close idle keep-alive connections eventually
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40ms delayed-ACK stall
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("LocalHub: " + format, *args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        hub.requests_log.append((method, unquote(url.path)))
        # Read the whole body first: unread bytes would corrupt the next request on this keep-alive connection.
        request = _Request(method, url.path, parse_qs(url.query), self.headers, self._read_body())
        try:
            response = hub._handle(request)
        except HubError as e:
            headers = {**e.headers, "X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            response = _Response.json({"error": e.message, **e.extra}, e.status, headers)
        except Exception as e:  # a test double must report its own bugs, not hang the client
            logger.exception("LocalHub failed on %s %s", method, self.path)
            response = _Response.json({"error": f"LocalHub internal error: {e!r}"}, 500)
        self.send_response(response.status)
        for key, value in {"Content-Length": str(len(response.body)), **response.headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)


_T = r"(?P<types>models|datasets|spaces)"
_R = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"/api/whoami-v2", "_whoami"),
        ("POST", r"/api/repos/create", "_create_repo"),
        ("DELETE", r"/api/repos/delete", "_delete_repo"),
        ("POST", r"/api/validate-yaml", "_validate_yaml"),
        ("GET", rf"/api/{_T}/{_R}(?:/revision/(?P<rev>[^/]+))?", "_info"),
        ("GET", rf"/api/{_T}/{_R}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "_tree"),
        ("GET", rf"/api/{_T}/{_R}/refs", "_refs"),
        ("GET", rf"/api/{_T}/{_R}/commits/(?P<rev>[^/]+)", "_commits"),
        ("POST", rf"/api/{_T}/{_R}/preupload/(?P<rev>[^/]+)", "_preupload"),
        ("POST", rf"/api/{_T}/{_R}/commit/(?P<rev>[^/]+)", "_commit"),
        ("POST", rf"/api/{_T}/{_R}/branch/(?P<branch>[^/]+)", "_create_branch"),
        ("DELETE", rf"/api/{_T}/{_R}/branch/(?P<branch>[^/]+)", "_delete_branch"),
        ("POST", rf"/api/{_T}/{_R}/tag/(?P<rev>[^/]+)", "_create_tag"),
        ("GET|HEAD", rf"/(?:(?P<types>datasets|spaces)/)?{_R}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "_resolve"),
    ]
]


# ------------------------------------------------------------------------------------- model search and model info
# What the Hub derives from a model repo's files for `GET /api/models` (HfApi.list_models) and model info: the card
# metadata (README.md YAML), library and pipeline tag, tags, a few config.json keys, safetensors parameter counts,
# plus download/like counters kept in meta.json (set with `LocalHub.set_model_stats`).

_CONFIG_KEYS = ("architectures", "model_type", "auto_map")  # the config.json keys the Hub shows in model info
_LIST_FIELDS = ("id", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag", "library_name")
_FULL_FIELDS = ("author", "sha", "lastModified", "gated", "disabled", "siblings")
_SORT_KEYS = {"downloads", "likes", "lastModified", "createdAt", "trendingScore", "id"}
_PAGE = 1000  # the Hub's largest page


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


class _ModelSearch:
    """`GET /api/models`: the Hub's model search (filters, sort, limit, Link-header pages, expand), for LocalHub."""

    root: Path

    def set_model_stats(self, repo_id: str, *, downloads: int | None = None, likes: int | None = None) -> None:
        """Set the download / like counters that model info reports and `sort="downloads"` orders by."""
        changes = {k: v for k, v in (("downloads", downloads), ("likes", likes)) if v is not None}
        with self._lock:  # type: ignore[attr-defined]
            self._get_repo("model", repo_id).update_meta(**changes)  # type: ignore[attr-defined]

    def _model_repos(self) -> list[_Repo]:
        base = self.root / "models"
        repos = []
        for path in sorted(base.glob("*/*")) if base.is_dir() else []:
            if (path / "refs.json").exists():
                repos.append(_Repo(path, "model", f"{path.parent.name}/{path.name}"))
        return repos

    def _list_models(self, request: _Request) -> _Response:
        q = request.query

        def one(name: str) -> str | None:
            return q[name][-1] if q.get(name) else None

        def flag(name: str) -> bool:
            return (one(name) or "").lower() in ("1", "true")

        search, author, pipeline = (one("search") or "").lower(), one("author"), one("pipeline_tag")
        wanted = [*q.get("filter", []), *q.get("library", [])]  # `library=` is the older spelling of a filter
        gated = one("gated")
        sort, direction = one("sort"), int(one("direction") or -1)
        if sort is not None and sort not in _SORT_KEYS:
            raise HubError(400, f"Invalid sort key {sort!r}: expected one of {sorted(_SORT_KEYS)}")
        try:
            limit = min(int(one("limit") or _PAGE), _PAGE)
            cursor = int(one("cursor") or 0)
        except ValueError as e:
            raise HubError(400, f"Invalid limit or cursor: {e}") from e
        expand = q.get("expand", [])
        rows = []
        for repo in self._model_repos():
            meta = repo.meta
            if meta["private"] and not self._authorized(request):  # type: ignore[attr-defined]
                continue
            if search and search not in repo.repo_id.lower():
                continue
            if author and repo.repo_id.split("/")[0] != author:
                continue
            if gated is not None and bool(meta["gated"]) != (gated.lower() in ("1", "true")):
                continue
            sha = repo.refs["branches"].get("main")
            if sha is None:
                continue
            fields = _model_fields(repo, sha, meta)
            if pipeline and fields.get("pipeline_tag") != pipeline:
                continue
            if not all(w in fields["tags"] for w in wanted):
                continue
            commit = repo.commit(sha)
            full = {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "lastModified": commit["date"],
                "createdAt": meta["createdAt"],
                "private": meta["private"],
                "gated": meta["gated"],
                "disabled": False,
                "siblings": [{"rfilename": p} for p in sorted(commit["files"])],
                **fields,
            }
            rows.append(full)
        if sort is not None:
            rows.sort(key=lambda r: r["id"])  # ties in a stable, documented order
            rows.sort(key=lambda r: r.get(sort) or 0, reverse=direction < 0)
        page = rows[cursor : cursor + limit]
        if expand:
            keys = {"_id", "id", *expand}
        else:
            keys = {"_id", "id", "modelId", "createdAt", *_LIST_FIELDS}
            keys |= set(_FULL_FIELDS) if flag("full") else set()
            keys |= {"cardData"} if flag("cardData") else set()
            keys |= {"config"} if flag("config") else set()
        headers = {}
        if cursor + limit < len(rows):
            params = [(k, v) for k, vs in q.items() if k != "cursor" for v in vs] + [("cursor", str(cursor + limit))]
            headers["Link"] = f'<{self.url}/api/models?{urlencode(params)}>; rel="next"'  # type: ignore[attr-defined]
        return _Response.json([{k: v for k, v in r.items() if k in keys} for r in page], headers=headers)


_ROUTES.append(("GET", re.compile(r"/api/models"), "_list_models"))


class LocalHub(_ModelSearch):
    """A Hub-protocol server on 127.0.0.1 storing repos under ``root``; use as a context manager.

    Reads are anonymous (except private repos); when ``token`` is set, writes and private reads require
    ``Authorization: Bearer <token>``. Gated repos (see :meth:`set_gated`) list their files but refuse downloads.
    With ``refuse`` set, every request is answered ``403 refuse``: a stand-in endpoint for code that must not use a
    Hub, which fails at once (a refused connection or a 5xx would be retried by ``huggingface_hub`` for ~20s).
    """

    def __init__(
        self,
        root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        *,
        refuse: str | None = None,
    ):
        self.root = Path(root)
        self.host, self.port, self.token, self.refuse = host, port, token, refuse
        self.username = "local-user"
        self.requests_log: list[tuple[str, str]] = []
        self._lock = threading.RLock()  # serializes writes (commits, refs, repo creation)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> LocalHub:
        self.root.mkdir(parents=True, exist_ok=True)
        self._server = _Server((self.host, self.port), _Handler)
        self._server.hub = self
        # A short poll interval keeps stop() fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="LocalHub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_gated(self, repo_id: str, gated: bool = True, repo_type: str = "model") -> None:
        """Gate a repo: its files answer 401/403 ``GatedRepo``, as the real Hub does for users without access."""
        with self._lock:
            self._get_repo(repo_type, repo_id).update_meta(gated="auto" if gated else False)

    # ----------------------------------------------------------------------------------------------- plumbing

    def _handle(self, request: _Request) -> _Response:
        if self.refuse is not None:
            raise HubError(403, self.refuse)
        for methods, pattern, handler in _ROUTES:
            if (match := pattern.fullmatch(request.path)) and request.method in methods.split("|"):
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                return getattr(self, handler)(request, **params)
        logger.warning("LocalHub: no route for %s %s", request.method, request.path)
        raise HubError(404, f"LocalHub does not implement {request.method} {request.path}")

    def _authorized(self, request: _Request) -> bool:
        return request.bearer is not None and (self.token is None or request.bearer == self.token)

    def _require_write(self, request: _Request) -> None:
        if self.token is not None and not self._authorized(request):
            # This exact message makes the client raise a plain 401 HfHubHTTPError, not RepositoryNotFoundError.
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts) or ".." in repo_id:
            raise HubError(400, f"Invalid repo id: {repo_id!r}")
        return self.root / f"{repo_type}s" / parts[0] / parts[1]

    def _get_repo(self, repo_type: str, repo_id: str, request: _Request | None = None) -> _Repo:
        path = self._repo_dir(repo_type, repo_id)
        repo = _Repo(path, repo_type, repo_id)
        exists = (path / "refs.json").exists()  # written last by _create_repo
        if not exists or (request is not None and repo.meta["private"] and not self._authorized(request)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _api_repo(self, request: _Request, types: str, repo: str) -> _Repo:
        return self._get_repo(REPO_TYPES[types], repo, request)

    def _branch_head(self, repo: _Repo, branch: str) -> str:
        head = repo.refs["branches"].get(branch)
        if head is None:  # commits only go to branches
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return head

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_TYPE_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ----------------------------------------------------------------------------------------------- routes

    def _whoami(self, request: _Request) -> _Response:
        if not self._authorized(request):
            raise HubError(401, "Invalid credentials in Authorization header")
        token_info = {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}
        user = {"type": "user", "id": "0" * 24, "name": self.username, "fullname": "Local User", "orgs": []}
        return _Response.json({**user, "auth": token_info})

    def _create_repo(self, request: _Request) -> _Response:
        self._require_write(request)
        body = request.json()
        repo_type = body.get("type") or "model"
        if repo_type not in _TYPE_PREFIX:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{body.get('organization') or self.username}/{body['name']}"
        path = self._repo_dir(repo_type, repo_id)
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        with self._lock:
            repo = _Repo(path, repo_type, repo_id)
            if (path / "refs.json").exists():  # `create_repo(exist_ok=True)` reads the url from the 409 body
                raise HubError(409, f"You already created this {repo_type} repo", url=self._repo_url(repo))
            path.mkdir(parents=True, exist_ok=True)
            repo._write("meta.json", {"private": private, "gated": False, "createdAt": _now()})
            # Like the real Hub, a new repo starts with one commit holding a default .gitattributes.
            files = {".gitattributes": repo.add_blob(_GITATTRIBUTES)}
            sha = repo.add_commit(files, [], "initial commit", "", self.username)
            repo._write("refs.json", {"branches": {"main": sha}, "tags": {}})
        return _Response.json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self, request: _Request) -> _Response:
        self._require_write(request)
        body = request.json()
        repo_id = f"{body.get('organization') or self.username}/{body['name']}"
        with self._lock:
            repo = self._get_repo(body.get("type") or "model", repo_id, request)
            shutil.rmtree(repo.path)
        return _Response.json({})

    def _validate_yaml(self, request: _Request) -> _Response:
        return _Response.json({"errors": [], "warnings": []})

    def _info(self, request: _Request, types: str, repo: str, rev: str = "main") -> _Response:
        r = self._api_repo(request, types, repo)
        sha = r.resolve(rev)
        commit, meta = r.commit(sha), r.meta
        blobs = request.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, oid in sorted(commit["files"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=r.blob(oid).stat().st_size, blobId=oid)
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(r.repo_id.encode()).hexdigest()[:24],
            "id": r.repo_id,
            "author": r.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": meta["createdAt"],
            "private": meta["private"],
            "gated": meta["gated"],
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if r.repo_type == "model":
            info.update(_model_fields(r, sha, meta))  # card, config, library, pipeline, tags, safetensors, stats
        return _Response.json(info)

    def _tree(self, request: _Request, types: str, repo: str, rev: str, path: str = "") -> _Response:
        r = self._api_repo(request, types, repo)
        files = r.files(r.resolve(rev))
        recursive = request.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        under = {p: oid for p, oid in files.items() if p.startswith(prefix)}
        if prefix and not under:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for p, oid in under.items():
            parts = p[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # folders leading to the file
                folder = prefix + "/".join(parts[:i])
                content = sorted((k, v) for k, v in files.items() if k.startswith(folder + "/"))
                tree_id = hashlib.sha1(repr(content).encode()).hexdigest()
                entries[folder] = {"type": "directory", "oid": tree_id, "size": 0, "path": folder}
            if recursive or len(parts) == 1:
                entries[p] = {"type": "file", "oid": oid, "size": r.blob(oid).stat().st_size, "path": p}
        return _Response.json([entries[k] for k in sorted(entries)])

    def _refs(self, request: _Request, types: str, repo: str) -> _Response:
        refs = self._api_repo(request, types, repo).refs

        def fmt(kind: str, prefix: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": s} for n, s in sorted(refs[kind].items())]

        return _Response.json(
            {"branches": fmt("branches", "heads"), "tags": fmt("tags", "tags"), "converts": [], "pullRequests": []}
        )

    def _commits(self, request: _Request, types: str, repo: str, rev: str) -> _Response:
        r = self._api_repo(request, types, repo)
        history, sha = [], r.resolve(rev)
        while sha:
            c = r.commit(sha)
            history.append(
                {
                    "id": sha,
                    "title": c["title"],
                    "message": c["message"],
                    "date": c["date"],
                    "authors": [{"user": c["author"]}],
                }
            )
            sha = c["parents"][0] if c["parents"] else None
        return _Response.json(history)

    def _preupload(self, request: _Request, types: str, repo: str, rev: str) -> _Response:
        self._require_write(request)
        r = self._api_repo(request, types, repo)
        head = self._branch_head(r, rev)
        current = r.files(head)
        # "regular" for every file: the client then inlines contents in the commit payload (no LFS, no Xet).
        # `oid` lets the client skip files that did not change.
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": current.get(f["path"])}
            for f in request.json().get("files", [])
        ]
        return _Response.json({"files": files, "commitOid": head})

    def _commit(self, request: _Request, types: str, repo: str, rev: str) -> _Response:
        self._require_write(request)
        if request.query.get("create_pr", ["0"])[0] not in ("0", "false", "False"):
            raise HubError(400, "LocalHub does not support pull requests")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        with self._lock:
            r = self._api_repo(request, types, repo)
            head = self._branch_head(r, rev)
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, f"Parent commit {header['parentCommit']} is not the head of {rev} ({head})")
            files = dict(r.files(head))
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    raw = value["content"]
                    data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                    files[_check_path(value["path"])] = r.add_blob(data)
                elif key == "deletedFile":
                    if files.pop(_check_path(value["path"]), None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = _check_path(value["path"]) + "/"
                    files = {p: oid for p, oid in files.items() if not p.startswith(folder)}
                elif key == "lfsFile":
                    raise HubError(400, f"LocalHub stores no LFS objects (got {value.get('path')!r})")
                elif key != "header":
                    raise HubError(400, f"Unknown commit operation: {key}")
            title, message = header.get("summary") or "update", header.get("description", "")
            sha = r.add_commit(files, [head], title, message, self.username)
            r.set_ref("branches", rev, sha)
        return _Response.json(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self._repo_url(r)}/commit/{sha}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def _create_branch(self, request: _Request, types: str, repo: str, branch: str) -> _Response:
        self._require_write(request)
        with self._lock:
            r = self._api_repo(request, types, repo)
            if branch in r.refs["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            r.set_ref("branches", branch, r.resolve(request.json().get("startingPoint") or "main"))
        return _Response.json({})

    def _delete_branch(self, request: _Request, types: str, repo: str, branch: str) -> _Response:
        self._require_write(request)
        with self._lock:
            r = self._api_repo(request, types, repo)
            self._branch_head(r, branch)
            r.set_ref("branches", branch, None)
        return _Response.json({})

    def _create_tag(self, request: _Request, types: str, repo: str, rev: str) -> _Response:
        self._require_write(request)
        with self._lock:
            r = self._api_repo(request, types, repo)
            tag = request.json()["tag"]
            if tag in r.refs["tags"]:
                raise HubError(409, f"Tag {tag} already exists")
            r.set_ref("tags", tag, r.resolve(rev))
        return _Response.json({})

    def _resolve(self, request: _Request, repo: str, rev: str, path: str, types: str = "models") -> _Response:
        r = self._api_repo(request, types, repo)
        if r.meta["gated"]:
            # 401 for anonymous users, 403 for authenticated users not on the authorized list (as on the Hub).
            kind = REPO_TYPES[types]
            if request.bearer is None:
                msg = f"Access to {kind} {repo} is restricted. You must have access to it and be authenticated."
                raise HubError(401, msg, "GatedRepo")
            raise HubError(
                403, f"Access to {kind} {repo} is restricted and you are not in the authorized list.", "GatedRepo"
            )
        sha = r.resolve(rev)
        oid = r.files(sha).get(path)
        if oid is None:
            # X-Repo-Commit lets the client cache the file's absence for this commit (`.no_exist`).
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = r.blob(oid).read_bytes()
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        status, total = 200, len(data)
        if (m := re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range") or "")) and request.method == "GET":
            start, end = int(m[1]), min(int(m[2] or total - 1), total - 1)
            if start >= total:
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{total}"})
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        return _Response(status, data, headers)


# --------------------------------------------------------------------------------------------------- client patches

Patch = tuple[object, str, Any]


def _loaded(name: str) -> Any:
    return sys.modules.get(name)


def endpoint_patches(endpoint: str) -> list[Patch]:
    """``(object, attribute, value)`` triples that point the in-process Hub clients at ``endpoint``.

    ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import: ``constants.ENDPOINT`` and the derived
    ``HUGGINGFACE_CO_URL_TEMPLATE`` (``hf_hub_url`` builds download URLs from the template and only rewrites URLs that
    start with ``constants.ENDPOINT``, so both must change together). Copies live in the module-level ``HfApi``
    instance (whose bound methods are re-exported, e.g. ``huggingface_hub.model_info`` that timm imports), in
    ``HfFileSystem``'s ``hffs``, in the trusted-origin sets used for redirects, in transformers' cached ``HfApi``
    and in datasets/evaluate configs. Modules not imported yet are skipped: they read ``HF_ENDPOINT`` when imported.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api
    import huggingface_hub.utils._http as hf_http

    endpoint = endpoint.rstrip("/")
    host = urlsplit(endpoint).hostname or ""
    patches: list[Patch] = [
        (constants, "ENDPOINT", endpoint),
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        (constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {host.lower()}),
        (hf_api.api, "endpoint", endpoint),
        (hf_http, "_HUB_ORIGINS", hf_http._HUB_ORIGINS | {hf_http._url_origin(endpoint)}),
    ]
    if fs := _loaded("huggingface_hub.hf_file_system"):
        patches += [(fs.hffs, "endpoint", endpoint), (fs.hffs._api, "endpoint", endpoint)]
    for name in ("huggingface_hub.utils._git_credential", "huggingface_hub.cli.auth"):
        if module := _loaded(name):
            patches.append((module, "ENDPOINT", endpoint))
    if module := _loaded("transformers.utils.hub"):
        patches.append((module, "_hf_api", None))  # lazily re-created with the patched endpoint
    if module := _loaded("datasets.config"):
        patches += [
            (module, "HF_ENDPOINT", endpoint),
            (module, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
        ]
    if module := _loaded("evaluate.config"):
        patches += [
            (module, "HF_ENDPOINT", endpoint),
            (module, "HF_LIST_ENDPOINT", endpoint + "/api/spaces?filter={type}"),
            (module, "HUB_EVALUATE_URL", endpoint + "/spaces/{path}/resolve/{revision}/{name}"),
        ]
    return patches


def cache_patches(hf_home: str | Path) -> list[Patch]:
    """``(object, attribute, value)`` triples moving the in-process ``HF_HOME``-derived paths under ``hf_home``."""
    import huggingface_hub.constants as constants

    home = str(hf_home)
    hub, assets = os.path.join(home, "hub"), os.path.join(home, "assets")
    values = {
        "HF_HOME": home,
        "default_cache_path": hub,
        "default_assets_cache_path": assets,
        "HUGGINGFACE_HUB_CACHE": hub,
        "HF_HUB_CACHE": hub,
        "HUGGINGFACE_ASSETS_CACHE": assets,
        "HF_ASSETS_CACHE": assets,
        "HF_XET_CACHE": os.path.join(home, "xet"),
        "default_xet_cache_path": os.path.join(home, "xet"),
        "HF_TOKEN_PATH": os.path.join(home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": os.path.join(home, ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": os.path.join(home, ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
    }
    patches: list[Patch] = [(constants, k, v) for k, v in values.items() if hasattr(constants, k)]
    for name, attr, value in [
        ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", hub),
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", assets),
        ("transformers.utils.hub", "HF_MODULES_CACHE", os.path.join(home, "modules")),
        ("transformers.dynamic_module_utils", "HF_MODULES_CACHE", os.path.join(home, "modules")),
    ]:
        if (module := _loaded(name)) is not None and hasattr(module, attr):
            patches.append((module, attr, value))
    return patches + _datasets_cache_patches(home)


def _datasets_cache_patches(home: str) -> list[Patch]:
    """``datasets`` copies its cache folders from ``HF_HOME`` / ``HF_DATASETS_CACHE`` at import: move them too, or
    a test's ``load_dataset`` writes to (and, offline, reads "the latest cached version" from) the user's cache."""
    module = _loaded("datasets.config")
    if module is None:
        return []
    cache = Path(home) / "datasets"
    downloads = cache / module.DOWNLOADED_DATASETS_DIR
    values = {
        "HF_CACHE_HOME": home,
        "HF_DATASETS_CACHE": cache,
        "HF_MODULES_CACHE": Path(home) / "modules",
        "DOWNLOADED_DATASETS_PATH": downloads,
        "EXTRACTED_DATASETS_PATH": downloads / module.EXTRACTED_DATASETS_DIR,
    }
    return [(module, k, v) for k, v in values.items() if hasattr(module, k)]


# ----------------------------------------------------------------------------------------------- dataset repositories


def upload_parquet_dataset(
    dataset_dict: Any, repo_id: str, *, revision: str | None = None, token: str | None = None, create: bool = True
) -> str:
    """Publish a ``datasets.DatasetDict`` as a parquet dataset repository, laid out as ``push_to_hub`` lays it out.

    One shard a split, ``data/{split}-00000-of-00001.parquet`` (the file names ``datasets`` reads split names from;
    features such as ``ClassLabel`` names travel in the parquet schema). Uploaded with ``HfApi.upload_folder`` as
    regular files: ``DatasetDict.push_to_hub`` itself needs LFS or Xet storage, which :class:`LocalHub` does not
    serve. Returns the commit sha.

    >>> upload_parquet_dataset(dd, "org/pets")  # doctest: +SKIP
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    if create:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for split, dataset in dataset_dict.items():
            dataset.to_parquet(os.path.join(folder, "data", f"{split}-00000-of-00001.parquet"))
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            revision=revision,
            delete_patterns=["data/*.parquet"],  # a split left out of this upload is gone, as with push_to_hub
            commit_message="Upload dataset (parquet)",
        )
    return info.oid
