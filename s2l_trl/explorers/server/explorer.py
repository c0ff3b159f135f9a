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

import concurrent.futures.thread  # noqa: F401 (registers its exit hook now, so that ours runs before it: see below)
import hashlib
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from ..base import ExplorerError, ExplorerOutput, SamplingSettings
from . import startup_checks as checks
from .completions import completion_payload
from .log import logger, show_progress_logs
from .scheduler import ChunkedCall
from .servers import _Server, poll_token_counters
from .transport import _Transport
from .urls import parse_server_urls

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


class ServerExplorer:
    """Samples from a frozen model served by vLLM's OpenAI-compatible server (token-id prompts in and out).

    **Start-up.** ``base_url`` is checked first (:func:`parse_server_urls`), before anything is contacted. Then every
    server's ``/health`` is polled, all in parallel, until it answers 200 or ``startup_timeout`` seconds have passed,
    with a progress line every ``log_interval_s`` seconds (which URLs are not healthy yet, for how long, and why).
    An answer that is not 200 and will not become one (4xx: not a vLLM server) fails at once, naming the URL and
    what it answered. A server still not healthy at the deadline is *dead*: when others are healthy, the explorer
    goes on without it and warns, naming each dead URL and why (it does not come back later); when none is healthy,
    start-up fails naming every URL. Each healthy server must then serve ``/v1/models``, and its identity is checked:
    its tokenizer must tokenize a fixed probe text (:data:`~.startup_checks.IDENTITY_PROBE` plus the expected
    tokenizer's special tokens) exactly as ``expected_tokenizer`` does (through ``/tokenize``, or the prompt ids a
    1-token ``/v1/completions`` echoes where ``/tokenize`` is missing), and, with ``check_model_name``, the model it
    serves must be ``expected_model`` (by name: the last path component, case-insensitive, of the served id or the
    path it was loaded from, so ``Qwen/Qwen3-1.7B-Base`` matches ``/models/Qwen3-1.7B-Base``). A mismatch is an error
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

    # ------------------------------------------------------------------ start-up
    def _connect(self, expected_tokenizer: Any, expected_model: str | None) -> None:
        """Health of every server (dead ones dropped while one is healthy), then model, identity and log-probs
        (each check in :mod:`.startup_checks`)."""
        transport = self._transport
        reasons = transport.run(
            checks.wait_healthy(transport, self.servers, self.startup_timeout, self.log_interval_s, self.progress)
        )
        dead = [s for s in self.servers if reasons[s.url] is not None]
        if len(dead) == len(self.servers):
            raise ExplorerError(
                "\n".join(checks.not_healthy_message(s, reasons[s.url], self.startup_timeout) for s in dead)
            )
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
        transport.gather(checks.read_model(transport, s) for s in live)
        if self.stall_timeout:  # whether each server has the counters stall detection reads
            transport.gather(poll_token_counters(transport, s) for s in live)
        expected_ids, probe = None, None
        if expected_tokenizer is not None:
            probe = checks.identity_probe(expected_tokenizer)
            expected_ids = list(expected_tokenizer(probe, add_special_tokens=False)["input_ids"])
        for server in live:
            checks.check_model_name(server, expected_model)
        if expected_ids is not None:
            served = transport.gather(checks.served_tokenization(transport, s, probe) for s in live)
            for server, (ids, how) in zip(live, served):
                checks.check_tokenization(server, expected_tokenizer, expected_model, expected_ids, ids, how)
        if self.require_processed_logprobs:
            # Weights need the log-probs a generation answer carries: a server that leaves them out (or answers
            # impossible ones) would turn explorer importance sampling off without a word.
            transport.gather(checks.probe_sampled_logprobs(transport, s, self._payload(s, [], 1, 0)) for s in live)
        if self.request_logprobs and checks.logprobs_matter(self.sampling):
            modes = transport.gather(checks.logprobs_mode(transport, s) for s in live)
            for server, (mode, how) in zip(live, modes):
                server.logprobs_mode, server.logprobs_mode_source = mode, how
                checks.check_logprobs_mode(server, self.sampling, self.require_processed_logprobs)

    # ------------------------------------------------------------------ generation
    def _payload(self, server: _Server, prompts: list[list[int]], n: int, seed: int | None) -> dict[str, Any]:
        """The body of a token-id `/v1/completions` request to ``server`` under this explorer's sampling settings."""
        return completion_payload(server.model, prompts, n, seed, self.sampling, self.request_logprobs)

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
                return ChunkedCall(self, prompt_ids, n, call).run()
            finally:
                with self._inflight_lock:
                    self._inflight.clear()

    def _alive(self) -> list[_Server]:
        return [s for s in self.servers if s.alive]
