"""One call of the server explorer, chunked: requests spread over the live servers, failed ones retried alone, hung
servers found by their progress, progress lines while it runs, and the completions put back in prompt order.

Why a module of its own: this is the scheduling (the class docstring of :class:`~.explorer.ServerExplorer` says what
it promises: chunks, concurrency, back-off, dropping a server, the stall check); a call's state (what is pending,
what is running where, its stats) lives in one :class:`ChunkedCall` instead of being handed between helpers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import CancelledError as FutureCancelled
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..base import ExplorerError, ExplorerOutput, ExplorerStats
from .completions import request_completions
from .log import logger
from .servers import _PROGRESS_METRICS, _Server, poll_token_counters
from .transport import _RequestFailed

if TYPE_CHECKING:
    from .explorer import ServerExplorer


class ExplorerCancelled(ExplorerError):
    """The call was cancelled (:meth:`ServerExplorer.cancel`) or the explorer closed while it was in flight."""


@dataclass
class _Chunk:
    index: int
    start: int  # first prompt of the chunk
    end: int
    attempts: int = 0  # failures charged to this chunk
    not_before: float = 0.0  # back-off: not re-sent before this time (monotonic)
    errors: list[str] = field(default_factory=list)
    # prompt index -> (its n completions, their log-probs): a retry sends only the prompts still missing
    parts: dict[int, tuple[list[list[int]], list[list[float]] | None]] = field(default_factory=dict)


class ChunkedCall:
    """The ``call``-th :meth:`ServerExplorer.generate` of ``explorer``: ``n`` completions for each of ``prompt_ids``.

    It reads the explorer's settings and servers, and registers its requests with the explorer so that
    :meth:`ServerExplorer.cancel` can abort them from another thread; :meth:`run` does the work.
    """

    def __init__(self, explorer: ServerExplorer, prompt_ids: list[list[int]], n: int, call: int):
        self.start = time.monotonic()
        self.explorer, self.prompt_ids, self.n, self.call = explorer, prompt_ids, n, call
        self.seeds = None
        if explorer.sampling.seed is not None:
            self.seeds = [explorer.prompt_seed(call, i) for i in range(len(prompt_ids))]
        size = explorer.prompts_per_request
        self.chunks = [
            _Chunk(k, b, min(b + size, len(prompt_ids))) for k, b in enumerate(range(0, len(prompt_ids), size))
        ]
        self.stats = ExplorerStats(prompts=len(prompt_ids), rows=len(prompt_ids) * n)
        self.pending: deque[_Chunk] = deque(self.chunks)
        self.running: dict[Future, tuple[_Chunk, _Server]] = {}

    def run(self) -> ExplorerOutput:
        explorer, prompt_ids, n, call, stats = self.explorer, self.prompt_ids, self.n, self.call, self.stats
        start = self.start
        if not prompt_ids:
            return ExplorerOutput(completion_ids=[], logprobs=[], stats=ExplorerStats(servers=len(explorer._alive())))
        pending, running = self.pending, self.running
        background: list[Future] = []  # metrics polls
        bar = self._progress_bar()
        shown = 0
        next_log = start + explorer.log_interval_s
        next_poll = start
        next_stall_poll = start
        try:
            while pending or running:
                if explorer._cancelled.is_set() or explorer._closed.is_set():
                    raise ExplorerCancelled(
                        f"The explorer call {call} ({len(prompt_ids)} prompts x n={n}) was "
                        f"{'closed' if explorer._closed.is_set() else 'cancelled'} with {len(running)} request(s) in "
                        f"flight and {len(pending)} pending."
                    )
                self._dispatch()
                now = time.monotonic()
                if now >= next_poll and explorer.progress:
                    next_poll = next_log - min(1.0, explorer.log_interval_s / 4)
                    if next_poll <= now:
                        next_poll = now + explorer.log_interval_s
                    background = [f for f in background if not f.done()]
                    background += [
                        explorer._transport.submit(poll_token_counters(explorer._transport, s))
                        for s in explorer._alive()
                    ]
                if explorer.stall_timeout and now >= next_stall_poll:
                    next_stall_poll = now + self._stall_poll_interval()
                    background = [f for f in background if not f.done()]
                    background += self._poll_busy_servers()
                    self._fail_hung_servers()
                waits = [c.not_before - now for c in pending if c.not_before > now]
                stall_poll = [next_stall_poll - now] if explorer.stall_timeout else []
                timeout = max(0.05, min([*waits, *stall_poll, next_log - now, 1.0]))
                if running:
                    done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
                else:
                    done = set()
                    time.sleep(timeout)  # everything pending is backing off
                for future in done:
                    chunk, server = running.pop(future)
                    with explorer._inflight_lock:
                        explorer._inflight.discard(future)
                    server.in_flight -= 1
                    server.in_flight_rows -= (chunk.end - chunk.start) * n
                    try:
                        future.result()
                    except _RequestFailed as exc:
                        stats.failed_requests += 1
                        self._on_failure(chunk, server, exc)
                        continue
                    except FutureCancelled:
                        raise ExplorerCancelled(
                            f"The explorer call {call} ({len(prompt_ids)} prompts x n={n}) was cancelled in flight."
                        ) from None
                    server.failures = 0
                    server.progress_at = time.monotonic()
                    stats.requests += 1
                    stats.completion_tokens += sum(len(c) for i in chunk.parts for c in chunk.parts[i][0])
                if bar is not None:
                    done_prompts = sum(len(c.parts) for c in self.chunks)
                    if done_prompts > shown:
                        bar.update(done_prompts - shown)
                        shown = done_prompts
                        bar.set_postfix(tok_s=f"{stats.completion_tokens / max(time.monotonic() - start, 1e-9):.0f}")
                if time.monotonic() >= next_log and (pending or running) and explorer.progress:
                    next_log = time.monotonic() + explorer.log_interval_s
                    self._log_progress()
        except BaseException:
            for future in [*running, *background]:
                future.cancel()  # closes their connections: the servers abort those generations
            for chunk, server in running.values():  # the explorer stays usable (cancel()): free their slots
                server.in_flight -= 1
                server.in_flight_rows -= (chunk.end - chunk.start) * n
            raise
        finally:
            if bar is not None:
                bar.close()
        return self._output()

    def _output(self) -> ExplorerOutput:
        """The completions in prompt order, with the call's stats (and its end-of-call lines)."""
        explorer, n, call, stats = self.explorer, self.n, self.call, self.stats
        completion_ids: list[list[int]] = []
        logprobs: list[list[float]] | None = []
        for chunk in self.chunks:
            for i in range(chunk.start, chunk.end):
                part_ids, part_lps = chunk.parts[i]
                completion_ids.extend(part_ids)
                if part_lps is None or logprobs is None:
                    logprobs = None
                else:
                    logprobs.extend(part_lps)
        stats.wall_s = time.monotonic() - self.start
        stats.servers = len(explorer._alive())
        empty = sum(1 for ids in completion_ids if not ids)
        if empty:  # vLLM returns the EOS it stopped at: an empty completion is a server fault, trained as a lone EOS
            logger.warning(
                "Explorer call %d: %d of %d completions came back empty (no token, not even EOS) from %s; they are "
                "trained as empty answers (a lone EOS). Check the explorer server (its model, max_tokens, stop "
                "settings) or what stands in front of it.",
                call,
                empty,
                len(completion_ids),
                ", ".join(s.url for s in explorer._alive()),
            )
        if explorer.progress and (len(self.chunks) > 1 or stats.failed_requests):
            logger.info(
                "Explorer: %d prompts x n=%d in %d requests (%d retried) over %d server(s): %.1f s, %d tokens, "
                "%.0f tokens/s.",
                len(self.prompt_ids),
                n,
                stats.requests,
                stats.failed_requests,
                stats.servers,
                stats.wall_s,
                stats.completion_tokens,
                stats.tokens_per_s,
            )
        return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs, stats=stats, logprobs_checked=True)

    # ------------------------------------------------------------------ requests
    def _dispatch(self) -> None:
        """Send every pending chunk whose back-off is over to the live server with the least outstanding work."""
        explorer = self.explorer
        now = time.monotonic()
        for chunk in list(self.pending):
            if chunk.not_before > now:
                continue
            free = [s for s in explorer._alive() if s.in_flight < explorer.max_concurrent_requests]
            if not free:
                return
            server = min(free, key=lambda s: (s.in_flight_rows, s.in_flight, explorer.servers.index(s)))
            if server.in_flight == 0:  # idle time is no stall: its progress clock starts with the work
                server.progress_at = now
            with explorer._inflight_lock:
                if explorer._cancelled.is_set():
                    return  # the loop raises ExplorerCancelled next
                future = explorer._transport.submit(self._run_chunk(server, chunk))
                explorer._inflight.add(future)
            self.pending.remove(chunk)
            server.in_flight += 1
            server.in_flight_rows += (chunk.end - chunk.start) * self.n
            self.running[future] = (chunk, server)

    async def _run_chunk(self, server: _Server, chunk: _Chunk) -> None:
        """Send the chunk's missing prompts (one request per prompt when seeded, else one for all) and keep what
        came back in ``chunk.parts``; raise the first failure after every request of the chunk has ended."""
        explorer, prompt_ids, n, seeds = self.explorer, self.prompt_ids, self.n, self.seeds
        missing = [i for i in range(chunk.start, chunk.end) if i not in chunk.parts]
        groups = [missing] if seeds is None else [[i] for i in missing]
        results = await asyncio.gather(
            *(
                request_completions(
                    explorer._transport,
                    server.url,
                    explorer._payload(server, [prompt_ids[i] for i in g], n, None if seeds is None else seeds[g[0]]),
                    explorer.request_timeout,
                )
                for g in groups
            ),
            return_exceptions=True,
        )
        failures: list[_RequestFailed] = []
        for group, result in zip(groups, results):
            if isinstance(result, _RequestFailed):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                ids, lps = result
                for j, i in enumerate(group):
                    chunk.parts[i] = (ids[j * n : (j + 1) * n], None if lps is None else lps[j * n : (j + 1) * n])
        if failures:
            # The server's fate follows the worst failure: unreachable > not retryable > retryable.
            raise max(failures, key=lambda f: (f.unreachable, not f.retryable))

    # ------------------------------------------------------------------ hung servers
    def _stall_poll_interval(self) -> float:
        """How often busy servers' counters are read: often enough to find a stall within ~1/6 of its time-out."""
        return max(0.2, min(self.explorer.log_interval_s, self.explorer.stall_timeout / 6))

    def _poll_busy_servers(self) -> list[Future]:
        """Read the counters of every live server that holds requests (one poll per server at a time)."""
        transport = self.explorer._transport
        polls = []
        for server in self.explorer._alive():
            if server.in_flight and server.has_counters and (server.polling is None or server.polling.done()):
                server.polling = transport.submit(poll_token_counters(transport, server))
                polls.append(server.polling)
        return polls

    def _fail_hung_servers(self) -> None:
        """Fail the requests of every busy server without progress for `stall_timeout` seconds (see the class
        docstring of ``ServerExplorer``): it is dropped while others remain, and the call fails when it was the
        last."""
        explorer, n = self.explorer, self.n
        now = time.monotonic()
        for server in explorer._alive():
            idle = now - server.progress_at
            if not (server.in_flight and server.has_counters and idle > explorer.stall_timeout):
                continue
            mine = [(future, chunk) for future, (chunk, s) in self.running.items() if s is server]
            message = (
                f"no progress for {idle:.0f} s with {len(mine)} request(s) in flight (its /metrics token counters "
                f"{' and '.join(_PROGRESS_METRICS)} stayed at {server.work_counter:.0f} and no request finished): it "
                "looks hung"
            )
            for future, chunk in mine:
                future.cancel()  # closes its connection: the server aborts it if it ever wakes up
                self.running.pop(future)
                with explorer._inflight_lock:
                    explorer._inflight.discard(future)
                server.in_flight -= 1
                server.in_flight_rows -= (chunk.end - chunk.start) * n
            for _, chunk in mine:
                if server.alive:
                    self._on_failure(chunk, server, _RequestFailed(message, hung=True))
                else:  # dropped by the first: the others go elsewhere, no retry charged
                    self.pending.appendleft(chunk)

    def _on_failure(self, chunk: _Chunk, server: _Server, exc: _RequestFailed) -> None:
        explorer, n = self.explorer, self.n
        message = str(exc)
        server.failures += 1
        server.last_error = message
        chunk.errors.append(f"{server.url}: {message}")
        what = f"prompts {chunk.start}-{chunk.end - 1} (request {chunk.index + 1})"
        if not exc.retryable:
            raise ExplorerError(
                f"The explorer server at {server.url} rejected a generation request for {what} "
                f"({chunk.end - chunk.start} prompts x n={n}): {message}"
            )
        others = [s for s in explorer._alive() if s is not server]
        if exc.hung and not others:
            raise ExplorerError(
                f"The explorer server at {server.url} made {message}, and no other explorer server is left. Restart "
                "it (a run resumes from its last checkpoint), or raise explorer_stall_timeout if it is only slow "
                f"(now {explorer.stall_timeout:g} s; 0 turns this check off)."
            )
        if server.alive and others and (exc.unreachable or exc.hung or server.failures >= explorer.max_server_failures):
            server.alive = False
            logger.warning(
                "Explorer server %s dropped after %s (%s); continuing with %s.",
                server.url,
                "it could not be reached"
                if exc.unreachable
                else "it made no progress"
                if exc.hung
                else f"{server.failures} failed requests in a row",
                message,
                ", ".join(s.url for s in others),
            )
        if not server.alive and others:
            self.pending.appendleft(chunk)  # its server is gone: no retry charged, sent at once to another one
            return
        chunk.attempts += 1
        if chunk.attempts > explorer.max_retries:
            states = "; ".join(
                f"{s.url} ({'live' if s.alive else 'dropped'}, last error: {s.last_error or 'none'})"
                for s in explorer.servers
            )
            raise ExplorerError(
                f"Explorer generation failed: {what} failed {chunk.attempts} times "
                f"(request timeout {explorer.request_timeout:.0f} s, {explorer.max_retries} retries), and no other "
                f"explorer server is left. Servers: {states}. Errors of this request: {' | '.join(chunk.errors)}"
            )
        delay = explorer.backoff_factor * 2 ** (chunk.attempts - 1)
        chunk.not_before = time.monotonic() + delay
        logger.warning(
            "Explorer request for %s failed on %s (%s); retry %d/%d in %.1f s.",
            what,
            server.url,
            message,
            chunk.attempts,
            explorer.max_retries,
            delay,
        )
        self.pending.appendleft(chunk)

    # ------------------------------------------------------------------ progress
    def _progress_bar(self):
        if not self.explorer.progress or len(self.chunks) <= 1:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=len(self.prompt_ids), desc="explorer", unit="prompt", mininterval=2.0, leave=False)

    def _log_progress(self) -> None:
        explorer, stats = self.explorer, self.stats
        elapsed = time.monotonic() - self.start
        generating = []
        for s in explorer._alive():
            if len(s.generated) == 2 and s.generated[1][0] > s.generated[0][0]:
                (t0, v0), (t1, v1) = s.generated
                generating.append((v1 - v0) / (t1 - t0))
        live_rate = f"; the servers generate {sum(generating):.0f} tokens/s" if generating else ""
        now = time.monotonic()
        quiet = [
            f"{s.url} made no progress for {now - s.progress_at:.0f} s"
            for s in explorer._alive()
            if s.in_flight and s.has_counters and now - s.progress_at >= explorer.log_interval_s
        ]
        live_rate += "".join(f"; {q}" for q in quiet)
        logger.info(
            "Explorer: %d/%d requests done, %d/%d prompts after %.0f s (%d retried), %.0f tokens/s delivered%s; "
            "%d server(s) live.",
            stats.requests,
            len(self.chunks),
            sum(len(c.parts) for c in self.chunks),
            stats.prompts,
            elapsed,
            stats.failed_requests,
            stats.completion_tokens / max(elapsed, 1e-9),
            live_rate,
            len(explorer._alive()),
        )
