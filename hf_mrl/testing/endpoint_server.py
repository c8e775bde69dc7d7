"""An image-classification inference server on 127.0.0.1, for tests: real local teachers behind the protocol that
`huggingface_hub.InferenceClient.image_classification` speaks, with faults on demand.

Protocol (what the client sends and expects): `POST /models/<name>` with either the raw image bytes as the body
(no parameters) or JSON `{"inputs": "<base64 image>", "parameters": {"top_k": k, ...}}`; the answer is a JSON list
of `{"label": str, "score": float}`, best first. Each model is a `transformers.pipeline("image-classification")`
of a local checkpoint (a timm checkpoint: timm's own model, eval transform and softmax), so the answers are what a
real deployment of that checkpoint returns.

Faults (`fail`): answer the next n requests with a status (503 with a model-loading body and `estimated_time`, 429
with `Retry-After`, 500...), `malformed` JSON, a `drop`ped connection, or `slow` answers; `max_top_k` caps every
answer, as endpoints that only return a few labels do. `calls` counts every request, `answered` the good answers.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["LocalEndpoint"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        server: LocalEndpoint = self.server.endpoint
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with server._lock:
            server.calls += 1
            server.requests.append(self.path)
            fault = server._faults.pop(0) if server._faults else None
        if server.delay:
            time.sleep(server.delay)
        if fault is not None:
            kind, arg = fault
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if kind == "malformed":
                return self._send(200, b'[{"label": "cat", "score": ', "application/json")
            if kind == "slow":
                time.sleep(arg)
            else:
                status, headers, payload = arg
                return self._send(status, json.dumps(payload).encode(), "application/json", headers)
        name = self.path.rstrip("/").split("/models/", 1)[-1]
        pipe = server._pipelines.get(name)
        if pipe is None:
            return self._send(404, json.dumps({"error": f"Model {name} not found"}).encode(), "application/json")
        params = {}
        if (self.headers.get("Content-Type") or "").startswith("application/json"):
            doc = json.loads(body)
            params = doc.get("parameters") or {}
            body = base64.b64decode(doc["inputs"])
        from PIL import Image

        top_k = int(params.get("top_k") or 5)  # the pipeline's default
        if server.max_top_k:
            top_k = min(top_k, server.max_top_k)
        with server._lock:
            image = Image.open(io.BytesIO(body))
            image.load()
            out = pipe(image, top_k=top_k)
            server.answered += 1
        answer = [{"label": o["label"], "score": float(o["score"])} for o in out]
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, payload: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass


def _is_timm(folder: Path) -> bool:
    config = json.loads((folder / "config.json").read_text())
    return "architecture" in config and "pretrained_cfg" in config


def _timm_pipeline(folder: Path):
    """A timm checkpoint served as timm serves it: its eval transform on the PIL image, softmax, top k."""
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config

    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(folder / "model.safetensors"), **config["pretrained_cfg"]},
        **config.get("model_args", {}),
    ).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    names = config.get("label_names") or [str(i) for i in range(model.num_classes)]

    def run(image, top_k: int = 5):
        with torch.no_grad():
            probs = model(transform(image.convert("RGB"))[None]).softmax(-1)[0]
        scores, idx = probs.topk(min(top_k, len(names)))
        return [{"label": names[i], "score": float(v)} for v, i in zip(scores.tolist(), idx.tolist(), strict=True)]

    return run


class LocalEndpoint:
    """Serve local transformers checkpoints: `{name: folder}` at `url_for(name)`; use as a context manager."""

    def __init__(self, models: dict[str, str | Path], host: str = "127.0.0.1", max_top_k: int | None = None):
        from transformers import pipeline

        self._pipelines = {
            name: _timm_pipeline(Path(f)) if _is_timm(Path(f)) else pipeline("image-classification", model=str(f))
            for name, f in models.items()
        }
        self.host, self.max_top_k = host, max_top_k
        self.calls = 0
        self.answered = 0
        self.delay = 0.0
        self.requests: list[str] = []
        self._faults: list[tuple[str, object]] = []
        self._lock = threading.RLock()
        self._server = None
        self._thread = None

    def url_for(self, name: str) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}/models/{name}"

    def fail(self, status: int, times: int = 1, retry_after: float | None = None, loading: float | None = None):
        """Answer the next `times` requests with `status` (a model-loading 503 when `loading` seconds are given)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        payload = {"error": "Model is currently loading", "estimated_time": loading} if loading else {"error": "no"}
        self._faults += [("status", (status, headers, payload))] * times

    def malformed(self, times: int = 1) -> None:
        self._faults += [("malformed", None)] * times

    def drop(self, times: int = 1) -> None:
        self._faults += [("drop", None)] * times

    def slow(self, seconds: float, times: int = 1) -> None:
        self._faults += [("slow", seconds)] * times

    def start(self) -> LocalEndpoint:
        self._server = ThreadingHTTPServer((self.host, 0), _Handler)
        self._server.daemon_threads = True
        self._server.endpoint = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
