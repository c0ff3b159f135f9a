"""What the server explorer knows about each of its servers, and the ``/metrics`` poll that keeps their progress.

Why a module of its own: start-up fills a server's identity (model, context length, log-probs mode), the scheduler its
load and health, and both read vLLM's token counters (live tokens/s, and the progress that tells a slow server from a
hung one); one record per server keeps that in one place.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .transport import _RequestFailed, _Transport

# vLLM's Prometheus counter of generated tokens: the live tokens/s of a round whose requests have not finished yet.
_GENERATED_TOKENS_METRIC = "vllm:generation_tokens_total"
# Its counters of work done (prefill and decode), which move at every engine step of a live server: its progress.
_PROGRESS_METRICS = (_GENERATED_TOKENS_METRIC, "vllm:prompt_tokens_total")


@dataclass
class _Server:
    """One explorer server and what the scheduler knows about it."""

    url: str
    model: str = ""  # the served model id (`/v1/models`), sent with every request
    root: str = ""  # the path or id the server loaded the model from
    max_model_len: int | None = None  # its context length (`/v1/models`), where it says
    logprobs_mode: str = ""  # what its log-probs are (vLLM's --logprobs-mode), as found at start-up
    logprobs_mode_source: str = ""  # how that was found
    in_flight: int = 0  # requests (chunks) in flight
    in_flight_rows: int = 0  # completions they ask for: the "outstanding work" chunks are balanced on
    failures: int = 0  # consecutive failed requests
    last_error: str = ""
    alive: bool = True
    generated: deque = field(default_factory=lambda: deque(maxlen=2))  # (time, generated-tokens counter) samples
    # Stall detection: whether /metrics has vLLM's token counters, their last sum, and when the server last showed
    # progress (a counter moved, a request finished, or it got work while idle).
    has_counters: bool = False
    work_counter: float | None = None
    progress_at: float = 0.0
    polling: Any = None  # the /metrics poll in flight, if any


async def poll_token_counters(transport: _Transport, server: _Server) -> None:
    """One sample of the server's token counters (``/metrics``): the generated ones for the live tokens/s of a
    round, generated plus prompt tokens as its progress (stall detection). A poll that fails shows nothing."""
    try:
        r = await transport.send(server.url, "GET", "/metrics", timeout=5.0)
    except _RequestFailed:
        return
    if r.status_code != 200:
        return
    totals: dict[str, float] = {}
    for line in r.text.splitlines():
        name = next((m for m in _PROGRESS_METRICS if line.startswith(m)), None)
        if name is not None:
            try:
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(None, 1)[-1])
            except ValueError:
                pass
    now = time.monotonic()
    if _GENERATED_TOKENS_METRIC in totals:
        server.generated.append((now, totals[_GENERATED_TOKENS_METRIC]))
    if totals:
        work = sum(totals.values())
        if server.work_counter is not None and work > server.work_counter:
            server.progress_at = now
        server.work_counter, server.has_counters = work, True
