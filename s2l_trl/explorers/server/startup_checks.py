"""The server explorer's start-up checks: every server healthy (or dropped), serving the expected model with the
expected tokenizer, and answering the log-probs the run needs.

Why a module of its own: these run once, before any training, each against one server, and each failure is an error
naming the URL and the fix; the explorer's constructor reads them in order (``ServerExplorer._connect``). A wrong
tokenizer would have its token ids trained on as garbage, raw log-probs would weight every explorer token wrongly.
"""

from __future__ import annotations

import asyncio
from pathlib import PurePath
from typing import Any

from ..base import ExplorerError, SamplingSettings, logprob_problem, logprob_values
from .completions import _FIX_LOGPROBS, _decode_choices, _sampled_logprobs
from .log import logger
from .servers import _Server
from .transport import _RequestFailed, _snippet, _Transport

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


async def wait_healthy(
    transport: _Transport, servers: list[_Server], startup_timeout: float, log_interval_s: float, progress: bool
) -> dict[str, str | None]:
    """Poll every server's /health until healthy or the deadline (a progress line every ``log_interval_s`` seconds
    with ``progress``); url -> ``None`` (healthy) or why not. A server that is not vLLM fails at once."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + startup_timeout
    last: dict[str, str] = {}
    tasks = {asyncio.ensure_future(_health_one(transport, s, deadline, last)): s for s in servers}
    reasons: dict[str, str | None] = {}
    next_log = start + log_interval_s
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, next_log - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                reasons[tasks[task].url] = task.result()  # a server that is not vLLM raises: fail at once
            if pending and loop.time() >= next_log and progress:
                next_log += log_interval_s
                waiting = [tasks[t] for t in pending]
                logger.info(
                    "Explorer start-up: %d of %d server(s) healthy; waiting %.0f s of %.0f s for %s.",
                    len(servers) - len(waiting),
                    len(servers),
                    loop.time() - start,
                    startup_timeout,
                    "; ".join(f"{s.url}/health ({last.get(s.url, 'no answer yet')})" for s in waiting),
                )
    finally:
        for task in pending:
            task.cancel()
    return reasons


async def _health_one(transport: _Transport, server: _Server, deadline: float, last: dict[str, str]) -> str | None:
    loop = asyncio.get_running_loop()
    while True:
        remaining = deadline - loop.time()
        try:
            r = await transport.send(server.url, "GET", "/health", timeout=min(10.0, max(remaining, 0.5)))
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


def not_healthy_message(server: _Server, reason: str, startup_timeout: float) -> str:
    """Why start-up fails for a server that never became healthy, and what to do."""
    hint = (
        "Start it first, e.g. `vllm serve <explorer> --port <port> --logprobs-mode processed_logprobs`, and set "
        "explorer_server_base_url to its address."
        if reason.startswith("nothing answered")
        else "Check that it is a healthy vLLM server (its log says why it is not ready)."
    )
    return (
        f"The explorer server at {server.url} was not healthy within {startup_timeout:.0f} s: "
        f"GET {server.url}/health: {reason}. {hint}"
    )


async def read_model(transport: _Transport, server: _Server) -> None:
    """Fill in the model ``server`` serves, where it was loaded from and its context length (``/v1/models``); a
    server without a model list is not a vLLM server."""
    r, data = None, None
    try:
        r = await transport.send(server.url, "GET", "/v1/models", timeout=30.0)
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


def _served(server: _Server) -> str:
    return server.model if server.root == server.model else f"{server.model} (loaded from {server.root})"


def check_model_name(server: _Server, expected_model: str | None) -> None:
    """Refuse a server whose served model is not ``expected_model`` by name (``None``: no check)."""
    if expected_model is None:
        return
    if _model_name(expected_model) not in {_model_name(server.model), _model_name(server.root)}:
        raise ExplorerError(
            f"The explorer server at {server.url} serves {_served(server)}, not the expected explorer_model "
            f"{expected_model!r}. Serve {expected_model!r} there, or set explorer_model to the served model "
            "(turn off the name check only if the server loads the same weights from a folder of another "
            "name)."
        )


def check_tokenization(
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
        f"The explorer server at {server.url} serves {_served(server)}, whose tokenizer differs from the "
        f"expected one ({expected_name}"
        + (f", explorer_model {expected_model!r}" if expected_model and expected_model != expected_name else "")
        + f"): a probe text tokenizes to {len(served_ids)} ids on the server ({how}) and {len(expected_ids)} "
        f"here, first difference at position {where} (server {served_ids[where : where + 5]}, expected "
        f"{expected_ids[where : where + 5]}). Its token ids would be read as garbage: serve the explorer "
        "that explorer_model names, or set explorer_model to the served model."
    )


async def served_tokenization(transport: _Transport, server: _Server, text: str) -> tuple[list[int], str]:
    """The server's token ids of ``text`` (no special tokens added), and which endpoint gave them."""
    try:
        r = await transport.send(
            server.url, "POST", "/tokenize", {"model": server.model, "prompt": text, "add_special_tokens": False}
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
        r = await transport.send(server.url, "POST", "/v1/completions", payload, timeout=60.0)
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


def logprobs_matter(sampling: SamplingSettings) -> bool:
    """Whether raw and processed log-probs differ under these sampling settings (they do not at temperature 1
    with top-p 1, no top-k and no penalties)."""
    s = sampling
    return not (
        s.temperature == 1.0
        and s.top_p >= 1.0
        and s.top_k is None
        and not s.presence_penalty
        and s.repetition_penalty == 1.0
    )


async def logprobs_mode(transport: _Transport, server: _Server) -> tuple[str, str]:
    """(mode, how it was found): vLLM's --logprobs-mode from /server_info, else from the two-temperature probe
    (``"unknown: <why>"`` when the probe cannot tell)."""
    try:
        r = await transport.send(server.url, "GET", "/server_info?config_format=json", timeout=60.0)
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
            r = await transport.send(server.url, "POST", "/v1/completions", payload, timeout=60.0)
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


async def probe_sampled_logprobs(transport: _Transport, server: _Server, payload: dict[str, Any]) -> None:
    """Ask for one token as a generation request asks (``payload``: the body of one, sampled-token log-probs,
    ``logprobs=0``) and check that the answer carries a possible log-probability for it."""
    payload = {**payload, "prompt": _PROBE_PROMPT, "max_tokens": 1}
    needs = (
        "explorer importance sampling and the explorer off-policy mask need the sampled tokens' log-probs: "
        "serve the explorer with `vllm serve` / `trl vllm-serve` (which return them when asked, `logprobs=0`), "
        "or set explorer_importance_sampling='none' and explorer_off_policy_mask=False"
    )
    try:
        r = await transport.send(server.url, "POST", "/v1/completions", payload, timeout=60.0)
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


def check_logprobs_mode(server: _Server, sampling: SamplingSettings, require_processed_logprobs: bool) -> None:
    """Refuse (``require_processed_logprobs``) or warn about a server whose log-probs are not those of the
    distribution it samples from."""
    mode, how = server.logprobs_mode, server.logprobs_mode_source
    if mode == PROCESSED_LOGPROBS:
        return
    s = sampling
    what = (
        f"could not be told apart ({mode.removeprefix('unknown: ')})" if mode.startswith("unknown") else f"are {mode!r}"
    )
    sampled = f"temperature {s.temperature}, top-p {s.top_p}" + (f", top-k {s.top_k}" if s.top_k else "")
    fix = (
        f"Restart it as `vllm serve <explorer> ... {_FIX_LOGPROBS}` (`trl vllm-serve` passes it; with "
        "VLLM_SERVER_DEV_MODE=1 its GET /server_info confirms the mode)"
    )
    if require_processed_logprobs:
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


def identity_probe(tokenizer: Any) -> str:
    """The probe text a server's tokenizer must tokenize as ``tokenizer`` does: :data:`IDENTITY_PROBE` and the
    tokenizer's special and added tokens (at most :data:`_MAX_PROBE_SPECIAL_TOKENS`)."""
    specials = list(dict.fromkeys(getattr(tokenizer, "all_special_tokens", []) or []))
    added = [
        t.content if hasattr(t, "content") else str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
    ]
    extra = list(dict.fromkeys(specials + added))[:_MAX_PROBE_SPECIAL_TOKENS]
    return IDENTITY_PROBE + " " + " ".join(extra)


def _model_name(name: str) -> str:
    """The comparable name of a model id or path: its last component, lower-cased (a Hub cache folder
    ``models--org--name`` or its ``snapshots/<hash>`` give ``name``)."""
    parts = PurePath(str(name).rstrip("/")).parts
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.split("--")[-1].lower()
    return (parts[-1] if parts else str(name)).lower()
