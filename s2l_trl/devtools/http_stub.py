"""A threaded local HTTP server whose requests go to one callable: what the fake vLLM server and the fault proxy
both stand on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
