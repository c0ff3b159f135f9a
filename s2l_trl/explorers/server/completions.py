"""One token-id ``/v1/completions`` request of the server explorer: its body, and its answer read and checked.

Why a module of its own: this is the wire format (what TRL's `VLLMClient.generate` sends, and the few fields of the
answer the explorer keeps), decoded without building the rest of a ~67M-token round of JSON, and the one place where
a server's completions and log-probs enter training: they are checked here (count, echoed prompts, log-prob values),
whichever request or probe asked for them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..base import ExplorerError, SamplingSettings, logprob_problem, logprob_values
from .transport import _RequestFailed, _snippet, _Transport

_FIX_LOGPROBS = "--logprobs-mode processed_logprobs"


def completion_payload(
    model: str,
    prompts: list[list[int]],
    n: int,
    seed: int | None,
    sampling: SamplingSettings,
    request_logprobs: bool,
) -> dict[str, Any]:
    """The body of a token-id `/v1/completions` request, as TRL's `VLLMClient.generate` sends it."""
    s = sampling
    payload: dict[str, Any] = {
        "model": model,
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
    if request_logprobs:
        payload.update(logprobs=0, return_tokens_as_token_ids=True)
    if s.presence_penalty:
        payload["presence_penalty"] = s.presence_penalty
    if seed is not None:
        payload["seed"] = seed
    return payload


async def request_completions(
    transport: _Transport, url: str, payload: dict[str, Any], timeout: float
) -> tuple[list[list[int]], list[list[float]] | None]:
    """The ``n`` completions of every prompt of ``payload`` (prompt-major) and their sampled tokens' log-probs, from
    one HTTP request to the server at ``url``. Any failure to get them is a :class:`_RequestFailed` saying whether to
    retry; impossible log-probs are an :class:`ExplorerError` (a retry would get the same)."""
    prompts, n = payload["prompt"], payload["n"]
    r = await transport.send(url, "POST", "/v1/completions", payload, timeout=timeout)
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
            f"The explorer server at {url} answered impossible log-probs: {problem} Serve the explorer with "
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
