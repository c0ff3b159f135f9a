"""The server explorer's HTTP: one `httpx.AsyncClient` on an asyncio event loop in a daemon thread, and what a failed
request is.

Why a module of its own: start-up checks, metrics polls and generation requests all go through :meth:`_Transport.send`,
which turns every way of getting no answer (refused, timed out, dropped) into one :class:`_RequestFailed` saying
whether a retry may help; how requests are scheduled is none of its business.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Future
from typing import Any

import httpx

from .log import logger


class _RequestFailed(Exception):
    """A request failed; ``retryable`` says whether sending it again may help, ``unreachable`` whether no connection
    could be made to the server (nothing listens there any more, or the host is gone)."""

    def __init__(self, message: str, retryable: bool = True, unreachable: bool = False, hung: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.unreachable = unreachable
        self.hung = hung  # the server made no progress for `stall_timeout` seconds


class _Transport:
    """The explorer's HTTP: an `httpx.AsyncClient` on an asyncio event loop running in a daemon thread.

    Callers submit coroutines and wait on the returned `concurrent.futures.Future` (interruptible by Ctrl-C). A
    cancelled future cancels its task, which closes the request's connection: vLLM then aborts the generation. The
    thread is a daemon, so requests in flight never keep the interpreter alive.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="s2l-explorer-http", daemon=True)
        self.thread.start()
        self.closed = False
        # No pool limit: the explorer bounds its own concurrency; connections are kept alive between requests.
        self.client: httpx.AsyncClient = self.run(self._open())

    @staticmethod
    async def _open() -> httpx.AsyncClient:
        return httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64), timeout=None)

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro, timeout: float | None = None):
        """Run ``coro`` on the loop and wait for its result; an interrupt (Ctrl-C) cancels it."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def gather(self, coros) -> list:
        """Run ``coros`` concurrently on the loop and wait for all their results, in order."""
        return self.run(self._gather(*coros))

    @staticmethod
    async def _gather(*coros) -> list:
        return list(await asyncio.gather(*coros))

    async def send(
        self, url: str, method: str, path: str, payload: Any = None, timeout: float = 30.0
    ) -> httpx.Response:
        """One HTTP request to the server at ``url``; every failure to get an answer is a :class:`_RequestFailed`."""
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if body is not None else None
        limits = httpx.Timeout(timeout, connect=min(10.0, timeout))
        request = self.client.request(method, url + path, content=body, headers=headers, timeout=limits)
        try:
            # The whole request, queueing inside the server included, within `timeout` (httpx's is per read).
            return await asyncio.wait_for(request, timeout)
        except httpx.ConnectTimeout as exc:
            raise _RequestFailed(f"could not connect within {min(10.0, timeout):.0f} s", unreachable=True) from exc
        except httpx.ConnectError as exc:
            if _refused(exc):
                raise _RequestFailed("connection refused", unreachable=True) from exc
            raise _RequestFailed(f"could not connect ({exc})", unreachable=True) from exc
        except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
            raise _RequestFailed(f"no answer within {timeout:.0f} s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:  # connection dropped or reset mid-request, protocol errors
            raise _RequestFailed(f"connection error ({type(exc).__name__}: {exc})") from exc

    def close(self) -> None:
        """Cancel everything in flight, close the connections and stop the loop (idempotent, any thread)."""
        if self.closed:
            return
        self.closed = True
        if not self.loop.is_running():
            return
        if threading.current_thread() is self.thread:  # from a callback on the loop itself: do not wait on it
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)
            return
        try:
            self.submit(self._shutdown()).result(10)
        except Exception:  # closing must not raise; the thread is a daemon anyway
            logger.debug("Explorer HTTP transport did not close cleanly.", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was caused by or wraps (httpx, httpcore and the OS nest them)."""
    seen: dict[int, BaseException] = {}
    stack = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen[id(e)] = e
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        stack.extend(getattr(e, "exceptions", ()) or ())
    return list(seen.values())


def _refused(exc: BaseException) -> bool:
    """Whether a connection error means that nothing listens at the address (connection refused)."""
    return any(isinstance(e, ConnectionRefusedError) for e in _chain(exc)) or "connection refused" in str(exc).lower()


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    """The first bytes of an answer, on one line, for error messages."""
    try:
        text = response.text
    except Exception:  # undecodable body
        text = repr(response.content[:limit])
    text = " ".join(text.split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
