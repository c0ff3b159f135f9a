"""A fault-injecting HTTP proxy for tests: put it in front of a real vLLM server and make chosen requests fail.

Generation requests (``POST /v1/completions``) are numbered from 1 in arrival order; any of them can be answered
with an HTTP error, delayed (past a client's time-out), or have its connection dropped without an answer, and the
proxy can "die" (stop listening, so new connections are refused, and drop what is in flight) when the k-th one
arrives. Everything else (``/health``, ``/v1/models``, ``/tokenize``) is passed through unless ``answers`` fixes its
answer. With no upstream it is a plain HTTP server answering only ``answers`` and 404 elsewhere: a URL that is
not a vLLM server. Every generation request is recorded (:class:`Record`): its prompts, ``n``, the status sent and
the completions it delivered, so a test can check which prompts each request carried.

    with FaultProxy(server.base_url, fail={2: 500}) as proxy:
        explorer = ServerExplorer(proxy.base_url, ...)

One process, threads only; stopped by :meth:`stop` (or the context manager). Binds 127.0.0.1 by default.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests

from .http_stub import ThreadedStub
from .vllm_server import free_port

GENERATION_PATH = "/v1/completions"


@dataclass
class Record:
    """One generation request seen by the proxy."""

    number: int  # 1-based arrival order among generation requests
    prompts: list[Any]
    n: int
    seed: int | None = None  # the request's sampling seed (one prompt per request when the explorer is seeded)
    status: int | None = None  # what the proxy answered; None: no answer (dropped)
    delivered: bool = False  # a complete answer was written back to the client
    completion_ids: list[list[int]] = field(default_factory=list)  # those of a delivered answer, prompt-major
    answered_at: float | None = None  # time.monotonic() when the answer was written


class FaultProxy(ThreadedStub):
    """HTTP proxy to ``upstream`` injecting faults into generation requests.

    Args:
        upstream: base URL of the real server; ``None`` for a stub that answers only ``answers`` (404 elsewhere).
        fail: request number -> HTTP status to answer instead of forwarding (e.g. ``{2: 500}``).
        delay: request number -> seconds to wait before forwarding it.
        drop: request numbers whose connection is closed without an answer.
        die_at: request number at whose arrival the proxy dies: it stops listening (connections are refused from
            then on) and drops that request and every one still in flight.
        answers: path -> ``(status, body)`` answered for any method instead of forwarding.
        host / port: where to listen (default: a free port on 127.0.0.1).
    """

    thread_name = "fault-proxy"

    def __init__(
        self,
        upstream: str | None,
        fail: dict[int, int] | None = None,
        delay: dict[int, float] | None = None,
        drop: set[int] | None = None,
        die_at: int | None = None,
        answers: dict[str, tuple[int, str]] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
    ):
        self.upstream = upstream.rstrip("/") if upstream else None
        self.fail = dict(fail or {})
        self.delay = dict(delay or {})
        self.drop = set(drop or ())
        self.die_at = die_at
        self.answers = dict(answers or {})
        self.host = host
        self.port = port or free_port(host)
        self.records: list[Record] = []
        self.requests_seen: list[str] = []  # "METHOD /path" of every request, in order
        self.dead = False
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def generation_requests(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ life cycle
    def die(self) -> None:
        """Stop listening now (new connections are refused); requests in flight are dropped when they return."""
        with self._lock:
            if self.dead:
                return
            self.dead = True
        if self._server is not None:
            threading.Thread(target=self._close_listener, daemon=True).start()

    def _close_listener(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def stop(self) -> None:
        self.dead = True
        super().stop()

    # ------------------------------------------------------------------ handling
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests_seen.append(f"{method} {path}")
        if self.dead:
            return _drop(handler)
        if path in self.answers:
            status, text = self.answers[path]
            return _reply(handler, status, text.encode())
        record = None
        if method == "POST" and path == GENERATION_PATH:
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                payload = {}
            with self._lock:
                record = Record(
                    len(self.records) + 1, payload.get("prompt"), int(payload.get("n", 1)), payload.get("seed")
                )
                self.records.append(record)
            if record.number == self.die_at:
                self.die()
                return _drop(handler)
            if record.number in self.drop:
                return _drop(handler)
            if record.number in self.fail:
                record.status = self.fail[record.number]
                message = f"fault injected by FaultProxy into request {record.number}"
                return _reply(handler, record.status, json.dumps({"error": {"message": message}}).encode())
            if record.number in self.delay:
                time.sleep(self.delay[record.number])
        if self.upstream is None:
            return _reply(handler, 404, json.dumps({"detail": "Not Found"}).encode())
        try:
            headers = {"Content-Type": handler.headers.get("Content-Type", "application/json")}
            upstream = requests.request(method, self.upstream + path, data=body or None, headers=headers, timeout=600)
        except requests.RequestException as exc:
            return _reply(handler, 502, f"FaultProxy: upstream failed: {exc}".encode())
        if self.dead:  # died while this request was upstream
            return _drop(handler)
        if record is not None:
            record.status = upstream.status_code
            # Filled in before the answer is written: the client may act on it before this thread runs again.
            record.answered_at = time.monotonic()
            if upstream.status_code == 200:
                choices = sorted(upstream.json()["choices"], key=lambda c: c.get("index", 0))
                record.completion_ids = [list(c.get("token_ids") or []) for c in choices]
                record.delivered = True
        if not _reply(handler, upstream.status_code, upstream.content, upstream.headers.get("Content-Type")):
            if record is not None:
                record.delivered = False


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str | None = None) -> bool:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type or "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
        return True
    except OSError:  # the client gave up (time-out) and closed the connection
        return False


def _drop(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection without an answer (the client sees the connection reset)."""
    handler.close_connection = True
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
