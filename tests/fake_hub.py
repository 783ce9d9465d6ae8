"""A local stand-in for the Hugging Face Hub and a plain web server, for tests and benchmarks.

It answers exactly what huggingface_hub and omni_place.sources ask (read from huggingface_hub
2.x: ``HfApi.model_info`` -> ``GET /api/models/{repo}/revision/{rev}``; ``hf_hub_url`` ->
``GET /{repo}/resolve/{rev}/{path}``) and serves files under ``/files/{path}``. Files are GGUF
headers on disk followed by a virtual run of zero bytes up to the real file's size (the data
region is never stored), with HTTP Range support (206 + Content-Range, 416 past the end) and an
ETag. Bytes of every response body are counted per path, so a test can prove that planning read
headers and no weights.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from gguf import GGMLQuantizationType

from omni_place.gguf import read_model_files
from omni_place.gguf_write import full_sizes
from omni_place.reference_models import ModelSpec, fit_quant_type, write_header_only

Q = GGMLQuantizationType


@dataclass
class Served:
    """A file as served: its header bytes, then zeros to ``size``."""

    header: bytes
    size: int

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.header + str(self.size).encode()).hexdigest()[:32] + '"'

    def read(self, start: int, end: int) -> bytes:
        head = self.header[start: end + 1]
        return head + bytes(max(0, end + 1 - max(start, len(self.header))))


@dataclass
class Repo:
    sha: str
    files: dict[str, Served] = field(default_factory=dict)
    gated: bool = False


class FakeHub:
    """Repositories and plain files behind one local HTTP server (``with FakeHub() as hub``)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.files: dict[str, Served] = {}  # /files/<path>
        self.bytes_sent: dict[str, int] = defaultdict(int)  # request path -> body bytes
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.ranges = True  # False: answer a Range request with the whole file (200), as some servers do
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- content -----------------------------------------------------------------------------
    def add_model(self, repo: str, path: str, spec: ModelSpec, tmp: Path, *, shards: int = 1,
                  with_vocab: bool = False, gated: bool = False) -> list[str]:
        """Put ``spec`` into ``repo`` as ``path`` (split into ``shards`` named like gguf-split's);
        returns the repo paths, first shard first."""
        written = write_header_only(spec, tmp / Path(path).name, shards=shards, with_vocab=with_vocab)
        sizes = full_sizes(read_model_files(written[0]))
        r = self.repos.setdefault(repo, Repo(hashlib.sha1(repo.encode()).hexdigest()))
        r.gated = r.gated or gated
        folder = str(Path(path).parent)
        names = [p.name if folder == "." else f"{folder}/{p.name}" for p in written]
        for name, p, size in zip(names, written, sizes):
            r.files[name] = Served(p.read_bytes(), size)
            p.unlink()
        r.sha = hashlib.sha1((r.sha + path).encode()).hexdigest()  # a new upload, a new commit
        return names

    def add_file(self, path: str, header: bytes, size: int) -> str:
        self.files[path] = Served(header, size)
        return f"{self.url}/files/{path}"

    def sent(self, pattern: str = "") -> dict[str, int]:
        """Body bytes sent per request path containing ``pattern``."""
        with self._lock:
            return {p: n for p, n in self.bytes_sent.items() if pattern in p}

    # -- server ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub._handle(self, body=True)

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # a client that hangs up mid-body (a header read, the no-Range refusal) is expected
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str],
              send_body: bool) -> None:
        h.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(k, v)
        h.end_headers()
        if send_body:
            h.wfile.write(body)
            with self._lock:
                self.bytes_sent[urlsplit(h.path).path] += len(body)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, send_body: bool) -> None:
        self._send(h, status, json.dumps({"error": code}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": code}, send_body)

    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append((h.command, path))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
        if m:
            repo = self.repos.get(m[1])
            if repo is None:
                return self._error(h, 401, "RepoNotFound", body)
            if m[2] not in (None, "main", repo.sha):
                return self._error(h, 404, "RevisionNotFound", body)
            doc = {"id": m[1], "sha": repo.sha, "private": False, "gated": "auto" if repo.gated else False,
                   "siblings": [{"rfilename": f} for f in sorted(repo.files)]}
            return self._send(h, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = self.repos.get(m[1])
            if repo is None:
                return self._error(h, 401, "RepoNotFound", body)
            if m[2] not in ("main", repo.sha):
                return self._error(h, 404, "RevisionNotFound", body)
            if repo.gated and not h.headers.get("Authorization"):
                return self._error(h, 401, "GatedRepo", body)
            served = repo.files.get(m[3])
            if served is None:
                return self._error(h, 404, "EntryNotFound", body)
            return self._serve(h, served, {"X-Repo-Commit": repo.sha}, body)
        m = re.fullmatch(r"/files/(.+)", path)
        if m and m[1] in self.files:
            return self._serve(h, self.files[m[1]], {}, body)
        return self._error(h, 404, "EntryNotFound", body)

    def _serve(self, h: BaseHTTPRequestHandler, f: Served, extra: dict[str, str], body: bool) -> None:
        headers = {"ETag": f.etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **extra}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if rng is None or not self.ranges:
            # the whole file, streamed until the client hangs up (counted: a client that reads on
            # would take gigabytes)
            h.send_response(200)
            for k, v in {**headers, "Content-Length": str(f.size)}.items():
                h.send_header(k, v)
            h.end_headers()
            h.close_connection = True
            if not body:
                return
            key = urlsplit(h.path).path
            with self._lock:
                self.bytes_sent[key] += 0  # counted from here, even if the client hangs up at once
            for start in range(0, f.size, 1 << 20):
                try:
                    chunk = f.read(start, min(start + (1 << 20), f.size) - 1)
                    h.wfile.write(chunk)
                except OSError:
                    return
                with self._lock:
                    self.bytes_sent[key] += len(chunk)
            return
        start = int(rng[1])
        end = min(int(rng[2]) if rng[2] else f.size - 1, f.size - 1)
        if start >= f.size:
            return self._send(h, 416, b"", {**headers, "Content-Range": f"bytes */{f.size}"}, body)
        self._send(h, 206, f.read(start, end), {**headers, "Content-Range": f"bytes {start}-{end}/{f.size}"}, body)


def quantized(spec: ModelSpec, qtype: GGMLQuantizationType, name: str) -> ModelSpec:
    """``spec`` with every quantized tensor in ``qtype`` (the fallback type where the row length
    does not fit its block, as llama-quantize does); F32 tensors stay F32."""
    tensors = [(n, s, q if q == Q.F32 else fit_quant_type(qtype, s[0])) for n, s, q in spec.tensors]
    return ModelSpec(spec.arch, name, dict(spec.metadata), tensors, spec.n_vocab)


def iter_bytes_per_shard(hub: FakeHub, repo: str) -> Iterator[tuple[str, int]]:
    for p, n in hub.sent(f"/{repo}/resolve/").items():
        yield p.rsplit("/", 1)[-1], n


__all__ = ["FakeHub", "Served", "iter_bytes_per_shard", "quantized"]
