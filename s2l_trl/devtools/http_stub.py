"""A threaded local HTTP server whose requests go to one callable: what the fake vLLM server and the fault proxy
both stand on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Listener(ThreadingHTTPServer):
    """A threading HTTP server with a listen backlog like uvicorn's (Python's default of 5 resets connections when
    an explorer opens one per prompt, a hundred at once)."""

    request_queue_size = 2048
    daemon_threads = True


def serve_in_thread(
    handle: Callable[[BaseHTTPRequestHandler, str], None], host: str, port: int, name: str, keep_alive: bool = False
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve GET and POST on ``host:port`` by ``handle(request_handler, method)`` in a daemon thread; returns the
    server (``shutdown()`` stops it) and its thread. A short poll interval: a shutdown stops accepting within 50 ms
    (until then a connection is reset, not refused)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            handle(self, "GET")

        def do_POST(self):  # noqa: N802
            handle(self, "POST")

        def log_message(self, *args):  # quiet
            pass

    server = _Listener((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
    thread.start()
    return server, thread


class ThreadedStub:
    """Life cycle of a local HTTP stand-in served in a thread: ``start()`` / ``stop()`` or ``with``. Subclasses set
    ``host``, ``port``, ``thread_name`` and ``keep_alive`` and implement ``_handle(request_handler, method)``."""

    host: str
    port: int
    thread_name = "http-stub"
    keep_alive = False
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def start(self) -> Any:
        self._server, self._thread = serve_in_thread(
            self._handle, self.host, self.port, self.thread_name, keep_alive=self.keep_alive
        )
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
        if self._server is not None:
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
