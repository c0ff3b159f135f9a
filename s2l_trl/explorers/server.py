"""Explorer behind one or several OpenAI-compatible vLLM servers (`vllm serve` or `trl vllm-serve`): frozen, never
weight-synced.

A round of explorer work at paper scale (1,024 prompts x 16 completions x up to 4,096 tokens) is never one HTTP
request: it is split into chunks of ``prompts_per_request`` prompts, several in flight per server, each with its own
timeout and bounded retries; a failed chunk is retried alone (on the least busy live server) and the results are put
back in prompt order. A server that stops answering is dropped while others remain.

Every prompt of a seeded call is sampled with a seed of its own, derived from the base seed, the call's index and
the prompt's position in the call, so the draws do not depend on chunking, concurrency, retries or which server
answers (see :class:`ServerExplorer`). HTTP runs on an asyncio event loop in a daemon thread: nothing in flight keeps
the interpreter alive, and :meth:`ServerExplorer.close` cancels it (vLLM aborts a request whose client went away).
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 (registers its exit hook now, so that ours runs before it: see below)
import hashlib
import ipaddress
import json
import logging
import math
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import CancelledError as FutureCancelled
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

import httpx

from .base import (
    ExplorerError,
    ExplorerOutput,
    ExplorerStats,
    SamplingSettings,
    logprob_problem,
    logprob_values,
)

logger = logging.getLogger(__name__)

# Text whose tokenization tells tokenizers apart: ASCII prose and code, digits and operators, LaTeX, runs of spaces
# and newlines, accented Latin, Greek, CJK and emoji (byte-level fall-back). The expected tokenizer's special and
# added tokens are appended to it, which checks their ids too (EOS, chat markers, <think>).
IDENTITY_PROBE = (
    "The quick brown fox jumps over the lazy dog. 0123456789 + 42 * 3.14159 = x^2 - y_1;\n"
    "\\boxed{\\frac{a}{b}} \\sqrt{2}  def f(x):\n    return {'k': [1, 2]}\t\n\n"
    "Déjà vu, naïve café; Ελληνικά; 数学问题的答案; 🙂🚀"
)
_MAX_PROBE_SPECIAL_TOKENS = 256
# The log-probs probe: top-k log-probs of one token at two temperatures. Processed log-probs (of the distribution
# sampled from) scale their differences by 1/T; raw ones do not move.
_PROBE_PROMPT = "1 + 1 ="
_PROBE_TEMPERATURES = (1.0, 0.5)
_PROBE_TOP_K = 5
PROCESSED_LOGPROBS = "processed_logprobs"
_FIX_LOGPROBS = "--logprobs-mode processed_logprobs"
# vLLM's Prometheus counter of generated tokens: the live tokens/s of a round whose requests have not finished yet.
_GENERATED_TOKENS_METRIC = "vllm:generation_tokens_total"
# Its counters of work done (prefill and decode), which move at every engine step of a live server: its progress.
_PROGRESS_METRICS = (_GENERATED_TOKENS_METRIC, "vllm:prompt_tokens_total")


# ---------------------------------------------------------------------------------------------------- URLs
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")
_URL_EXAMPLE = "e.g. http://127.0.0.1:8001, or several separated by commas: http://node1:8001,http://node2:8001"


def parse_server_urls(value: str | Sequence[str] | None, option: str = "explorer_server_base_url") -> list[str]:
    """The server URLs of ``value`` (one URL, a comma-separated string of URLs, or a list), checked and normalised
    (no trailing ``/``), without contacting anything.

    Each URL must be ``http(s)://host[:port]`` with no path: the explorer posts to ``<URL>/v1/completions`` itself,
    so an OpenAI-style ``.../v1`` base URL would miss. Any problem (empty value, empty item, no scheme, whitespace,
    a bad host or port, a path, a duplicate) is a ``ValueError`` naming ``option``, the bad value and the fix.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{option} is empty: give the explorer server's URL ({_URL_EXAMPLE}).")
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items:
        raise ValueError(f"{option} is an empty list: give at least one explorer server URL ({_URL_EXAMPLE}).")
    urls: list[str] = []
    for k, item in enumerate(items):
        problem = _url_problem(item)
        if problem:
            where = f" (item {k + 1} of {len(items)} in {value!r})" if len(items) > 1 else ""
            guess = f"http://{item.strip()}" if isinstance(item, str) else ""
            hint = f" Did you mean {guess!r}?" if "://" not in guess[7:] and _url_problem(guess) is None else ""
            raise ValueError(
                f"{option}: {item!r}{where} is not a server URL: {problem}. Give scheme, host and port only, "
                f"{_URL_EXAMPLE}.{hint}"
            )
        url = item.strip().rstrip("/")
        if url in urls:
            raise ValueError(f"{option}: {url!r} appears twice in {value!r}; give each explorer server once.")
        urls.append(url)
    return urls


def _url_problem(item: Any) -> str | None:
    """Why ``item`` is not an ``http(s)://host[:port]`` URL, or ``None`` when it is one."""
    if not isinstance(item, str):
        return f"it is a {type(item).__name__}, not a string"
    text = item.strip()
    if not text:
        return "it is empty (a stray comma?)"
    problems = []
    if any(c.isspace() for c in text):
        problems.append("it contains whitespace")
    if "://" not in text:
        problems.append("it has no scheme (http:// or https://)")
    if problems:
        return "; ".join(problems)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a port that is not a number in range, a malformed IPv6 literal
        return f"it does not parse ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"its scheme is {parts.scheme!r} (use http:// or https://)"
    host = parts.hostname or ""
    if not host:
        return "it has no host"
    if ":" in host:  # an IPv6 literal, given in brackets
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            return f"its host {host!r} is not a valid IPv6 address"
    elif not _HOSTNAME.match(host):
        return f"its host {host!r} is not a valid host name or address"
    if port == 0:
        return "its port is 0"
    if parts.path not in ("", "/"):
        return f"it has a path ({parts.path!r}); the explorer adds /v1/completions itself, so give the server root"
    if parts.query or parts.fragment:
        return "it has a query or fragment"
    return None


def same_server(a: str, b: str) -> bool:
    """Whether two server URLs reach the same server: scheme-default ports filled in, host names compared without
    case, and every name of this machine's loopback (``localhost``, ``127.x.x.x``, ``::1``, ``0.0.0.0``, its own host
    name) taken as one host. Nothing is resolved over the network."""
    return _server_key(a) == _server_key(b)


def _server_key(url: str) -> tuple[str, int | None]:
    import socket

    parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        port = None
    try:
        address = ipaddress.ip_address(host.split("%")[0])
        loopback = address.is_loopback or address.is_unspecified
    except ValueError:
        loopback = host in ("localhost", "localhost.localdomain", socket.gethostname().lower())
    return ("<this machine>" if loopback else host), port


# ---------------------------------------------------------------------------------------------------- logging
class _FallbackHandler(logging.StreamHandler):
    """Prints this module's records (stderr) only while nothing else would: no handler on the loggers above it, as in
    a script that never configured logging. Once a handler exists above (``s2l-train`` puts one on the root logger,
    a user's ``logging.basicConfig`` too), that one prints them and this one stays silent: no line twice."""

    def emit(self, record: logging.LogRecord) -> None:
        parent = logger.parent if logger.propagate else None
        while parent is not None:
            if parent.handlers:
                return
            parent = parent.parent if parent.propagate else None
        super().emit(record)


_fallback = _FallbackHandler()
_fallback.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
logger.addHandler(_fallback)


def show_progress_logs(target: logging.Logger = logger) -> None:
    """Let ``target``'s progress lines (INFO) through unless someone chose a level for it or a logger above it below
    the root: Python's default (root at WARNING) would drop them, and TRL / Transformers set only their own loggers'
    levels. An explicit ``logging.getLogger("s2l_trl").setLevel(...)`` still wins."""
    node: logging.Logger | None = target
    while node is not None and node is not logging.root:
        if node.level != logging.NOTSET:
            return
        node = node.parent
    target.setLevel(logging.INFO)


# ---------------------------------------------------------------------------------------------------- transport
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


# Explorers with a live transport: cancelled when the interpreter exits (see _cancel_all_at_exit).
_LIVE: weakref.WeakSet[ServerExplorer] = weakref.WeakSet()


def _cancel_all_at_exit() -> None:
    """Close every live explorer before Python joins its worker threads at exit (after Ctrl-C, say): a trainer
    thread waiting in `generate` then returns at once instead of holding the process until its requests end."""
    for explorer in list(_LIVE):
        explorer.close()


# `threading._register_atexit` hooks run, newest first, *before* non-daemon threads are joined at exit, and
# concurrent.futures registers the join of its worker threads the same way when it is imported (above): ours runs
# before it. `atexit.register` would run only after those joins.
getattr(threading, "_register_atexit", lambda fn: None)(_cancel_all_at_exit)


# ---------------------------------------------------------------------------------------------------- explorer
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


class ExplorerCancelled(ExplorerError):
    """The call was cancelled (:meth:`ServerExplorer.cancel`) or the explorer closed while it was in flight."""


class _RequestFailed(Exception):
    """A request failed; ``retryable`` says whether sending it again may help, ``unreachable`` whether no connection
    could be made to the server (nothing listens there any more, or the host is gone)."""

    def __init__(self, message: str, retryable: bool = True, unreachable: bool = False, hung: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.unreachable = unreachable
        self.hung = hung  # the server made no progress for `stall_timeout` seconds


class ServerExplorer:
    """Samples from a frozen model served by vLLM's OpenAI-compatible server (token-id prompts in and out).

    **Start-up.** ``base_url`` is checked first (:func:`parse_server_urls`), before anything is contacted. Then every
    server's ``/health`` is polled, all in parallel, until it answers 200 or ``startup_timeout`` seconds have passed,
    with a progress line every ``log_interval_s`` seconds (which URLs are not healthy yet, for how long, and why).
    An answer that is not 200 and will not become one (4xx: not a vLLM server) fails at once, naming the URL and
    what it answered. A server still not healthy at the deadline is *dead*: when others are healthy, the explorer
    goes on without it and warns, naming each dead URL and why (it does not come back later); when none is healthy,
    start-up fails naming every URL. Each healthy server must then serve ``/v1/models``, and its identity is checked:
    its tokenizer must tokenize a fixed probe text (:data:`IDENTITY_PROBE` plus the expected tokenizer's special
    tokens) exactly as ``expected_tokenizer`` does (through ``/tokenize``, or the prompt ids a 1-token
    ``/v1/completions`` echoes where ``/tokenize`` is missing), and, with ``check_model_name``, the model it serves
    must be ``expected_model`` (by name: the last path component, case-insensitive, of the served id or the path it
    was loaded from, so ``Qwen/Qwen3-1.7B-Base`` matches ``/models/Qwen3-1.7B-Base``). A mismatch is an error
    naming both models: token ids of another tokenizer would be trained on as garbage, and another model of the same
    family would make a different experiment than the one recorded.

    **Log-probs.** Plain `vllm serve` returns the log-probs of the model's raw distribution unless it was started
    with ``--logprobs-mode processed_logprobs`` (`trl vllm-serve` passes it); sampled at temperature 0.7 / top-p
    0.95, those are not the probabilities the tokens were drawn with. Each server's mode is read from
    ``GET /server_info`` (vLLM's dev mode, on under `trl vllm-serve`) or, where that is missing, found by a probe:
    the top-5 log-probs of one token at temperatures 1.0 and 0.5 (processed log-prob differences double, raw ones do
    not move). With ``require_processed_logprobs`` (explorer importance sampling or the off-policy mask: every
    weight would be wrong) any other mode, or a probe that cannot tell, is an error naming the URL and the fix;
    otherwise it is a warning (the ``s2l/logp_gap`` metric reads them). Sampling at temperature 1 with top-p 1, no
    top-k and no penalties, raw and processed log-probs are the same: the mode is not checked. With
    ``require_processed_logprobs`` a one-token generation request must also come back with its sampled token's
    log-prob (a server that leaves them out would turn the weights off). Every answer's log-probs are checked where
    they are parsed (vectorised): finite and <= 0 (:data:`~s2l_trl.explorers.base.LOGPROB_TOLERANCE` above 0 is
    rounding; vLLM's -9999.0 is -inf), one per token; an impossible value fails the call with an
    :class:`ExplorerError` (a retry would get the same). Completions with no token at all (vLLM returns the EOS it
    stopped at) are counted and warned about once per call.

    **Seeds.** With ``sampling.seed`` set, prompt ``i`` of the ``c``-th call (counted by :attr:`calls`, saved by
    :meth:`state_dict`) is sampled with its own seed, a hash of (``seed``, ``seed_stream``, ``c``, ``i``), in an HTTP
    request of its own (vLLM applies a request's ``seed`` to every prompt in it and gives the ``k``-th of the ``n``
    completions ``seed + k``; one seed shared by a batch would reuse the same random numbers for every prompt in it,
    and would give two identical prompts identical completions). So chunking, concurrency, retries and which server
    answers do not change what is drawn, and two identical prompts in one call get independent completions.
    vLLM's batching may still change the numerics (how often, measured on CPU: see the tests). ``seed_stream`` tells
    apart explorers that share a base seed (one per training process). With ``seed=None`` requests are unseeded and
    a chunk is one HTTP request.

    **Chunked generation.** ``generate`` splits its prompts into requests of ``prompts_per_request`` prompts (each
    asks for ``n`` completions per prompt), keeps up to ``max_concurrent_requests`` of them in flight per server and
    gives the next one to the live server with the least outstanding work (completions in flight). Each request has
    its own ``request_timeout``; a failed one (connection error, time-out, 5xx, malformed answer) is sent again
    alone, only for its prompts still missing, after an exponential back-off (``backoff_factor * 2**(k-1)``
    seconds), at most ``max_retries`` times. A 4xx answer (e.g. a prompt longer than the server's context) fails at
    once. Completions come back in prompt order whatever order the requests finish in. Every ``log_interval_s``
    seconds a progress line goes to the log (requests and prompts done, tokens/s delivered and, from each server's
    ``/metrics``, generated), and a tqdm bar follows the prompts when a call has more than one request and
    ``progress`` is on. Progress lines are INFO records of this module's logger, made visible by default (see
    :func:`show_progress_logs`).

    The default of 32 prompts per request bounds a request's work: with G_w <= 16 that is at most 512 sequences,
    about what one vLLM engine decodes at once (its ``max_num_seqs``), so a request of 4,096-token completions takes
    a minute or two on one GPU, well under the 600 s default time-out, and a retry repeats little work.

    **A hung server** (stuck engine, stopped process, a GPU fault) would hold a round for ``request_timeout`` x (1 +
    ``max_retries``), 40 minutes by default. So, with ``stall_timeout``, every busy server's ``/metrics`` is read
    every few seconds: vLLM's token counters (``vllm:generation_tokens_total``, ``vllm:prompt_tokens_total``) move at
    every engine step of a live server, however long its requests are. A server whose counters stay put and none of
    whose requests finishes for ``stall_timeout`` seconds while it holds requests (its ``/metrics`` not answering
    counts as no progress) is hung: dropped while another server remains (its requests go there, no retry charged);
    when it is the last, the call fails at once with an error naming it. A server without these counters (another
    OpenAI-compatible server, vLLM with ``--disable-log-stats``) is left to ``request_timeout``. Four
    requests in flight per server keep the engine full while the longest sequences of one request finish. The
    time-out covers queueing inside the server: keep ``prompts_per_request * n * max_concurrent_requests`` near
    what one server runs at once (times its data-parallel size).

    **Several servers.** ``base_url`` may be a list (or a comma-separated string) of server URLs serving the same
    model. A server that refuses connections, or fails ``max_server_failures`` requests in a row, is dropped with a
    warning while another remains; its failed requests go to the others without being charged a retry. The call
    fails, naming every URL and its last error, only when a request has used up its retries and no other server is
    left. How this combines with data parallelism: one ``vllm serve --data-parallel-size K`` server balances
    requests over its K engines behind one URL, so give it ``max_concurrent_requests >= K`` (every engine needs a
    request of its own); explorers on other nodes are each one more URL (``http://<node>:<port>``), and the chunks
    are spread over all of them. Both can be combined: one URL per node, each a data-parallel server.

    **Interrupts.** Requests run on a daemon thread: Ctrl-C ends the process within about a second, whichever thread
    called ``generate``. :meth:`close` (also run when the interpreter exits) cancels what is in flight: a call
    waiting on it raises :class:`ExplorerError`, and vLLM aborts the abandoned generations.

    Args:
        base_url: server URL (``http://127.0.0.1:8001``), a list of URLs, or a comma-separated string of URLs.
        sampling: sampling settings of every request; ``sampling.seed`` seeds the draws (see above).
        startup_timeout: seconds to wait for the servers' ``/health`` before dropping those still not healthy (or
            failing, when none is).
        request_timeout: seconds one request (one chunk) may take, queueing in the server included.
        stall_timeout: seconds a busy server may make no progress before it counts as hung (see above); ``0`` or
            ``None`` turns the check off.
        max_retries: retries of a failed request, with exponential back-off.
        backoff_factor: first back-off in seconds (doubled at each further retry of the same request).
        prompts_per_request: prompts per request (a chunk); see above for the default.
        max_concurrent_requests: requests in flight per server.
        max_server_failures: consecutive failed requests after which a server is dropped (when another remains).
        expected_tokenizer: the tokenizer the server must use (the explorer's, or the learner's when the explorer's
            ids are used as learner ids); ``None`` skips the tokenizer check.
        expected_model: the model id or path the server must serve (``explorer_model``); ``None`` skips the check.
        check_model_name: compare the served model's name with ``expected_model`` (turn off when the server loads
            the same weights from a folder of another name).
        require_processed_logprobs: refuse a server whose log-probs are not those of the sampling distribution
            (pass ``explorer_importance_sampling != "none" or explorer_off_policy_mask``).
        request_logprobs: ask for the sampled tokens' log-probs. They are ~80% of an answer's bytes (~85 bytes a
            token with them, ~10 without) and of the client's decoding time; without them ``logprobs`` is ``None``.
        seed_stream: mixed into every prompt's seed, to tell apart explorers sharing ``sampling.seed``.
        progress: report progress: a tqdm bar for calls of more than one request, and the progress lines (start-up
            waits, rounds, the end-of-call summary). Turn off on all but one training process.
        log_interval_s: seconds between progress lines, at start-up and during a call.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        sampling: SamplingSettings | None = None,
        startup_timeout: float = 240.0,
        request_timeout: float = 600.0,
        stall_timeout: float | None = 180.0,
        max_retries: int = 3,
        backoff_factor: float = 1.0,
        prompts_per_request: int = 32,
        max_concurrent_requests: int = 4,
        max_server_failures: int = 3,
        expected_tokenizer: Any = None,
        expected_model: str | None = None,
        check_model_name: bool = True,
        require_processed_logprobs: bool = False,
        request_logprobs: bool = True,
        seed_stream: int = 0,
        progress: bool = True,
        log_interval_s: float = 10.0,
    ):
        urls = parse_server_urls(base_url, option="base_url")
        for name, value in (
            ("prompts_per_request", prompts_per_request),
            ("max_concurrent_requests", max_concurrent_requests),
            ("max_server_failures", max_server_failures),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}.")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {request_timeout}.")
        if not startup_timeout >= 0:
            raise ValueError(f"startup_timeout must be >= 0 seconds, got {startup_timeout}.")
        if stall_timeout is not None and not stall_timeout >= 0:
            raise ValueError(f"stall_timeout must be >= 0 seconds (0 or None: off), got {stall_timeout}.")
        if not log_interval_s > 0:
            raise ValueError(f"log_interval_s must be > 0, got {log_interval_s}.")
        if require_processed_logprobs and not request_logprobs:
            raise ValueError("require_processed_logprobs=True needs request_logprobs=True (the log-probs it checks).")
        self.sampling = sampling or SamplingSettings()
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.stall_timeout = stall_timeout or None
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.prompts_per_request = prompts_per_request
        self.max_concurrent_requests = max_concurrent_requests
        self.max_server_failures = max_server_failures
        self.require_processed_logprobs = require_processed_logprobs
        self.request_logprobs = request_logprobs
        self.seed_stream = seed_stream
        self.progress = progress
        self.log_interval_s = log_interval_s
        self.calls = 0  # generate() calls so far: the call index every seed derives from
        self.servers = [_Server(url=u) for u in urls]
        self._call_lock = threading.Lock()  # one generate() at a time: the scheduler's state is not shared
        self._closed = threading.Event()
        self._cancelled = threading.Event()  # cancel() of the call in flight
        self._inflight: set[Future] = set()  # its requests, for cancel() from another thread
        self._inflight_lock = threading.Lock()
        show_progress_logs()
        self._transport = _Transport()
        # An explorer dropped without close() must not leave its HTTP thread behind.
        self._finalizer = weakref.finalize(self, self._transport.close)
        _LIVE.add(self)
        try:
            self._connect(expected_tokenizer, expected_model if check_model_name else None)
        except BaseException:
            self.close()
            raise
        first = self._alive()[0]
        self.base_url = first.url  # the first live server, for messages and compatibility
        self.model = first.model

    @property
    def base_urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def max_model_len(self) -> int | None:
        """The smallest context length of the live servers (prompt plus completion must fit it; a request that does
        not fails with HTTP 400), or None when none says."""
        lengths = [s.max_model_len for s in self._alive() if s.max_model_len]
        return min(lengths) if lengths else None

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state of the draws: the base seed and how many calls were made."""
        return {"seed": self.sampling.seed, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the draws of a saved state (:meth:`state_dict`): the next call draws what the call after the save
        drew. A different base seed is kept, with a warning."""
        if state.get("seed", self.sampling.seed) != self.sampling.seed:
            logger.warning(
                "Restoring explorer server draws saved with seed %s into an explorer seeded %s; keeping seed %s.",
                state.get("seed"),
                self.sampling.seed,
                self.sampling.seed,
            )
        self.calls = int(state["calls"])

    def prompt_seed(self, call: int, index: int) -> int:
        """The seed of prompt ``index`` of call ``call`` (vLLM gives its ``k``-th completion ``seed + k``): 62 bits
        of a hash, so that ``seed + k`` stays inside vLLM's int64 and the ranges of two prompts never meet in
        practice."""
        key = f"s2l-server:{self.sampling.seed}:{self.seed_stream}:{call}:{index}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 2

    # ------------------------------------------------------------------ HTTP
    async def _send(
        self, server: _Server, method: str, path: str, payload: Any = None, timeout: float = 30.0
    ) -> httpx.Response:
        """One HTTP request; every failure to get an answer is a :class:`_RequestFailed`."""
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if body is not None else None
        limits = httpx.Timeout(timeout, connect=min(10.0, timeout))
        request = self._transport.client.request(
            method, server.url + path, content=body, headers=headers, timeout=limits
        )
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

    # ------------------------------------------------------------------ start-up
    def _connect(self, expected_tokenizer: Any, expected_model: str | None) -> None:
        """Health of every server (dead ones dropped while one is healthy), then model, identity and log-probs."""
        reasons = self._transport.run(self._wait_healthy())
        dead = [s for s in self.servers if reasons[s.url] is not None]
        if len(dead) == len(self.servers):
            raise ExplorerError("\n".join(self._not_healthy_message(s, reasons[s.url]) for s in dead))
        for server in dead:
            server.alive = False
            server.last_error = reasons[server.url]
            logger.warning(
                "Explorer server %s is not used: it was not healthy within %.0f s (GET /health: %s). Going on with %s.",
                server.url,
                self.startup_timeout,
                reasons[server.url],
                ", ".join(s.url for s in self._alive()),
            )
        live = self._alive()
        self._transport.run(self._gather(*(self._read_model(s) for s in live)))
        if self.stall_timeout:  # whether each server has the counters stall detection reads
            self._transport.run(self._gather(*(self._poll_generated(s) for s in live)))
        expected_ids, probe = None, None
        if expected_tokenizer is not None:
            probe = _identity_probe(expected_tokenizer)
            expected_ids = list(expected_tokenizer(probe, add_special_tokens=False)["input_ids"])
        for server in live:
            self._check_model_name(server, expected_model)
        if expected_ids is not None:
            served = self._transport.run(self._gather(*(self._served_tokenization(s, probe) for s in live)))
            for server, (ids, how) in zip(live, served):
                self._check_tokenization(server, expected_tokenizer, expected_model, expected_ids, ids, how)
        if self.require_processed_logprobs:
            # Weights need the log-probs a generation answer carries: a server that leaves them out (or answers
            # impossible ones) would turn explorer importance sampling off without a word.
            self._transport.run(self._gather(*(self._probe_sampled_logprobs(s) for s in live)))
        if self.request_logprobs and self._logprobs_matter():
            modes = self._transport.run(self._gather(*(self._logprobs_mode(s) for s in live)))
            for server, (mode, how) in zip(live, modes):
                server.logprobs_mode, server.logprobs_mode_source = mode, how
                self._check_logprobs_mode(server)

    @staticmethod
    async def _gather(*coros) -> list:
        return list(await asyncio.gather(*coros))

    async def _wait_healthy(self) -> dict[str, str | None]:
        """Poll every server's /health until healthy or the deadline; url -> ``None`` (healthy) or why not."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.startup_timeout
        last: dict[str, str] = {}
        tasks = {asyncio.ensure_future(self._health_one(s, deadline, last)): s for s in self.servers}
        reasons: dict[str, str | None] = {}
        next_log = start + self.log_interval_s
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending, timeout=max(0.0, next_log - loop.time()), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    reasons[tasks[task].url] = task.result()  # a server that is not vLLM raises: fail at once
                if pending and loop.time() >= next_log and self.progress:
                    next_log += self.log_interval_s
                    waiting = [tasks[t] for t in pending]
                    logger.info(
                        "Explorer start-up: %d of %d server(s) healthy; waiting %.0f s of %.0f s for %s.",
                        len(self.servers) - len(waiting),
                        len(self.servers),
                        loop.time() - start,
                        self.startup_timeout,
                        "; ".join(f"{s.url}/health ({last.get(s.url, 'no answer yet')})" for s in waiting),
                    )
        finally:
            for task in pending:
                task.cancel()
        return reasons

    async def _health_one(self, server: _Server, deadline: float, last: dict[str, str]) -> str | None:
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            try:
                r = await self._send(server, "GET", "/health", timeout=min(10.0, max(remaining, 0.5)))
            except _RequestFailed as exc:
                last[server.url] = (
                    "nothing answered (connection refused)" if str(exc) == "connection refused" else f"no answer: {exc}"
                )
            else:
                if r.status_code == 200:
                    return None
                last[server.url] = f"it answered HTTP {r.status_code} {_snippet(r)}"
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    # A client error will not turn into 200 by waiting: not a vLLM server (or a wrong path).
                    raise ExplorerError(
                        f"The explorer server URL {server.url} is not a vLLM server: GET {server.url}/health answered "
                        f"HTTP {r.status_code} {_snippet(r)}. Point explorer_server_base_url at a `vllm serve` / "
                        "`trl vllm-serve` server (scheme, host and port only, no path)."
                    )
            if loop.time() >= deadline:
                return last[server.url]
            await asyncio.sleep(min(1.0, max(deadline - loop.time(), 0.0)))

    def _not_healthy_message(self, server: _Server, reason: str) -> str:
        hint = (
            "Start it first, e.g. `vllm serve <explorer> --port <port> --logprobs-mode processed_logprobs`, and set "
            "explorer_server_base_url to its address."
            if reason.startswith("nothing answered")
            else "Check that it is a healthy vLLM server (its log says why it is not ready)."
        )
        return (
            f"The explorer server at {server.url} was not healthy within {self.startup_timeout:.0f} s: "
            f"GET {server.url}/health: {reason}. {hint}"
        )

    async def _read_model(self, server: _Server) -> None:
        r, data = None, None
        try:
            r = await self._send(server, "GET", "/v1/models", timeout=30.0)
            data = r.json()["data"][0] if r.status_code == 200 else None
        except (_RequestFailed, ValueError, KeyError, IndexError, TypeError):
            pass
        if not isinstance(data, dict) or not data.get("id"):
            answer = "no answer" if r is None else f"HTTP {r.status_code} {_snippet(r)}"
            raise ExplorerError(
                f"The explorer server at {server.url} answered /health but is not an OpenAI-compatible vLLM server: "
                f"GET {server.url}/v1/models gave {answer}."
            )
        server.model = str(data["id"])
        server.root = str(data.get("root") or data["id"])
        length = data.get("max_model_len")
        server.max_model_len = int(length) if isinstance(length, int) and length > 0 else None

    @staticmethod
    def _served(server: _Server) -> str:
        return server.model if server.root == server.model else f"{server.model} (loaded from {server.root})"

    def _check_model_name(self, server: _Server, expected_model: str | None) -> None:
        if expected_model is None:
            return
        if _model_name(expected_model) not in {_model_name(server.model), _model_name(server.root)}:
            raise ExplorerError(
                f"The explorer server at {server.url} serves {self._served(server)}, not the expected explorer_model "
                f"{expected_model!r}. Serve {expected_model!r} there, or set explorer_model to the served model "
                "(turn off the name check only if the server loads the same weights from a folder of another "
                "name)."
            )

    def _check_tokenization(
        self,
        server: _Server,
        tokenizer: Any,
        expected_model: str | None,
        expected_ids: list[int],
        served_ids: list[int],
        how: str,
    ) -> None:
        if served_ids == expected_ids:
            return
        where = next((i for i, (a, b) in enumerate(zip(served_ids, expected_ids)) if a != b), None)
        where = min(len(served_ids), len(expected_ids)) if where is None else where
        expected_name = getattr(tokenizer, "name_or_path", "") or "the expected tokenizer"
        raise ExplorerError(
            f"The explorer server at {server.url} serves {self._served(server)}, whose tokenizer differs from the "
            f"expected one ({expected_name}"
            + (f", explorer_model {expected_model!r}" if expected_model and expected_model != expected_name else "")
            + f"): a probe text tokenizes to {len(served_ids)} ids on the server ({how}) and {len(expected_ids)} "
            f"here, first difference at position {where} (server {served_ids[where : where + 5]}, expected "
            f"{expected_ids[where : where + 5]}). Its token ids would be read as garbage: serve the explorer "
            "that explorer_model names, or set explorer_model to the served model."
        )

    async def _served_tokenization(self, server: _Server, text: str) -> tuple[list[int], str]:
        """The server's token ids of ``text`` (no special tokens added), and which endpoint gave them."""
        try:
            r = await self._send(
                server, "POST", "/tokenize", {"model": server.model, "prompt": text, "add_special_tokens": False}
            )
            if r.status_code == 200:
                return [int(t) for t in r.json()["tokens"]], "/tokenize"
            if r.status_code not in (404, 405):
                raise ExplorerError(
                    f"The explorer server at {server.url} could not tokenize the identity probe: POST /tokenize "
                    f"answered HTTP {r.status_code} {_snippet(r)}."
                )
            # No /tokenize: the prompt ids that a one-token completion of the text reports.
            payload = {
                "model": server.model,
                "prompt": text,
                "max_tokens": 1,
                "temperature": 0.0,
                "add_special_tokens": False,
                "return_token_ids": True,
            }
            r = await self._send(server, "POST", "/v1/completions", payload, timeout=60.0)
            if r.status_code != 200:
                raise ExplorerError(
                    f"The explorer server at {server.url} could not tokenize the identity probe: it has no /tokenize "
                    f"and POST /v1/completions answered HTTP {r.status_code} {_snippet(r)}."
                )
            return [int(t) for t in r.json()["choices"][0]["prompt_token_ids"]], "/v1/completions prompt ids"
        except _RequestFailed as exc:
            raise ExplorerError(f"The explorer server at {server.url} failed the identity check: {exc}") from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ExplorerError(
                f"The explorer server at {server.url} answered the identity probe in an unexpected format: {exc!r}"
            ) from exc

    def _logprobs_matter(self) -> bool:
        """Whether raw and processed log-probs differ under these sampling settings (they do not at temperature 1
        with top-p 1, no top-k and no penalties)."""
        s = self.sampling
        return not (
            s.temperature == 1.0
            and s.top_p >= 1.0
            and s.top_k is None
            and not s.presence_penalty
            and s.repetition_penalty == 1.0
        )

    async def _logprobs_mode(self, server: _Server) -> tuple[str, str]:
        """(mode, how it was found): vLLM's --logprobs-mode from /server_info, else from the two-temperature probe
        (``"unknown: <why>"`` when the probe cannot tell)."""
        try:
            r = await self._send(server, "GET", "/server_info?config_format=json", timeout=60.0)
            if r.status_code == 200:
                mode = r.json()["vllm_config"]["model_config"]["logprobs_mode"]
                if isinstance(mode, str) and mode:
                    return mode, "GET /server_info"
        except (_RequestFailed, ValueError, KeyError, TypeError):
            pass  # no dev mode (plain `vllm serve`), or another server: probe
        tops = []
        for temperature in _PROBE_TEMPERATURES:
            payload = {
                "model": server.model,
                "prompt": _PROBE_PROMPT,
                "max_tokens": 1,
                "temperature": temperature,
                "top_p": 1.0,
                "top_k": -1,
                "logprobs": _PROBE_TOP_K,
                "seed": 0,
                "return_tokens_as_token_ids": True,
            }
            try:
                r = await self._send(server, "POST", "/v1/completions", payload, timeout=60.0)
            except _RequestFailed as exc:
                return f"unknown: the probe request failed ({exc})", "probe"
            if r.status_code != 200:
                return f"unknown: the probe request answered HTTP {r.status_code} {_snippet(r)}", "probe"
            try:
                top = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
                tops.append({str(k): float(v) for k, v in top.items() if v is not None})
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                return f"unknown: the probe answer has no top log-probs ({exc!r})", "probe"
        ratio = _PROBE_TEMPERATURES[0] / _PROBE_TEMPERATURES[1]
        return classify_logprobs(tops[0], tops[1], ratio), (
            f"probe: top-{_PROBE_TOP_K} log-probs at temperatures {_PROBE_TEMPERATURES[0]} and {_PROBE_TEMPERATURES[1]}"
        )

    async def _probe_sampled_logprobs(self, server: _Server) -> None:
        """Ask for one token as a generation request asks (sampled-token log-probs, ``logprobs=0``) and check that
        the answer carries a log-probability for it."""
        payload = {**self._payload(server, [], 1, 0), "prompt": _PROBE_PROMPT, "max_tokens": 1}
        needs = (
            "explorer importance sampling and the explorer off-policy mask need the sampled tokens' log-probs: "
            "serve the explorer with `vllm serve` / `trl vllm-serve` (which return them when asked, `logprobs=0`), "
            "or set explorer_importance_sampling='none' and explorer_off_policy_mask=False"
        )
        try:
            r = await self._send(server, "POST", "/v1/completions", payload, timeout=60.0)
        except _RequestFailed as exc:
            raise ExplorerError(f"The explorer server at {server.url} failed the log-probs probe: {exc}.") from exc
        if r.status_code != 200:
            raise ExplorerError(
                f"The explorer server at {server.url} answered the log-probs probe (one token, logprobs=0) with HTTP "
                f"{r.status_code} {_snippet(r)}; {needs}."
            )
        try:
            logprobs = _sampled_logprobs(_decode_choices(r.content))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ExplorerError(
                f"The explorer server at {server.url} answered the log-probs probe in an unexpected format ({exc!r}): "
                f"{_snippet(r)}."
            ) from exc
        if not logprobs or not logprobs[0]:
            raise ExplorerError(
                f"The explorer server at {server.url} answers generation requests without log-probs (asked with "
                f"logprobs=0, it returned none): {needs}."
            )
        problem = logprob_problem(logprob_values(logprobs))
        if problem:
            raise ExplorerError(
                f"The explorer server at {server.url} answered the log-probs probe with impossible log-probs: "
                f"{problem} Serve the explorer with `{_FIX_LOGPROBS}`, or set explorer_importance_sampling='none' and "
                "explorer_off_policy_mask=False."
            )

    def _check_logprobs_mode(self, server: _Server) -> None:
        mode, how = server.logprobs_mode, server.logprobs_mode_source
        if mode == PROCESSED_LOGPROBS:
            return
        s = self.sampling
        what = (
            f"could not be told apart ({mode.removeprefix('unknown: ')})"
            if mode.startswith("unknown")
            else f"are {mode!r}"
        )
        sampled = f"temperature {s.temperature}, top-p {s.top_p}" + (f", top-k {s.top_k}" if s.top_k else "")
        fix = (
            f"Restart it as `vllm serve <explorer> ... {_FIX_LOGPROBS}` (`trl vllm-serve` passes it; with "
            "VLLM_SERVER_DEV_MODE=1 its GET /server_info confirms the mode)"
        )
        if self.require_processed_logprobs:
            raise ExplorerError(
                f"The explorer server at {server.url}: its log-probs {what} ({how}), not the log-probs of the "
                f"distribution it samples from ({sampled}): explorer importance sampling and the explorer off-policy "
                f"mask would weight every explorer token with wrong probabilities. {fix}, or set "
                "explorer_importance_sampling='none' and explorer_off_policy_mask=False."
            )
        logger.warning(
            "The explorer server at %s: its log-probs %s (%s), not those of the sampling distribution (%s); the "
            "s2l/logp_gap metric compares the learner with them. %s.",
            server.url,
            what,
            how,
            sampled,
            fix,
        )

    # ------------------------------------------------------------------ generation
    def _payload(self, server: _Server, prompts: list[list[int]], n: int, seed: int | None) -> dict[str, Any]:
        """The body of a token-id `/v1/completions` request, as TRL's `VLLMClient.generate` sends it."""
        s = self.sampling
        payload: dict[str, Any] = {
            "model": server.model,
            "prompt": prompts,
            "n": n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": -1 if s.top_k is None else s.top_k,
            "min_p": 0.0,
            "max_tokens": s.max_tokens,
            "repetition_penalty": s.repetition_penalty,
            "return_token_ids": True,
        }
        if self.request_logprobs:
            payload.update(logprobs=0, return_tokens_as_token_ids=True)
        if s.presence_penalty:
            payload["presence_penalty"] = s.presence_penalty
        if seed is not None:
            payload["seed"] = seed
        return payload

    async def _complete(
        self, server: _Server, prompts: list[list[int]], n: int, seed: int | None
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        """One HTTP generation request; any failure is a :class:`_RequestFailed` saying whether to retry."""
        r = await self._send(
            server, "POST", "/v1/completions", self._payload(server, prompts, n, seed), timeout=self.request_timeout
        )
        if r.status_code != 200:
            retryable = r.status_code >= 500 or r.status_code in (408, 429)
            raise _RequestFailed(f"HTTP {r.status_code} {_snippet(r)}", retryable=retryable)
        try:
            choices = sorted(_decode_choices(r.content), key=lambda c: c.get("index") or 0)
            # JSON integers decode to ints (validated by msgspec): no per-token conversion at ~67M tokens a round.
            completion_ids = [c["token_ids"] for c in choices]
            if not all(isinstance(ids, list) for ids in completion_ids):
                raise TypeError("a choice has no token_ids list (the request asks return_token_ids)")
            logprobs = _sampled_logprobs(choices)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise _RequestFailed(f"malformed answer ({exc!r}): {_snippet(r)}") from exc
        problem = None if logprobs is None else logprob_problem(logprob_values(logprobs))
        if problem:  # not a transient fault: a retry would get the same
            raise ExplorerError(
                f"The explorer server at {server.url} answered impossible log-probs: {problem} Serve the explorer with "
                f"`{_FIX_LOGPROBS}` (the logits modes return logits, not log-probs), or check what stands in front "
                "of it."
            )
        if len(completion_ids) != len(prompts) * n:
            raise _RequestFailed(f"{len(completion_ids)} completions for {len(prompts)} prompts x n={n}")
        # The server echoes each choice's prompt: the rows of prompt i must be rows i*n .. i*n+n-1.
        for k, c in enumerate(choices):
            echoed = c.get("prompt_token_ids")
            if echoed is not None and list(echoed) != list(prompts[k // n]):
                raise _RequestFailed(f"completion {k} answers another prompt than prompt {k // n} of the request")
        return completion_ids, logprobs

    async def _run_chunk(
        self, server: _Server, chunk: _Chunk, prompt_ids: list[list[int]], n: int, seeds: list[int] | None
    ) -> None:
        """Send the chunk's missing prompts (one request per prompt when seeded, else one for all) and keep what
        came back in ``chunk.parts``; raise the first failure after every request of the chunk has ended."""
        missing = [i for i in range(chunk.start, chunk.end) if i not in chunk.parts]
        groups = [missing] if seeds is None else [[i] for i in missing]
        results = await asyncio.gather(
            *(
                self._complete(server, [prompt_ids[i] for i in g], n, None if seeds is None else seeds[g[0]])
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

    async def _poll_generated(self, server: _Server) -> None:
        """One sample of the server's token counters (``/metrics``): the generated ones for the live tokens/s of a
        round, generated plus prompt tokens as its progress (stall detection). A poll that fails shows nothing."""
        try:
            r = await self._send(server, "GET", "/metrics", timeout=5.0)
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

    def cancel(self) -> None:
        """Stop the call in flight now, from any thread: it raises :class:`ExplorerCancelled` and its requests are
        aborted (their connections closed, so vLLM stops generating them). The explorer stays usable; the cancelled
        call has used up its call index (restore a saved :meth:`state_dict` to draw it again). No-op when idle."""
        with self._inflight_lock:
            self._cancelled.set()
            futures = list(self._inflight)
        for future in futures:
            future.cancel()

    def close(self) -> None:
        """Cancel the requests in flight (a call waiting on them raises :class:`ExplorerCancelled`) and close the
        connections; the servers keep running. Idempotent; a closed explorer cannot generate again."""
        self._closed.set()
        self.cancel()
        self._finalizer()  # closes the transport, once
        _LIVE.discard(self)

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        """``n`` completions for each prompt, prompt-major, with the call's :class:`ExplorerStats` (one call at a
        time: concurrent calls wait for each other)."""
        with self._call_lock:
            if self._closed.is_set():
                raise ExplorerError("This ServerExplorer was closed; build a new one.")
            call = self.calls
            self.calls += 1
            self._cancelled.clear()
            try:
                return self._generate(prompt_ids, n, call)
            finally:
                with self._inflight_lock:
                    self._inflight.clear()

    def _generate(self, prompt_ids: list[list[int]], n: int, call: int) -> ExplorerOutput:
        start = time.monotonic()
        if not prompt_ids:
            return ExplorerOutput(completion_ids=[], logprobs=[], stats=ExplorerStats(servers=len(self._alive())))
        seeds = None
        if self.sampling.seed is not None:
            seeds = [self.prompt_seed(call, i) for i in range(len(prompt_ids))]
        size = self.prompts_per_request
        chunks = [_Chunk(k, b, min(b + size, len(prompt_ids))) for k, b in enumerate(range(0, len(prompt_ids), size))]
        stats = ExplorerStats(prompts=len(prompt_ids), rows=len(prompt_ids) * n)
        pending = deque(chunks)
        running: dict[Future, tuple[_Chunk, _Server]] = {}
        background: list[Future] = []  # metrics polls
        bar = self._progress_bar(len(prompt_ids), len(chunks))
        shown = 0
        next_log = start + self.log_interval_s
        next_poll = start
        next_stall_poll = start
        try:
            while pending or running:
                if self._cancelled.is_set() or self._closed.is_set():
                    raise ExplorerCancelled(
                        f"The explorer call {call} ({len(prompt_ids)} prompts x n={n}) was "
                        f"{'closed' if self._closed.is_set() else 'cancelled'} with {len(running)} request(s) in "
                        f"flight and {len(pending)} pending."
                    )
                self._dispatch(pending, running, prompt_ids, n, seeds)
                now = time.monotonic()
                if now >= next_poll and self.progress:
                    next_poll = next_log - min(1.0, self.log_interval_s / 4)
                    if next_poll <= now:
                        next_poll = now + self.log_interval_s
                    background = [f for f in background if not f.done()]
                    background += [self._transport.submit(self._poll_generated(s)) for s in self._alive()]
                if self.stall_timeout and now >= next_stall_poll:
                    next_stall_poll = now + self._stall_poll_interval()
                    background = [f for f in background if not f.done()]
                    background += self._poll_busy_servers()
                    self._fail_hung_servers(running, pending, n)
                waits = [c.not_before - now for c in pending if c.not_before > now]
                stall_poll = [next_stall_poll - now] if self.stall_timeout else []
                timeout = max(0.05, min([*waits, *stall_poll, next_log - now, 1.0]))
                if running:
                    done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
                else:
                    done = set()
                    time.sleep(timeout)  # everything pending is backing off
                for future in done:
                    chunk, server = running.pop(future)
                    with self._inflight_lock:
                        self._inflight.discard(future)
                    server.in_flight -= 1
                    server.in_flight_rows -= (chunk.end - chunk.start) * n
                    try:
                        future.result()
                    except _RequestFailed as exc:
                        stats.failed_requests += 1
                        self._on_failure(chunk, server, exc, pending, n)
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
                    done_prompts = sum(len(c.parts) for c in chunks)
                    if done_prompts > shown:
                        bar.update(done_prompts - shown)
                        shown = done_prompts
                        bar.set_postfix(tok_s=f"{stats.completion_tokens / max(time.monotonic() - start, 1e-9):.0f}")
                if time.monotonic() >= next_log and (pending or running) and self.progress:
                    next_log = time.monotonic() + self.log_interval_s
                    self._log_progress(chunks, stats, start)
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
        completion_ids: list[list[int]] = []
        logprobs: list[list[float]] | None = []
        for chunk in chunks:
            for i in range(chunk.start, chunk.end):
                part_ids, part_lps = chunk.parts[i]
                completion_ids.extend(part_ids)
                if part_lps is None or logprobs is None:
                    logprobs = None
                else:
                    logprobs.extend(part_lps)
        stats.wall_s = time.monotonic() - start
        stats.servers = len(self._alive())
        empty = sum(1 for ids in completion_ids if not ids)
        if empty:  # vLLM returns the EOS it stopped at: an empty completion is a server fault, trained as a lone EOS
            logger.warning(
                "Explorer call %d: %d of %d completions came back empty (no token, not even EOS) from %s; they are "
                "trained as empty answers (a lone EOS). Check the explorer server (its model, max_tokens, stop "
                "settings) or what stands in front of it.",
                call,
                empty,
                len(completion_ids),
                ", ".join(s.url for s in self._alive()),
            )
        if self.progress and (len(chunks) > 1 or stats.failed_requests):
            logger.info(
                "Explorer: %d prompts x n=%d in %d requests (%d retried) over %d server(s): %.1f s, %d tokens, "
                "%.0f tokens/s.",
                len(prompt_ids),
                n,
                stats.requests,
                stats.failed_requests,
                stats.servers,
                stats.wall_s,
                stats.completion_tokens,
                stats.tokens_per_s,
            )
        return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs, stats=stats, logprobs_checked=True)

    def _alive(self) -> list[_Server]:
        return [s for s in self.servers if s.alive]

    def _dispatch(self, pending: deque, running: dict, prompt_ids, n: int, seeds: list[int] | None) -> None:
        """Send every pending chunk whose back-off is over to the live server with the least outstanding work."""
        now = time.monotonic()
        for chunk in list(pending):
            if chunk.not_before > now:
                continue
            free = [s for s in self._alive() if s.in_flight < self.max_concurrent_requests]
            if not free:
                return
            server = min(free, key=lambda s: (s.in_flight_rows, s.in_flight, self.servers.index(s)))
            if server.in_flight == 0:  # idle time is no stall: its progress clock starts with the work
                server.progress_at = now
            with self._inflight_lock:
                if self._cancelled.is_set():
                    return  # the loop raises ExplorerCancelled next
                future = self._transport.submit(self._run_chunk(server, chunk, prompt_ids, n, seeds))
                self._inflight.add(future)
            pending.remove(chunk)
            server.in_flight += 1
            server.in_flight_rows += (chunk.end - chunk.start) * n
            running[future] = (chunk, server)

    # ------------------------------------------------------------------ hung servers
    def _stall_poll_interval(self) -> float:
        """How often busy servers' counters are read: often enough to find a stall within ~1/6 of its time-out."""
        return max(0.2, min(self.log_interval_s, self.stall_timeout / 6))

    def _poll_busy_servers(self) -> list[Future]:
        """Read the counters of every live server that holds requests (one poll per server at a time)."""
        polls = []
        for server in self._alive():
            if server.in_flight and server.has_counters and (server.polling is None or server.polling.done()):
                server.polling = self._transport.submit(self._poll_generated(server))
                polls.append(server.polling)
        return polls

    def _fail_hung_servers(self, running: dict, pending: deque, n: int) -> None:
        """Fail the requests of every busy server without progress for `stall_timeout` seconds (see the class
        docstring): it is dropped while others remain, and the call fails when it was the last."""
        now = time.monotonic()
        for server in self._alive():
            idle = now - server.progress_at
            if not (server.in_flight and server.has_counters and idle > self.stall_timeout):
                continue
            mine = [(future, chunk) for future, (chunk, s) in running.items() if s is server]
            message = (
                f"no progress for {idle:.0f} s with {len(mine)} request(s) in flight (its /metrics token counters "
                f"{' and '.join(_PROGRESS_METRICS)} stayed at {server.work_counter:.0f} and no request finished): it "
                "looks hung"
            )
            for future, chunk in mine:
                future.cancel()  # closes its connection: the server aborts it if it ever wakes up
                running.pop(future)
                with self._inflight_lock:
                    self._inflight.discard(future)
                server.in_flight -= 1
                server.in_flight_rows -= (chunk.end - chunk.start) * n
            for _, chunk in mine:
                if server.alive:
                    self._on_failure(chunk, server, _RequestFailed(message, hung=True), pending, n)
                else:  # dropped by the first: the others go elsewhere, no retry charged
                    pending.appendleft(chunk)

    def _on_failure(self, chunk: _Chunk, server: _Server, exc: _RequestFailed, pending: deque, n: int) -> None:
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
        others = [s for s in self._alive() if s is not server]
        if exc.hung and not others:
            raise ExplorerError(
                f"The explorer server at {server.url} made {message}, and no other explorer server is left. Restart "
                "it (a run resumes from its last checkpoint), or raise explorer_stall_timeout if it is only slow "
                f"(now {self.stall_timeout:g} s; 0 turns this check off)."
            )
        if server.alive and others and (exc.unreachable or exc.hung or server.failures >= self.max_server_failures):
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
            pending.appendleft(chunk)  # its server is gone: no retry charged, sent at once to another one
            return
        chunk.attempts += 1
        if chunk.attempts > self.max_retries:
            states = "; ".join(
                f"{s.url} ({'live' if s.alive else 'dropped'}, last error: {s.last_error or 'none'})"
                for s in self.servers
            )
            raise ExplorerError(
                f"Explorer generation failed: {what} failed {chunk.attempts} times "
                f"(request timeout {self.request_timeout:.0f} s, {self.max_retries} retries), and no other explorer "
                f"server is left. Servers: {states}. Errors of this request: {' | '.join(chunk.errors)}"
            )
        delay = self.backoff_factor * 2 ** (chunk.attempts - 1)
        chunk.not_before = time.monotonic() + delay
        logger.warning(
            "Explorer request for %s failed on %s (%s); retry %d/%d in %.1f s.",
            what,
            server.url,
            message,
            chunk.attempts,
            self.max_retries,
            delay,
        )
        pending.appendleft(chunk)

    def _progress_bar(self, total: int, num_chunks: int):
        if not self.progress or num_chunks <= 1:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="explorer", unit="prompt", mininterval=2.0, leave=False)

    def _log_progress(self, chunks: list[_Chunk], stats: ExplorerStats, start: float) -> None:
        elapsed = time.monotonic() - start
        generating = []
        for s in self._alive():
            if len(s.generated) == 2 and s.generated[1][0] > s.generated[0][0]:
                (t0, v0), (t1, v1) = s.generated
                generating.append((v1 - v0) / (t1 - t0))
        live_rate = f"; the servers generate {sum(generating):.0f} tokens/s" if generating else ""
        now = time.monotonic()
        quiet = [
            f"{s.url} made no progress for {now - s.progress_at:.0f} s"
            for s in self._alive()
            if s.in_flight and s.has_counters and now - s.progress_at >= self.log_interval_s
        ]
        live_rate += "".join(f"; {q}" for q in quiet)
        logger.info(
            "Explorer: %d/%d requests done, %d/%d prompts after %.0f s (%d retried), %.0f tokens/s delivered%s; "
            "%d server(s) live.",
            stats.requests,
            len(chunks),
            sum(len(c.parts) for c in chunks),
            stats.prompts,
            elapsed,
            stats.failed_requests,
            stats.completion_tokens / max(elapsed, 1e-9),
            live_rate,
            len(self._alive()),
        )


# ---------------------------------------------------------------------------------------------------- helpers
def classify_logprobs(at_high: dict[str, float], at_low: dict[str, float], ratio: float) -> str:
    """What a server's log-probs are, from the top-k log-probs of one position sampled at two temperatures whose
    ratio (high / low) is ``ratio``: ``processed_*`` when the differences between tokens scale by ``ratio``,
    ``raw_*`` when they do not move; ``*_logits`` when the values are not normalised log-probabilities (some > 0);
    ``"unknown: <why>"`` otherwise."""
    keys = [k for k in at_high if k in at_low and at_high[k] > -9999.0 and at_low[k] > -9999.0]
    if len(keys) < 2:
        return "unknown: fewer than two tokens with finite log-probs at both temperatures"
    ref = max(keys, key=lambda k: at_high[k])
    d_high = [at_high[k] - at_high[ref] for k in keys if k != ref]
    d_low = [at_low[k] - at_low[ref] for k in keys if k != ref]
    scale = sum(x * x for x in d_high)
    if scale < 1e-10:
        return "unknown: the top tokens have equal log-probs"
    slope = sum(x * y for x, y in zip(d_high, d_low)) / scale
    kind = "logits" if max(*at_high.values(), *at_low.values()) > 1e-3 else "logprobs"
    tolerance = 0.2 * (ratio - 1.0)
    if abs(slope - ratio) <= tolerance:
        return f"processed_{kind}"
    if abs(slope - 1.0) <= tolerance:
        return f"raw_{kind}"
    return (
        f"unknown: log-prob differences changed by x{slope:.3f} between the temperatures "
        f"(raw: x1, processed: x{ratio:g})"
    )


def _identity_probe(tokenizer: Any) -> str:
    specials = list(dict.fromkeys(getattr(tokenizer, "all_special_tokens", []) or []))
    added = [
        t.content if hasattr(t, "content") else str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
    ]
    extra = list(dict.fromkeys(specials + added))[:_MAX_PROBE_SPECIAL_TOKENS]
    return IDENTITY_PROBE + " " + " ".join(extra)


try:  # msgspec is a vLLM dependency; without it the json module decodes the answers
    import msgspec
except ImportError:  # pragma: no cover - depends on the environment
    msgspec = None

if msgspec is not None:

    class _LogProbsFields(msgspec.Struct):
        token_logprobs: list[float | None] = []

    class _ChoiceFields(msgspec.Struct):
        index: int = 0
        token_ids: list[int] | None = None
        prompt_token_ids: list[int] | None = None
        logprobs: _LogProbsFields | None = None

    class _AnswerFields(msgspec.Struct):
        choices: list[_ChoiceFields]

    _answer_decoder = msgspec.json.Decoder(_AnswerFields)


def _decode_choices(body: bytes) -> list[dict[str, Any]]:
    """The choices of a `/v1/completions` answer, keeping only what the explorer reads (ids, prompt ids, sampled
    log-probs). With msgspec the rest (text, per-token strings, top-log-prob dicts, offsets) is skipped without
    being built: at paper scale a round is ~67M tokens of JSON."""
    if msgspec is None:
        return json.loads(body)["choices"]
    try:
        answer = _answer_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc
    return [
        {
            "index": c.index,
            "token_ids": c.token_ids,
            "prompt_token_ids": c.prompt_token_ids,
            "logprobs": None if c.logprobs is None else {"token_logprobs": c.logprobs.token_logprobs},
        }
        for c in answer.choices
    ]


def _sampled_logprobs(choices: list[dict[str, Any]]) -> list[list[float]] | None:
    """The sampled tokens' log-probabilities of completion choices (``logprobs=0``), NaN where the server gave none;
    ``None`` when it returned no log-probs at all. Read from ``token_logprobs``, the sampled token's entry (the
    ``top_logprobs`` may rank another token first)."""
    if not choices or choices[0].get("logprobs") is None:
        return None
    out = []
    for c in choices:
        values = c["logprobs"]["token_logprobs"]
        if len(values) != len(c["token_ids"]):
            raise ValueError(f"{len(values)} log-probs for {len(c['token_ids'])} tokens")
        out.append([math.nan if v is None else v for v in values] if None in values else values)
    return out


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


def _model_name(name: str) -> str:
    """The comparable name of a model id or path: its last component, lower-cased (a Hub cache folder
    ``models--org--name`` or its ``snapshots/<hash>`` give ``name``)."""
    parts = PurePath(str(name).rstrip("/")).parts
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.split("--")[-1].lower()
    return (parts[-1] if parts else str(name)).lower()
