"""Teachers you can only call: image-classification inference endpoints that answer the top few labels.

A pool line `endpoint:URL` (a Hugging Face Inference Endpoint, a self-hosted server speaking the same protocol)
makes an `EndpointTeacher`. It is called through `huggingface_hub.InferenceClient.image_classification`: the
original image bytes are sent (the raw body without parameters, `{"inputs": <base64>, "parameters": {"top_k": k}}`
with them) and a list of `{label, score}` comes back. The token is the usual one (`HF_TOKEN`, `hf auth login`); it
is never read from the pool file nor written anywhere.

**From top k labels to a distribution over the target classes** (`answer_to_probs`). The listed labels are mapped
onto the target classes as a local teacher's are (label map first, then equal names, then comma-separated
synonyms); a target class gets the sum of the listed scores of its labels. The mass the answer does not list,
`1 - sum(listed scores)` (listed labels of no target class keep theirs out of it), is spread evenly over the target
classes no listed label reached: they are not ruled out, only not ranked. The result is renormalised over the target
classes; an answer none of whose labels is a target class gives the uniform distribution. `observed[c]` says
whether class c's probability came from listed scores, and the share of mass observed per teacher is reported.

**Each call once.** Answers are stored as they arrive, one checksummed JSON line each, keyed by the content of the
original image (the same key as the teacher-output cache) and the endpoint URL, with the `top_k` asked for; an
answer with k labels serves any later request for k or fewer. A rerun, another seed or a resumed run calls nothing
for an image already answered, and a killed run loses no answer it got.

**Calls.** At most `concurrency` at a time; `timeout` seconds each; a 429 or 5xx answer, a timeout, a dropped
connection or a malformed body is retried `retries` times with exponential backoff, waiting what `Retry-After` or
a model-loading answer (`estimated_time`) asks for. `max_calls` bounds the HTTP requests of the whole pool
(retries included): the pass stops before it would exceed it, with what was answered kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch

from hf_mrl.pool.labels import label_synonyms, normalize_label
from hf_mrl.utils import remove_stale_temp

__all__ = [
    "ENDPOINT_PREFIX",
    "CallBudget",
    "EndpointError",
    "EndpointOptions",
    "EndpointTeacher",
    "answer_to_probs",
    "check_endpoint_line",
    "is_endpoint",
]

logger = logging.getLogger(__name__)

ENDPOINT_PREFIX = "endpoint:"
ALL = 100_000  # `top_k` that asks for every label (servers clamp it to their number of classes)


def is_endpoint(source) -> bool:
    return isinstance(source, str) and source.strip().startswith(ENDPOINT_PREFIX)


def check_endpoint_line(line: str, where: str) -> None:
    """A pool file's `endpoint:URL` line: an http(s) URL, and no credentials in it (tokens come from HF_TOKEN)."""
    url = line[len(ENDPOINT_PREFIX) :]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: {line!r} is not `endpoint:https://host/path`.")
    secret = {"token", "api_key", "apikey", "key", "access_token", "hf_token"}
    query = {q.split("=", 1)[0].lower() for q in parts.query.split("&") if q}
    if parts.username or parts.password or query & secret:
        raise ValueError(
            f"{where}: the endpoint URL carries credentials: pool files are shared and recorded in outputs, so a "
            "token never goes there. Remove it and set HF_TOKEN (or run `hf auth login`)."
        )


class EndpointError(RuntimeError):
    """An endpoint could not answer (after retries), or the call budget is spent; answers already got are kept."""


@dataclass
class EndpointOptions:
    """How endpoint teachers are called (`--endpoint_top_k`, `--endpoint_concurrency`, `--max_endpoint_calls`...).

    Args:
        top_k: labels asked per image (`None`: every label).
        concurrency: calls in flight at once, per teacher.
        timeout: seconds per call.
        retries: further attempts after a failed call (429, 5xx, timeout, dropped connection, malformed answer).
        backoff: first wait between attempts, in seconds, doubled each time (a `Retry-After` header wins).
        max_calls: HTTP requests allowed to the whole pool, retries included (`None`: no bound).
    """

    top_k: int | None = 5
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 1.0
    max_calls: int | None = None
    max_wait: float = 120.0

    def __post_init__(self):
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"endpoint top_k must be >= 1 (or None for every label); got {self.top_k}.")
        if self.concurrency < 1:
            raise ValueError(f"endpoint concurrency must be >= 1; got {self.concurrency}.")
        if self.max_calls is not None and self.max_calls < 0:
            raise ValueError(f"max_endpoint_calls must be >= 0; got {self.max_calls}.")


@dataclass
class CallBudget:
    """HTTP requests shared by a pool's endpoint teachers, and their counts (for metrics.json and the card)."""

    max_calls: int | None = None
    calls: int = 0  # requests made, retries included
    answered: int = 0  # images answered by a call
    cached: int = 0  # images answered from the store, no call
    failed: int = 0  # requests that failed (and were retried, or ended the pass)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self) -> bool:
        with self._lock:
            if self.max_calls is not None and self.calls >= self.max_calls:
                return False
            self.calls += 1
            return True

    def count(self, **deltas: int) -> None:
        with self._lock:
            for name, d in deltas.items():
                setattr(self, name, getattr(self, name) + d)

    def to_dict(self) -> dict:
        return {
            "calls": self.calls,
            "answered": self.answered,
            "cached": self.cached,
            "failed": self.failed,
            "max_calls": self.max_calls,
        }


# ------------------------------------------------------------------------------------------------ answers -> probs


def _label_targets(label: str, targets: list[str], label_map: Mapping[str, Sequence[str]] | None) -> list[int]:
    """The target classes an answered label belongs to: the label map's, else equal names, else synonyms."""
    key, syns = normalize_label(label), set(label_synonyms(label))
    if label_map:
        mapped = [
            c
            for c, t in enumerate(targets)
            for name in label_map.get(t, ())
            if normalize_label(name) == key or normalize_label(name) in syns
        ]
        if mapped:
            return sorted(set(mapped))
    norm = [normalize_label(t) for t in targets]
    exact = [c for c, t in enumerate(norm) if t == key]
    if exact:
        return exact
    return [c for c, t in enumerate(norm) if t in syns]


def answer_to_probs(
    answer: Sequence[tuple[str, float]], targets: list[str], label_map: Mapping[str, Sequence[str]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One endpoint answer (top-k `(label, score)`) -> probabilities over `targets` (C,) and the observed mask (C,).

    See the module docstring for the rule. A label shared by several target classes (a label map joining them)
    splits its score evenly among them.

    >>> p, seen = answer_to_probs([("cat", 0.6), ("dog", 0.3)], ["cat", "dog", "bird", "fish"])
    >>> p.round(3).tolist(), seen.tolist()
    ([0.6, 0.3, 0.05, 0.05], [True, True, False, False])
    """
    c = len(targets)
    probs = np.zeros(c, dtype=np.float64)
    observed = np.zeros(c, dtype=bool)
    listed = 0.0
    for label, score in answer:
        score = min(max(float(score), 0.0), 1.0) if np.isfinite(score) else 0.0
        listed += score
        classes = _label_targets(str(label), targets, label_map)
        for t in classes:
            probs[t] += score / len(classes)
            observed[t] = True
    if not observed.any():
        return np.full(c, 1.0 / c, dtype=np.float32), observed
    rest = max(0.0, 1.0 - listed)
    if (~observed).any():
        probs[~observed] = rest / int((~observed).sum())
    total = probs.sum()
    probs = probs / total if total > 0 else np.full(c, 1.0 / c)
    return probs.astype(np.float32), observed


# ------------------------------------------------------------------------------------------------ the answer store


class AnswerStore:
    """Answers of one endpoint: `key (2 int64) -> (top_k, [(label, score)])`, in JSON lines written as they arrive.

    Each process appends to its own file (`answers-<host>-<pid>-<id>.jsonl`), one line per answer with a sha256 of
    its content: a line cut by a kill or damaged later fails its check and is asked again. In memory only when
    `folder` is None.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.answers: dict[tuple[int, int], tuple[int | None, list]] = {}
        self._file = None
        self._lock = threading.Lock()
        if folder is not None and folder.is_dir():
            remove_stale_temp(folder)
            for path in sorted(folder.glob("answers-*.jsonl")):
                if path.is_file() and not path.is_symlink():
                    self._read(path)

    def _read(self, path: Path) -> None:
        bad = 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    doc = json.loads(line)
                    body = {k: doc[k] for k in ("key", "top_k", "answer")}
                    if doc["sum"] != _line_sum(body):
                        raise ValueError("checksum")
                    self._put(tuple(int(k) for k in body["key"]), body["top_k"], body["answer"])
                except (ValueError, KeyError, TypeError, RecursionError):
                    bad += 1
        if bad:
            logger.warning("%d damaged answer(s) in %s are ignored: those images will be asked again.", bad, path)

    def _put(self, key, top_k, answer) -> None:
        old = self.answers.get(key)
        if old is None or _covers(top_k, old[0]):
            self.answers[key] = (top_k, [(str(label), float(score)) for label, score in answer])

    def get(self, key, top_k: int | None) -> list | None:
        found = self.answers.get(key)
        if found is None or not _covers(found[0], top_k):
            return None
        answer = sorted(found[1], key=lambda ls: -ls[1])
        return answer if top_k is None else answer[:top_k]

    def add(self, key, top_k: int | None, answer: list) -> None:
        body = {"key": [int(k) for k in key], "top_k": top_k, "answer": [[str(lb), float(s)] for lb, s in answer]}
        with self._lock:
            self._put(tuple(body["key"]), top_k, body["answer"])
            if self.folder is None:
                return
            if self._file is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                host = os.uname().nodename.replace(".", "-")[:32]
                path = self.folder / f"answers-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open across calls)
            self._file.write(json.dumps({**body, "sum": _line_sum(body)}) + "\n")
            self._file.flush()  # in the OS once written: a kill -9 of this process cannot lose it

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    os.fsync(self._file.fileno())
                self._file.close()
                self._file = None


def _covers(have: int | None, want: int | None) -> bool:
    """Whether an answer with `have` labels (None: all) can serve a request for `want`."""
    return have is None or (want is not None and want <= have)


def _line_sum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ the teacher


def _public_url(url: str) -> str:
    """The URL without credentials or query (what is recorded in configs, metrics and cards)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def image_bytes(item) -> bytes:
    """The bytes sent for one image: its original encoded file when there is one, else a PNG of its pixels."""
    from PIL import Image

    if isinstance(item, dict):
        if item.get("bytes") is not None:
            return bytes(item["bytes"])
        if item.get("path") and os.path.isfile(item["path"]):
            return Path(item["path"]).read_bytes()
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, torch.Tensor):  # uint8 (3, H, W)
        item = item.permute(1, 2, 0).cpu().numpy()
    if isinstance(item, np.ndarray):
        item = Image.fromarray(np.ascontiguousarray(item))
    buf = io.BytesIO()
    item.save(buf, format="PNG")
    return buf.getvalue()


class EndpointTeacher:
    """A teacher behind an image-classification endpoint: called, never downloaded (see the module docstring).

    Args:
        source: `endpoint:URL`.
        target_labels: the target class names; the teacher's outputs are already over them.
        label_map: the pool's label map (shared entries, and entries keyed by this teacher's id).
        cache_dir: where answers persist (`<cache_dir>/endpoint-<hash of the URL>/`); in memory when None.
        options: `EndpointOptions`.
        budget: the pool's shared `CallBudget`.
        token: a Hub token; None: the one `huggingface_hub` finds (`HF_TOKEN`, `hf auth login`).
    """

    library = "endpoint"
    revision = None
    weights_hash = None  # nothing to hash: the owner may change it, which the card says
    label_descriptions = None

    def __init__(
        self,
        source: str,
        target_labels: Sequence[str],
        *,
        label_map: Mapping | None = None,
        cache_dir: str | os.PathLike | None = None,
        options: EndpointOptions | None = None,
        budget: CallBudget | None = None,
        token: str | bool | None = None,
    ):
        url = source.strip()[len(ENDPOINT_PREFIX) :] if is_endpoint(source) else source.strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"Endpoint teacher {source!r}: expected `endpoint:https://host/path`, the URL of an "
                "image-classification endpoint."
            )
        self.url = url
        self.name = ENDPOINT_PREFIX + _public_url(url)
        self.label_names = [str(n) for n in target_labels]
        self.label_map = _own_label_map(label_map, [self.name, source.strip()])
        self.options = options or EndpointOptions()
        self.budget = budget or CallBudget(self.options.max_calls)
        self.samples_seen = 0  # images answered by a call (the counterpart of a local teacher's forward passes)
        self.observed_mass: list[float] = []
        self._token = token
        self._client = None
        digest = hashlib.sha256(_public_url(url).encode()).hexdigest()[:24]
        self.store = AnswerStore(Path(cache_dir) / f"endpoint-{digest}" if cache_dir is not None else None)

    @property
    def id(self) -> str:
        return self.name

    @property
    def cache_key(self) -> str:
        return "endpoint-" + hashlib.sha256(self.name.encode()).hexdigest()[:24]

    def __repr__(self) -> str:
        return f"EndpointTeacher({self.name!r}, top_k={self.options.top_k})"

    @property
    def client(self):
        if self._client is None:
            from huggingface_hub import InferenceClient

            self._client = InferenceClient(token=self._token, timeout=self.options.timeout)
        return self._client

    # -- calls -------------------------------------------------------------------------------------------
    def _call(self, data: bytes) -> list[tuple[str, float]]:
        """One image through the endpoint, with retries; `EndpointError` when it cannot be answered."""
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

        k = self.options.top_k
        last = "no attempt"
        for attempt in range(self.options.retries + 1):
            if not self.budget.take():
                raise EndpointError(
                    f"The endpoint call budget (--max_endpoint_calls {self.budget.max_calls}) is spent: "
                    f"{self.budget.answered} image(s) answered and kept in the cache; rerun with a larger budget to "
                    "ask the rest."
                )
            wait = self.options.backoff * 2**attempt
            try:
                out = self.client.image_classification(data, model=self.url, top_k=k if k is not None else ALL)
                answer = [(str(o.label), float(o.score)) for o in out]
                if not all(np.isfinite(s) for _, s in answer):
                    raise ValueError("non-finite score")
                return answer
            except HfHubHTTPError as err:
                status = err.response.status_code if err.response is not None else None
                last = f"HTTP {status}"
                if status is not None and status not in (408, 429) and status < 500:
                    self.budget.count(failed=1)
                    hint = " (check HF_TOKEN / `hf auth login`)" if status in (401, 403) else ""
                    raise EndpointError(f"Endpoint {self.name} refused the call: HTTP {status}{hint}.") from None
                wait = max(wait, _asked_wait(err.response))
            except InferenceTimeoutError:
                last = f"no answer within {self.options.timeout:g} s"
            except Exception as err:  # a dropped connection, a body that is not a list of {label, score}
                last = f"{type(err).__name__}: {err}"[:200]
            self.budget.count(failed=1)
            if attempt < self.options.retries:
                time.sleep(min(wait, self.options.max_wait))
        raise EndpointError(
            f"Endpoint {self.name} did not answer after {self.options.retries + 1} attempts (last: {last}); "
            "answers already got are kept in the cache."
        )

    def answers(self, keys: np.ndarray, items: Sequence, progress: bool = False) -> list[list]:
        """The answer for each image (`keys[i]`, `items[i]`): from the store, else one call, stored at once."""
        k = self.options.top_k
        out: list = [self.store.get(tuple(int(v) for v in key), k) for key in keys]
        todo = [i for i, a in enumerate(out) if a is None]
        self.budget.count(cached=len(out) - len(todo))
        if not todo:
            return out
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"calling {self.name}", disable=not progress, leave=False)

        def one(i: int):
            answer = self._call(image_bytes(items[i]))
            self.store.add(keys[i], k, answer)
            self.budget.count(answered=1)
            return i, answer

        try:
            with ThreadPoolExecutor(self.options.concurrency) as pool:
                futures = [pool.submit(one, i) for i in todo]
                try:
                    for future in futures:
                        i, answer = future.result()
                        out[i] = answer
                        self.samples_seen += 1
                        bar.update(1)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        finally:
            bar.close()
            self.store.close()
        return out

    def probs(self, keys: np.ndarray, items: Sequence, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities over the target classes (N, C) and the observed mask (N, C)."""
        probs = np.zeros((len(keys), len(self.label_names)), np.float32)
        seen = np.zeros(probs.shape, bool)
        for i, answer in enumerate(self.answers(keys, items, progress)):
            probs[i], seen[i] = answer_to_probs(answer, self.label_names, self.label_map)
            self.observed_mass.append(float(probs[i][seen[i]].sum()))
        return torch.from_numpy(probs), torch.from_numpy(seen)


def add_endpoint_arguments(parser) -> None:
    """The command-line flags of endpoint teachers (`hf-mrl train`, `hf-mrl select`)."""
    group = parser.add_argument_group("endpoint teachers (`endpoint:URL` lines in the pool file)")
    group.add_argument(
        "--endpoint_top_k",
        default="5",
        help="labels asked per image: a number, or `all` (default 5, what image-classification servers return)",
    )
    group.add_argument("--endpoint_concurrency", type=int, default=4, help="calls in flight at once per endpoint")
    group.add_argument("--endpoint_timeout", type=float, default=60.0, help="seconds per call")
    group.add_argument("--endpoint_retries", type=int, default=5, help="retries of a failed call (429, 5xx, timeout)")
    group.add_argument(
        "--max_endpoint_calls",
        type=int,
        help="stop before making more calls than this (retries included); answers got are kept (default: no bound)",
    )


def endpoint_options(args) -> EndpointOptions:
    top_k = str(args.endpoint_top_k).strip().lower()
    if top_k not in ("all", "none") and not top_k.isdigit():
        raise ValueError(f"--endpoint_top_k must be a number or `all`; got {args.endpoint_top_k!r}.")
    return EndpointOptions(
        top_k=None if top_k in ("all", "none") else int(top_k),
        concurrency=args.endpoint_concurrency,
        timeout=args.endpoint_timeout,
        retries=args.endpoint_retries,
        max_calls=args.max_endpoint_calls,
    )


def _asked_wait(response) -> float:
    """Seconds a 429 / 503 answer asks to wait: `Retry-After`, or a model-loading answer's `estimated_time`."""
    if response is None:
        return 0.0
    with contextlib.suppress(TypeError, ValueError):
        return float(response.headers.get("Retry-After"))
    with contextlib.suppress(Exception):
        return float(json.loads(response.text).get("estimated_time", 0.0))
    return 0.0


def _own_label_map(label_map: Mapping | None, names: Sequence[str]) -> dict[str, list[str]]:
    """Shared entries, overridden by entries keyed by this teacher (`endpoint:URL` as in the pool, or its id)."""
    shared = {k: list(v) for k, v in (label_map or {}).items() if not isinstance(v, Mapping)}
    for key, own in (label_map or {}).items():
        if isinstance(own, Mapping) and key.strip() in names:
            shared.update({t: list(v) for t, v in own.items()})
    return shared
