"""Explorer behind one or several OpenAI-compatible vLLM servers (`trl vllm-serve` or `vllm serve`): frozen, never
weight-synced.

A round of explorer work at paper scale (1,024 prompts x 16 completions x up to 4,096 tokens) is never one HTTP
request: it is split into chunks of ``prompts_per_request`` prompts, several in flight per server, each with its own
timeout and bounded retries; a failed chunk is retried alone (on the least busy live server) and the results are put
back in prompt order. A server that stops answering is dropped while others remain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .base import ExplorerError, ExplorerOutput, ExplorerStats, SamplingSettings

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


@dataclass
class _Server:
    """One explorer server and what the scheduler knows about it."""

    url: str
    session: requests.Session
    model: str = ""  # the served model id (`/v1/models`), sent with every request
    root: str = ""  # the path or id the server loaded the model from
    in_flight: int = 0  # requests in flight
    in_flight_rows: int = 0  # completions they ask for: the "outstanding work" chunks are balanced on
    failures: int = 0  # consecutive failed requests
    last_error: str = ""
    alive: bool = True


@dataclass
class _Chunk:
    index: int
    start: int  # first prompt of the chunk
    end: int
    attempts: int = 0  # failures charged to this chunk
    not_before: float = 0.0  # back-off: not re-sent before this time (monotonic)
    errors: list[str] = field(default_factory=list)


class _RequestFailed(Exception):
    """A generation request failed; ``retryable`` says whether sending it again may help, ``unreachable`` whether
    no connection could be made to the server (nothing listens there any more, or the host is gone)."""

    def __init__(self, message: str, retryable: bool = True, unreachable: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.unreachable = unreachable


class ServerExplorer:
    """Samples from a frozen model served by vLLM's OpenAI-compatible server (token-id prompts in and out).

    **Start-up.** Each server's ``/health`` is polled until it answers 200, for at most ``startup_timeout`` seconds
    (TRL's own `VLLMClient` poll has no deadline for a server that answers something else). A closed port, an answer
    that is not 200 (e.g. 404: not a vLLM server, which fails at once) or a server without ``/v1/models`` is an
    error naming the URL and what it answered. Then the server's identity is checked: its tokenizer must tokenize a
    fixed probe text (:data:`IDENTITY_PROBE` plus the expected tokenizer's special tokens) exactly as
    ``expected_tokenizer`` does (through ``/tokenize``, or the prompt ids a 1-token ``/v1/completions`` echoes where
    ``/tokenize`` is missing), and, with ``check_model_name``, the model it serves must be ``expected_model`` (by
    name: the last path component, case-insensitive, of the served id or the path it was loaded from, so
    ``Qwen/Qwen3-1.7B-Base`` matches ``/models/Qwen3-1.7B-Base``). A mismatch is an error naming both models:
    token ids of another tokenizer would be trained on as garbage, and another model of the same family would make
    a different experiment than the one recorded.

    **Chunked generation.** ``generate`` splits its prompts into requests of ``prompts_per_request`` prompts (each
    asks for ``n`` completions per prompt), keeps up to ``max_concurrent_requests`` of them in flight per server and
    gives the next one to the live server with the least outstanding work (completions in flight). Each request has
    its own ``request_timeout``; a failed one (connection error, time-out, 5xx, malformed answer) is sent again
    alone after an exponential back-off (``backoff_factor * 2**(k-1)`` seconds), at most ``max_retries`` times. A
    4xx answer (e.g. a prompt longer than the server's context) fails at once. Completions come back in prompt
    order whatever order the requests finish in. Progress (prompts done, tokens/s) goes to the log every
    ``log_interval_s`` seconds and to a tqdm bar when a call has more than one request and ``progress`` is on.

    The default of 32 prompts per request bounds a request's work: with G_w <= 16 that is at most 512 sequences,
    about what one vLLM engine decodes at once (its ``max_num_seqs``), so a request of 4,096-token completions takes
    a minute or two on one GPU, well under the 600 s default time-out, and a retry repeats little work. Four
    requests in flight per server keep the engine full while the longest sequences of one request finish. The
    time-out covers queueing inside the server: keep ``prompts_per_request * n * max_concurrent_requests`` near
    what one server runs at once (times its data-parallel size).

    **Several servers.** ``base_url`` may be a list (or a comma-separated string) of server URLs serving the same
    model. A server that refuses connections, or fails ``max_server_failures`` requests in a row, is dropped with a
    warning while another remains; its failed requests go to the others without being charged a retry. The call
    fails, naming every URL and its last error, only when a request has used up its retries and no other server is
    left. How this combines with data parallelism: one ``trl vllm-serve --data_parallel_size K`` server balances
    requests over its K engines behind one URL, so give it ``max_concurrent_requests >= K`` (every engine needs a
    request of its own); explorers on other nodes are each one more URL (``http://<node>:<port>``), and the chunks
    are spread over all of them. Both can be combined: one URL per node, each a data-parallel server.

    Args:
        base_url: server URL (``http://127.0.0.1:8001``), a list of URLs, or a comma-separated string of URLs.
        sampling: sampling settings of every request.
        startup_timeout: seconds to wait for every server's ``/health`` before raising an error that names the URL.
        request_timeout: seconds one request (one chunk) may take, queueing in the server included.
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
        progress: show a tqdm bar for calls of more than one request.
        log_interval_s: seconds between progress lines in the log during a call.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        sampling: SamplingSettings | None = None,
        startup_timeout: float = 240.0,
        request_timeout: float = 600.0,
        max_retries: int = 3,
        backoff_factor: float = 1.0,
        prompts_per_request: int = 32,
        max_concurrent_requests: int = 4,
        max_server_failures: int = 3,
        expected_tokenizer: Any = None,
        expected_model: str | None = None,
        check_model_name: bool = True,
        progress: bool = True,
        log_interval_s: float = 30.0,
    ):
        urls = [u.strip().rstrip("/") for u in (base_url.split(",") if isinstance(base_url, str) else base_url)]
        urls = [u for u in urls if u]
        if not urls:
            raise ValueError("ServerExplorer needs at least one server URL.")
        if len(set(urls)) != len(urls):
            raise ValueError(f"Explorer server URLs must be distinct, got {urls}.")
        for name, value in (
            ("prompts_per_request", prompts_per_request),
            ("max_concurrent_requests", max_concurrent_requests),
            ("max_server_failures", max_server_failures),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}.")
        self.sampling = sampling or SamplingSettings()
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.prompts_per_request = prompts_per_request
        self.max_concurrent_requests = max_concurrent_requests
        self.max_server_failures = max_server_failures
        self.progress = progress
        self.log_interval_s = log_interval_s
        self.servers = [_Server(url=u, session=self._session()) for u in urls]
        self._call_lock = threading.Lock()  # one generate() at a time: the scheduler's state is not shared
        self._connect(expected_tokenizer, expected_model if check_model_name else None)
        self.base_url = self.servers[0].url  # the first server, for messages and compatibility
        self.model = self.servers[0].model

    @property
    def base_urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def _session(self) -> requests.Session:
        session = requests.Session()
        # No transport-level retries: a failed request is retried here, possibly on another server.
        adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=self.max_concurrent_requests + 2)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    # ------------------------------------------------------------------ start-up
    def _connect(self, expected_tokenizer: Any, expected_model: str | None) -> None:
        """Health, model and identity of every server, checked in parallel within ``startup_timeout``."""
        deadline = time.monotonic() + self.startup_timeout
        with ThreadPoolExecutor(max_workers=len(self.servers), thread_name_prefix="s2l-explorer-start") as pool:
            futures = [pool.submit(self._connect_one, s, deadline) for s in self.servers]
            errors = []
            for f in futures:
                try:
                    f.result()
                except ExplorerError as exc:
                    errors.append(str(exc))
        if errors:
            raise ExplorerError("\n".join(errors))
        for server in self.servers:
            self._check_identity(server, expected_tokenizer, expected_model)

    def _connect_one(self, server: _Server, deadline: float) -> None:
        url = f"{server.url}/health"
        last = "nothing answered (connection refused)"
        answered = False
        while True:
            remaining = deadline - time.monotonic()
            try:
                r = server.session.get(url, timeout=(min(5.0, max(remaining, 0.1)), min(10.0, max(remaining, 0.1))))
            except requests.ConnectionError as exc:
                last = "nothing answered (connection refused)" if _refused(exc) else f"connection failed ({exc})"
            except requests.Timeout:
                answered = True
                last = "it accepted the connection but sent no answer"
            else:
                if r.status_code == 200:
                    break
                answered = True
                last = f"it answered HTTP {r.status_code} {_snippet(r)}"
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    # A client error will not turn into 200 by waiting: not a vLLM server (or a wrong path).
                    raise ExplorerError(
                        f"The explorer server URL {server.url} is not a vLLM server: GET {url} answered HTTP "
                        f"{r.status_code} {_snippet(r)}. Point explorer_server_base_url at a `trl vllm-serve` / "
                        "`vllm serve` server (scheme, host and port only, no path)."
                    )
            if time.monotonic() >= deadline:
                hint = (
                    "Start it first, e.g. `trl vllm-serve --model <explorer> --port <port>`, and set "
                    "explorer_server_base_url to its address."
                    if not answered
                    else "Check that it is a healthy vLLM server (its log says why it is not ready)."
                )
                raise ExplorerError(
                    f"The explorer server at {server.url} was not healthy within {self.startup_timeout:.0f} s: "
                    f"GET {url}: {last}. {hint}"
                )
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        try:
            r = server.session.get(f"{server.url}/v1/models", timeout=(5.0, 30.0))
            data = r.json()["data"][0] if r.status_code == 200 else None
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
            r, data = None, None
        if not isinstance(data, dict) or not data.get("id"):
            answer = "no answer" if r is None else f"HTTP {r.status_code} {_snippet(r)}"
            raise ExplorerError(
                f"The explorer server at {server.url} answered /health but is not an OpenAI-compatible vLLM server: "
                f"GET {server.url}/v1/models gave {answer}."
            )
        server.model = str(data["id"])
        server.root = str(data.get("root") or data["id"])

    def _check_identity(self, server: _Server, tokenizer: Any, expected_model: str | None) -> None:
        served = server.model if server.root == server.model else f"{server.model} (loaded from {server.root})"
        if expected_model is not None:
            names = {_model_name(server.model), _model_name(server.root)}
            if _model_name(expected_model) not in names:
                raise ExplorerError(
                    f"The explorer server at {server.url} serves {served}, not the expected explorer_model "
                    f"{expected_model!r}. Serve {expected_model!r} there, or set explorer_model to the served model "
                    "(turn off the name check only if the server loads the same weights from a folder of another "
                    "name)."
                )
        if tokenizer is None:
            return
        specials = list(dict.fromkeys(getattr(tokenizer, "all_special_tokens", []) or []))
        added = [
            t.content if hasattr(t, "content") else str(t)
            for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
        ]
        extra = list(dict.fromkeys(specials + added))[:_MAX_PROBE_SPECIAL_TOKENS]
        probe = IDENTITY_PROBE + " " + " ".join(extra)
        expected_ids = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        served_ids, how = self._served_tokenization(server, probe)
        if served_ids != expected_ids:
            where = next((i for i, (a, b) in enumerate(zip(served_ids, expected_ids)) if a != b), None)
            where = min(len(served_ids), len(expected_ids)) if where is None else where
            expected_name = getattr(tokenizer, "name_or_path", "") or "the expected tokenizer"
            raise ExplorerError(
                f"The explorer server at {server.url} serves {served}, whose tokenizer differs from the expected "
                f"one ({expected_name}"
                + (f", explorer_model {expected_model!r}" if expected_model and expected_model != expected_name else "")
                + f"): a probe text tokenizes to {len(served_ids)} ids on the server ({how}) and {len(expected_ids)} "
                f"here, first difference at position {where} (server {served_ids[where : where + 5]}, expected "
                f"{expected_ids[where : where + 5]}). Its token ids would be read as garbage: serve the explorer "
                "that explorer_model names, or set explorer_model to the served model."
            )

    def _served_tokenization(self, server: _Server, text: str) -> tuple[list[int], str]:
        """The server's token ids of ``text`` (no special tokens added), and which endpoint gave them."""
        try:
            r = server.session.post(
                f"{server.url}/tokenize",
                json={"model": server.model, "prompt": text, "add_special_tokens": False},
                timeout=(5.0, 30.0),
            )
            if r.status_code == 200:
                return [int(t) for t in r.json()["tokens"]], "/tokenize"
            if r.status_code not in (404, 405):
                raise ExplorerError(
                    f"The explorer server at {server.url} could not tokenize the identity probe: POST /tokenize "
                    f"answered HTTP {r.status_code} {_snippet(r)}."
                )
            # No /tokenize: the prompt ids that a one-token completion of the text reports.
            r = server.session.post(
                f"{server.url}/v1/completions",
                json={
                    "model": server.model,
                    "prompt": text,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "add_special_tokens": False,
                    "return_token_ids": True,
                },
                timeout=(5.0, 60.0),
            )
            if r.status_code != 200:
                raise ExplorerError(
                    f"The explorer server at {server.url} could not tokenize the identity probe: it has no /tokenize "
                    f"and POST /v1/completions answered HTTP {r.status_code} {_snippet(r)}."
                )
            return [int(t) for t in r.json()["choices"][0]["prompt_token_ids"]], "/v1/completions prompt ids"
        except requests.RequestException as exc:
            raise ExplorerError(f"The explorer server at {server.url} failed the identity check: {exc}") from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ExplorerError(
                f"The explorer server at {server.url} answered the identity probe in an unexpected format: {exc!r}"
            ) from exc

    # ------------------------------------------------------------------ generation
    def _payload(self, server: _Server, prompts: list[list[int]], n: int) -> dict[str, Any]:
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
            "logprobs": 0,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
        }
        if s.presence_penalty:
            payload["presence_penalty"] = s.presence_penalty
        if s.seed is not None:
            payload["seed"] = s.seed
        return payload

    def _request(
        self, server: _Server, prompts: list[list[int]], n: int
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        """One generation request; any failure is a :class:`_RequestFailed` saying whether to retry."""
        url = f"{server.url}/v1/completions"
        try:
            r = server.session.post(
                url,
                json=self._payload(server, prompts, n),
                timeout=(min(10.0, self.request_timeout), self.request_timeout),
            )
        except requests.ConnectTimeout as exc:
            raise _RequestFailed(f"could not connect ({exc})", unreachable=True) from exc
        except requests.Timeout as exc:
            raise _RequestFailed(f"no answer within {self.request_timeout:.0f} s ({type(exc).__name__})") from exc
        except requests.ConnectionError as exc:
            if _refused(exc):
                raise _RequestFailed("connection refused", unreachable=True) from exc
            if _no_connection(exc):
                raise _RequestFailed(f"could not connect ({exc})", unreachable=True) from exc
            raise _RequestFailed(f"connection error ({exc})") from exc
        except requests.RequestException as exc:
            raise _RequestFailed(f"request error ({exc})") from exc
        if r.status_code != 200:
            retryable = r.status_code >= 500 or r.status_code in (408, 429)
            raise _RequestFailed(f"HTTP {r.status_code} {_snippet(r)}", retryable=retryable)
        try:
            choices = sorted(r.json()["choices"], key=lambda c: c.get("index", 0))
            completion_ids = [[int(t) for t in c["token_ids"]] for c in choices]
            logprobs = _sampled_logprobs(choices)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise _RequestFailed(f"malformed answer ({exc!r}): {_snippet(r)}") from exc
        if len(completion_ids) != len(prompts) * n:
            raise _RequestFailed(f"{len(completion_ids)} completions for {len(prompts)} prompts x n={n}")
        # The server echoes each choice's prompt: the rows of prompt i must be rows i*n .. i*n+n-1.
        for k, c in enumerate(choices):
            echoed = c.get("prompt_token_ids")
            if echoed is not None and list(echoed) != list(prompts[k // n]):
                raise _RequestFailed(f"completion {k} answers another prompt than prompt {k // n} of the request")
        return completion_ids, logprobs

    def close(self) -> None:
        """Close the HTTP sessions (the servers keep running)."""
        for server in self.servers:
            server.session.close()

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        """``n`` completions for each prompt, prompt-major, with the call's :class:`ExplorerStats` (one call at a
        time: concurrent calls wait for each other)."""
        with self._call_lock:
            return self._generate(prompt_ids, n)

    def _generate(self, prompt_ids: list[list[int]], n: int) -> ExplorerOutput:
        start = time.monotonic()
        if not prompt_ids:
            return ExplorerOutput(completion_ids=[], logprobs=[], stats=ExplorerStats(servers=len(self._alive())))
        size = self.prompts_per_request
        chunks = [_Chunk(k, b, min(b + size, len(prompt_ids))) for k, b in enumerate(range(0, len(prompt_ids), size))]
        results: list[tuple[list[list[int]], list[list[float]] | None] | None] = [None] * len(chunks)
        stats = ExplorerStats(prompts=len(prompt_ids), rows=len(prompt_ids) * n)
        pending = deque(chunks)
        running: dict[Future, tuple[_Chunk, _Server]] = {}
        bar = self._progress_bar(len(prompt_ids), len(chunks))
        next_log = start + self.log_interval_s
        workers = self.max_concurrent_requests * len(self.servers)
        pool = ThreadPoolExecutor(max_workers=min(workers, len(chunks)), thread_name_prefix="s2l-explorer-request")
        try:
            while pending or running:
                self._dispatch(pending, running, pool, prompt_ids, n)
                now = time.monotonic()
                waits = [c.not_before - now for c in pending if c.not_before > now]
                timeout = max(0.05, min([*waits, 1.0]))
                if not running:
                    time.sleep(timeout)  # everything pending is backing off
                    continue
                done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    chunk, server = running.pop(future)
                    server.in_flight -= 1
                    server.in_flight_rows -= (chunk.end - chunk.start) * n
                    try:
                        completion_ids, logprobs = future.result()
                    except _RequestFailed as exc:
                        stats.failed_requests += 1
                        self._on_failure(chunk, server, exc, pending, n)
                        continue
                    server.failures = 0
                    results[chunk.index] = (completion_ids, logprobs)
                    stats.requests += 1
                    tokens = sum(len(c) for c in completion_ids)
                    stats.completion_tokens += tokens
                    if bar is not None:
                        bar.update(chunk.end - chunk.start)
                        bar.set_postfix(tok_s=f"{stats.completion_tokens / max(time.monotonic() - start, 1e-9):.0f}")
                if time.monotonic() >= next_log and (pending or running):
                    next_log = time.monotonic() + self.log_interval_s
                    self._log_progress(results, chunks, stats, start)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # requests in flight finish in the background, unread
            raise
        finally:
            if bar is not None:
                bar.close()
        pool.shutdown(wait=False)
        completion_ids: list[list[int]] = []
        logprobs: list[list[float]] | None = []
        for part_ids, part_lps in results:
            completion_ids.extend(part_ids)
            if part_lps is None or logprobs is None:
                logprobs = None
            else:
                logprobs.extend(part_lps)
        stats.wall_s = time.monotonic() - start
        stats.servers = len(self._alive())
        if len(chunks) > 1 or stats.failed_requests:
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
        return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs, stats=stats)

    def _alive(self) -> list[_Server]:
        return [s for s in self.servers if s.alive]

    def _dispatch(self, pending: deque, running: dict, pool: ThreadPoolExecutor, prompt_ids, n: int) -> None:
        """Send every pending chunk whose back-off is over to the live server with the least outstanding work."""
        now = time.monotonic()
        for chunk in list(pending):
            if chunk.not_before > now:
                continue
            free = [s for s in self._alive() if s.in_flight < self.max_concurrent_requests]
            if not free:
                return
            server = min(free, key=lambda s: (s.in_flight_rows, s.in_flight, self.servers.index(s)))
            pending.remove(chunk)
            server.in_flight += 1
            server.in_flight_rows += (chunk.end - chunk.start) * n
            running[pool.submit(self._request, server, prompt_ids[chunk.start : chunk.end], n)] = (chunk, server)

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
        if server.alive and others and (exc.unreachable or server.failures >= self.max_server_failures):
            server.alive = False
            logger.warning(
                "Explorer server %s dropped after %s (%s); continuing with %s.",
                server.url,
                "it could not be reached" if exc.unreachable else f"{server.failures} failed requests in a row",
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

    def _log_progress(self, results, chunks, stats: ExplorerStats, start: float) -> None:
        done = sum(c.end - c.start for c, r in zip(chunks, results) if r is not None)
        elapsed = time.monotonic() - start
        logger.info(
            "Explorer: %d/%d prompts after %.0f s (%d/%d requests, %d retried), %.0f tokens/s, %d server(s) live.",
            done,
            stats.prompts,
            elapsed,
            stats.requests,
            len(chunks),
            stats.failed_requests,
            stats.completion_tokens / max(elapsed, 1e-9),
            len(self._alive()),
        )


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
        out.append([float("nan") if v is None else float(v) for v in values])
    return out


def _no_connection(exc: BaseException) -> bool:
    """Whether a connection error happened while connecting (urllib3's ``NewConnectionError``), not after."""
    from urllib3.exceptions import NewConnectionError

    return any(isinstance(e, NewConnectionError) for e in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was caused by or wraps (requests and urllib3 nest them)."""
    seen: dict[int, BaseException] = {}
    stack = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen[id(e)] = e
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return list(seen.values())


def _refused(exc: BaseException) -> bool:
    """Whether a connection error means that nothing listens at the address (connection refused)."""
    return any(isinstance(e, ConnectionRefusedError) for e in _chain(exc)) or "connection refused" in str(exc).lower()


def _snippet(response: requests.Response, limit: int = 200) -> str:
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
