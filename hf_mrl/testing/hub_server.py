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
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from hf_mrl.testing.hub_patches import (  # noqa: F401
    Patch,
    _datasets_cache_patches,
    _loaded,
    cache_patches,
    endpoint_patches,
    upload_parquet_dataset,
)
from hf_mrl.testing.hub_repo import (  # noqa: F401
    _CONFIG_KEYS,
    _FULL_FIELDS,
    _GITATTRIBUTES,
    _LIST_FIELDS,
    _NAME,
    _SORT_KEYS,
    _TYPE_PREFIX,
    REPO_TYPES,
    HubError,
    _card_metadata,
    _check_path,
    _git_oid,
    _model_fields,
    _now,
    _Repo,
    _Request,
    _Response,
    _safetensors_parameters,
    _write_atomic,
)

logger = logging.getLogger(__name__)


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


_PAGE = 1000  # the Hub's largest page


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
