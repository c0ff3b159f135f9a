"""A fake vLLM explorer server for tests and the scale lab: OpenAI-compatible, it answers at once with synthetic
completions of realistic lengths, so the client side of S2L (HTTP, JSON decoding of tens of millions of token ids,
chunking, retries) can be timed at paper counts on a CPU machine. A sibling of :mod:`.fault_proxy` (which needs a
real server behind it).

Endpoints, shaped like vLLM 0.31's: ``GET /health``, ``GET /v1/models``, ``POST /tokenize``, ``POST
/v1/completions`` (token-id or text prompts, one or a batch; ``n``, ``max_tokens``, ``logprobs``,
``return_token_ids``, ``seed``, ``temperature``), ``GET /metrics`` (``vllm:generation_tokens_total``) and, with
``server_info=True`` (vLLM's dev mode), ``GET /server_info``.

Completions are drawn from a pool of ``pool_size`` sequences made once at start-up: lengths scattered around
``mean_tokens`` (log-normal, ``length_spread`` its sigma), token ids from the tokenizer's ordinary vocabulary, each
cut at the request's ``max_tokens`` (``finish_reason="length"``) or else ending in EOS (``"stop"``). Their JSON is
encoded once per (sequence, ``max_tokens``) and cached, so an answer is a concatenation of ready bytes. Which
sequence completion ``k`` of a prompt gets is a hash of the prompt and ``seed + k`` (vLLM's child seeds), so seeded
requests are reproducible; unseeded ones draw from the server's own seeded generator.

Log-probs: every sampled token has a synthetic log-prob. Top-k log-probs (``logprobs > 0``: the explorer's
log-probs probe) come from fixed synthetic logits, returned as ``logprobs_mode`` says: ``processed_logprobs``
(log-softmax of logits / temperature, what `--logprobs-mode processed_logprobs` gives), ``raw_logprobs`` (vLLM's
default: temperature ignored), ``processed_logits`` or ``raw_logits``. Faults of the sampled tokens' log-probs, for the
explorer's checks (``sampled_logprobs``): ``"none"`` (answers carry no log-probs even when asked), ``"probabilities"``
(``exp`` of the log-prob), ``"positive"`` (its negation), ``"-inf"`` (vLLM's -9999.0 on each completion's first token),
``"short"`` (one value fewer than tokens). ``empty_completions`` answers that share of completions with no token at all.

    with FakeServer(tokenizer, mean_tokens=2048) as server:        # in this process (threads)
        explorer = ServerExplorer(server.base_url, ...)
    with FakeServerProcess(tokenizer_path, mean_tokens=2048) as server:  # in a child process (own GIL)
        ...

Command line: ``python -m s2l_trl.devtools.fake_server --port 8001 --tokenizer <path> --mean_tokens 2048``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np

from .http_stub import ThreadedStub
from .vllm_server import free_port, wait_for_health

LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs", "processed_logits", "raw_logits")
SAMPLED_LOGPROBS = ("logprobs", "none", "probabilities", "positive", "-inf", "short")
# Synthetic logits of the top tokens at a position (the rest of the vocabulary far below), for top-k log-probs.
_TOP_LOGITS = np.array([4.0, 3.1, 2.5, 2.2, 1.6, 1.1, 0.7, 0.2, -0.4, -1.0] + [-3.0] * 54, dtype=np.float64)


class FakeServer(ThreadedStub):
    """An OpenAI-compatible stand-in for a vLLM server, answering at once with synthetic completions.

    Args:
        tokenizer: a tokenizer (object or path) whose ``/tokenize`` answers, vocabulary and EOS the fake uses; ``None``
            uses ``vocab_size`` / ``eos_token_id`` and tokenizes text as its UTF-8 bytes.
        model: the served model id (``/v1/models``); default the tokenizer's path, else ``"fake-explorer"``.
        mean_tokens: mean completion length before the ``max_tokens`` cut.
        length_spread: sigma of the log-normal lengths (0: every completion ``mean_tokens`` long).
        pool_size: distinct synthetic completions.
        seed: seed of the pool and of unseeded requests.
        logprobs_mode: what the log-probs are (see the module docstring).
        server_info: answer ``GET /server_info`` as vLLM's dev mode does (with ``logprobs_mode``); else 404.
        latency_s: seconds every generation request waits before its answer (0: at once).
        max_model_len: the context length ``/v1/models`` reports (vLLM's ``max_model_len``).
        sampled_logprobs: what the sampled tokens' log-probs are: ``"logprobs"`` (right) or a fault (see the module
            docstring).
        empty_completions: share of completions answered with no token (chosen by the completion's draw).
        vocab_size / eos_token_id: used without a tokenizer.
        host / port: where to listen (default a free port on 127.0.0.1).
    """

    thread_name = "fake-server"
    keep_alive = True  # HTTP/1.1, as uvicorn

    def __init__(
        self,
        tokenizer: Any = None,
        model: str | None = None,
        mean_tokens: int = 1024,
        length_spread: float = 0.5,
        pool_size: int = 128,
        seed: int = 0,
        logprobs_mode: str = "processed_logprobs",
        server_info: bool = False,
        latency_s: float = 0.0,
        max_model_len: int = 1 << 20,
        sampled_logprobs: str = "logprobs",
        empty_completions: float = 0.0,
        vocab_size: int = 32000,
        eos_token_id: int = 2,
        host: str = "127.0.0.1",
        port: int | None = None,
    ):
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}.")
        if sampled_logprobs not in SAMPLED_LOGPROBS:
            raise ValueError(f"sampled_logprobs must be one of {SAMPLED_LOGPROBS}, got {sampled_logprobs!r}.")
        if not 0.0 <= empty_completions <= 1.0:
            raise ValueError(f"empty_completions must be in [0, 1], got {empty_completions!r}.")
        if mean_tokens < 1 or pool_size < 1:
            raise ValueError(f"mean_tokens and pool_size must be >= 1, got {mean_tokens} and {pool_size}.")
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.tokenizer = tokenizer
        if tokenizer is not None:
            vocab_size = len(tokenizer)
            eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eos_token_id
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
        else:
            special = {eos_token_id}
        self.model = model or (str(getattr(tokenizer, "name_or_path", "") or "") or "fake-explorer")
        self.vocab_size = vocab_size
        self.eos_token_id = int(eos_token_id)
        self.logprobs_mode = logprobs_mode
        self.server_info = server_info
        self.latency_s = latency_s
        self.max_model_len = max_model_len
        self.sampled_logprobs = sampled_logprobs
        self.empty_completions = empty_completions
        self.host = host
        self.port = port or free_port(host)
        self.generation_requests = 0
        self.requests_seen: list[str] = []  # "METHOD /path" of every request, in order
        self.generated_tokens = 0
        self._lock = threading.Lock()
        self._rng = random.Random(f"fake-server-requests:{seed}")
        # The pool: token ids (ordinary tokens only, so that EOS appears only where a completion stops) and log-probs.
        rng = np.random.default_rng(seed)
        ordinary = np.array([i for i in range(vocab_size) if i not in special], dtype=np.int64)
        lengths = np.maximum(
            1, np.round(mean_tokens * rng.lognormal(-(length_spread**2) / 2, length_spread, pool_size))
        )
        self.pool_lengths = [int(x) for x in lengths]
        self._pool_ids = [ordinary[rng.integers(0, len(ordinary), size=n)].tolist() for n in self.pool_lengths]
        self._pool_lps = [(-rng.exponential(0.6, size=n)).astype(np.float32).tolist() for n in self.pool_lengths]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ handling
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path, _, _ = handler.path.partition("?")
        with self._lock:
            self.requests_seen.append(f"{method} {path}")
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return _reply(handler, 400, {"error": {"message": "the body is not JSON"}})
        if method == "GET" and path == "/health":
            return _reply(handler, 200, b"")
        if method == "GET" and path == "/v1/models":
            card = {"id": self.model, "object": "model", "root": self.model, "max_model_len": self.max_model_len}
            return _reply(handler, 200, {"object": "list", "data": [card]})
        if method == "GET" and path == "/metrics":
            text = (
                f'vllm:generation_tokens_total{{engine="0",model_name="{self.model}"}} {float(self.generated_tokens)}\n'
            )
            return _reply(handler, 200, text.encode(), "text/plain; version=0.0.4")
        if method == "GET" and path == "/server_info" and self.server_info:
            return _reply(handler, 200, {"vllm_config": {"model_config": {"logprobs_mode": self.logprobs_mode}}})
        if method == "POST" and path == "/tokenize":
            ids = self._tokenize(str(payload.get("prompt", "")), bool(payload.get("add_special_tokens", True)))
            return _reply(handler, 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids})
        if method == "POST" and path == "/v1/completions":
            try:
                answer = self._complete(payload)
            except ValueError as exc:
                return _reply(handler, 400, {"error": {"message": str(exc), "type": "BadRequestError"}})
            if self.latency_s:
                time.sleep(self.latency_s)
            return _reply(handler, 200, answer)
        return _reply(handler, 404, {"detail": "Not Found"})

    def _tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        return [b % self.vocab_size for b in text.encode()]

    def _complete(self, payload: dict[str, Any]) -> bytes:
        prompt = payload.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError("prompt must be a string, a list of token ids, or a list of either")
        prompts = [
            self._tokenize(p, bool(payload.get("add_special_tokens", True))) if isinstance(p, str) else p
            for p in prompt
        ]
        n = int(payload.get("n") or 1)
        max_tokens = int(payload.get("max_tokens") or 16)
        top = payload.get("logprobs")
        seed = payload.get("seed")
        temperature = 1.0 if payload.get("temperature") is None else float(payload["temperature"])
        with_ids = bool(payload.get("return_token_ids"))
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got {n} and {max_tokens}")
        choices: list[bytes] = []
        tokens = 0
        for p, ids in enumerate(prompts):
            key = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest()
            prompt_json = json.dumps(ids, separators=(",", ":")).encode() if with_ids else b"null"
            for k in range(n):
                if seed is None:
                    with self._lock:
                        entry = self._rng.randrange(len(self.pool_lengths))
                else:
                    draw = hashlib.blake2b(key + str(int(seed) + k).encode(), digest_size=8).digest()
                    entry = int.from_bytes(draw, "big") % len(self.pool_lengths)
                if top:
                    part, count = self._choice_with_top(entry, max_tokens, int(top), temperature, with_ids)
                else:
                    part, count = self._choice(entry, max_tokens, top is not None, with_ids)
                tokens += count
                choices.append(b'{"index":%d,%s,"prompt_token_ids":%s}' % (p * n + k, part, prompt_json))
        with self._lock:
            self.generation_requests += 1
            self.generated_tokens += tokens
        prompt_tokens = sum(len(ids) for ids in prompts)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
        head = {"id": f"cmpl-fake-{self.generation_requests}", "object": "text_completion", "created": int(time.time())}
        return b"".join(
            [
                json.dumps({**head, "model": self.model})[:-1].encode(),
                b',"choices":[',
                b",".join(choices),
                b'],"usage":',
                json.dumps(usage).encode(),
                b"}",
            ]
        )

    def _sampled(self, lps: list[float]) -> list[float] | None:
        """The sampled tokens' log-probs as the server answers them (``sampled_logprobs``)."""
        mode = self.sampled_logprobs
        if mode == "none":
            return None
        if mode == "probabilities":
            return [math.exp(v) for v in lps]
        if mode == "positive":
            return [-v for v in lps]
        if mode == "-inf":
            return [-9999.0, *lps[1:]]
        if mode == "short":
            return lps[:-1]
        return lps

    def _cut(self, entry: int, max_tokens: int) -> tuple[list[int], list[float], str]:
        if self.empty_completions and _unit(f"empty:{entry}") < self.empty_completions:
            return [], [], "stop"
        ids, lps = self._pool_ids[entry], self._pool_lps[entry]
        if len(ids) >= max_tokens:
            return ids[:max_tokens], lps[:max_tokens], "length"
        return [*ids, self.eos_token_id], [*lps, -0.05], "stop"

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one server object lives as long as its cache should)
    def _choice(self, entry: int, max_tokens: int, logprobs: bool, with_ids: bool) -> tuple[bytes, int]:
        """Everything of a choice but its index and prompt ids, encoded once: (bytes, completion tokens)."""
        ids, lps, finish = self._cut(entry, max_tokens)
        fields = {"text": "tok " * len(ids), "logprobs": None}
        sampled = self._sampled(lps)
        if logprobs and sampled is not None:
            names = [f"token_id:{t}" for t in ids]
            fields["logprobs"] = {
                "text_offset": list(range(0, 4 * len(ids), 4)),
                "token_logprobs": sampled,
                "tokens": names,
                "top_logprobs": [{name: lp} for name, lp in zip(names, lps)],
            }
        fields.update(finish_reason=finish, stop_reason=None, token_ids=ids if with_ids else None)
        fields["prompt_logprobs"] = None
        return json.dumps(fields, separators=(",", ":"))[1:-1].encode(), len(ids)

    def _choice_with_top(
        self, entry: int, max_tokens: int, top: int, temperature: float, with_ids: bool
    ) -> tuple[bytes, int]:
        """A choice whose every position carries the top-``top`` log-probs of the synthetic logits (not cached)."""
        ids, _, finish = self._cut(entry, max_tokens)
        logits = _TOP_LOGITS / (temperature if self.logprobs_mode.startswith("processed") and temperature > 0 else 1)
        if self.logprobs_mode.endswith("logprobs"):
            values = logits - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))
        else:
            values = logits
        # The synthetic distribution ranks tokens 0, 1, 2, ... of the ordinary vocabulary; the sampled token is the
        # first one (so its entry is the top one).
        first = ids[0] if ids else 0
        ranked = [first, *itertools.islice((t for t in range(self.vocab_size) if t != first), top - 1)]
        tops, sampled = [], []
        for _ in ids:
            entries = {f"token_id:{t}": float(v) for t, v in zip(ranked, values[:top])}
            tops.append(entries)
            sampled.append(float(values[0]))
        sampled = self._sampled(sampled)
        fields = {
            "text": "tok " * len(ids),
            "logprobs": None
            if sampled is None
            else {
                "text_offset": list(range(0, 4 * len(ids), 4)),
                "token_logprobs": sampled,
                "tokens": [f"token_id:{t}" for t in ids],
                "top_logprobs": tops,
            },
            "finish_reason": finish,
            "stop_reason": None,
            "token_ids": ids if with_ids else None,
            "prompt_logprobs": None,
        }
        return json.dumps(fields, separators=(",", ":"))[1:-1].encode(), len(ids)


def _unit(key: str) -> float:
    """A number in [0, 1) drawn from ``key`` (the same in every run)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def _reply(handler: BaseHTTPRequestHandler, status: int, body: Any, content_type: str = "application/json") -> None:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    except OSError:  # the client went away
        handler.close_connection = True


class FakeServerProcess:
    """A :class:`FakeServer` in a child process (its own interpreter, so it does not share the client's GIL), stopped
    by its PID. Takes :class:`FakeServer`'s arguments; ``tokenizer`` must be a path here."""

    def __init__(self, tokenizer: str | os.PathLike | None = None, startup_timeout: float = 60.0, **kwargs: Any):
        self.port = kwargs.pop("port", None) or free_port(kwargs.get("host", "127.0.0.1"))
        self.host = kwargs.pop("host", "127.0.0.1")
        self.args = ["--port", str(self.port), "--host", self.host]
        if tokenizer is not None:
            self.args += ["--tokenizer", str(tokenizer)]
        for key, value in kwargs.items():
            if isinstance(value, bool):
                self.args += [f"--{key}"] if value else []
            elif value is not None:
                self.args += [f"--{key}", str(value)]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeServerProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "s2l_trl.devtools.fake_server", *self.args])
        try:
            wait_for_health(self.base_url, self.startup_timeout, self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> FakeServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def benchmark(
    base_url: str,
    prompts: int = 1024,
    n: int = 16,
    max_tokens: int = 4096,
    prompts_per_request: int = 1,
    concurrency: int = 4,
    prompt_tokens: int = 256,
) -> dict[str, float]:
    """How fast the server at ``base_url`` answers one explorer round (``prompts`` x ``n`` completions of at most
    ``max_tokens``), read as bytes and not decoded: the serving side alone. A first pass warms the fake's caches."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    bodies = [
        json.dumps(
            {
                "prompt": [
                    [(7 * (b + i) + j) % 200 + 3 for j in range(prompt_tokens)] for i in range(prompts_per_request)
                ],
                "n": n,
                "max_tokens": max_tokens,
                "logprobs": 0,
                "return_token_ids": True,
                "return_tokens_as_token_ids": True,
                "seed": b,
            }
        ).encode()
        for b in range(0, prompts, prompts_per_request)
    ]
    local = threading.local()

    def fetch(body: bytes) -> tuple[int, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=None)
        r = local.client.post(f"{base_url}/v1/completions", content=body, headers={"Content-Type": "application/json"})
        r.raise_for_status()
        # vLLM (and the fake) put `usage` last: read the token count without decoding the whole answer.
        tail = r.content[r.content.rfind(b'"usage":') + len(b'"usage":') : -1]
        return len(r.content), int(json.loads(tail)["completion_tokens"])

    def one_pass() -> tuple[float, int, int]:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(fetch, bodies))
        return time.perf_counter() - start, sum(r[0] for r in results), sum(r[1] for r in results)

    one_pass()  # warm-up: the fake encodes each pool completion once per max_tokens
    wall, size, tokens = one_pass()
    return {
        "requests": len(bodies),
        "completion_tokens": tokens,
        "bytes": size,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "mb_per_s": size / wall / 1e6,
        "bytes_per_token": size / max(tokens, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], prog="python -m s2l_trl.devtools.fake_server"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tokenizer", default=None, help="tokenizer path (default: none, byte tokenization)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--mean_tokens", type=int, default=1024)
    parser.add_argument("--length_spread", type=float, default=0.5)
    parser.add_argument("--pool_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logprobs_mode", default="processed_logprobs", choices=LOGPROBS_MODES)
    parser.add_argument("--server_info", action="store_true")
    parser.add_argument("--latency_s", type=float, default=0.0)
    parser.add_argument("--sampled_logprobs", default="logprobs", choices=SAMPLED_LOGPROBS)
    parser.add_argument("--empty_completions", type=float, default=0.0)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--eos_token_id", type=int, default=2)
    bench = parser.add_argument_group("--benchmark: time one round served by a fake in a child process, then exit")
    bench.add_argument("--benchmark", action="store_true")
    bench.add_argument("--prompts", type=int, default=1024)
    bench.add_argument("--n", type=int, default=16)
    bench.add_argument("--max_tokens", type=int, default=4096)
    bench.add_argument("--prompts_per_request", type=int, default=1)
    bench.add_argument("--concurrency", type=int, default=4)
    args = vars(parser.parse_args(argv))
    round_args = {k: args.pop(k) for k in ("prompts", "n", "max_tokens", "prompts_per_request", "concurrency")}
    if args.pop("benchmark"):
        args.pop("port")
        with FakeServerProcess(**args) as server:
            print(json.dumps(benchmark(server.base_url, **round_args), indent=1))
        return
    tokenizer = Path(args["tokenizer"]) if args["tokenizer"] else None
    server = FakeServer(**{**args, "tokenizer": tokenizer})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.start()
    print(f"fake explorer server at {server.base_url} (model {server.model})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
