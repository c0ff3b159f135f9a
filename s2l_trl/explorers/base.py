"""The explorer protocol: whatever can sample completions for token-id prompts from a frozen model."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

# A sampled token's log-probability is finite and <= 0. Values up to this much above 0 are float rounding (a log-prob
# of ~1 computed as logit - logsumexp in float32 / bf16) and are accepted; anything larger is not a log-probability
# (a probability stored in its place, a logit).
LOGPROB_TOLERANCE = 1e-3
# vLLM's OpenAI server writes a log-prob of -inf as -9999.0 (JSON has no infinity): read it as -inf.
LOGPROB_FLOOR = -9999.0

# The key under which the trainer's explorer calls add each prompt's global group index (in its round) to `inputs`:
# a group split across two processes is asked for by both, and a backend that draws per group (offline rollouts) can
# then make the same draws for it on both.
GROUP_FIELD = "s2l_group"


@dataclass
class SamplingSettings:
    """Sampling settings of an explorer request (a backend ignores what it cannot honour, and says so)."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int | None = None
    max_tokens: int = 256
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.top_k is not None and self.top_k <= 0:
            self.top_k = None  # -1 / 0 mean "off" in vLLM and transformers respectively


@dataclass
class ExplorerStats:
    """What one explorer call cost, for the trainer's metrics (``s2l/explorer_latency_s``, explorer tokens/s).

    Attributes:
        wall_s: seconds the call took, end to end (every chunk, retry and back-off included).
        prompts / rows: prompts asked for and completions returned (``rows = prompts * n``).
        completion_tokens: tokens generated, summed over every returned completion.
        requests: generation requests that succeeded (a round is split into several, see ``ServerExplorer``).
        failed_requests: requests that failed and were retried (on the same server or another one).
        servers: servers still in use at the end of the call (``ServerExplorer``); 0 where it does not apply.
    """

    wall_s: float = 0.0
    prompts: int = 0
    rows: int = 0
    completion_tokens: int = 0
    requests: int = 0
    failed_requests: int = 0
    servers: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time (0 when nothing was timed)."""
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class ExplorerOutput:
    """Completions for ``len(prompt_ids) * n`` rows, prompt-major (the ``n`` rows of a prompt are adjacent).

    ``logprobs`` holds the sampled token's log-probability under the explorer's sampling distribution, one list per
    completion aligned with ``completion_ids`` (NaN for a token whose log-prob is unknown); ``None`` where the backend
    does not know them (offline rows without stored log-probs, a tokenizer mismatch). Every known value must be a
    log-probability: finite and <= 0 (:func:`logprob_problem`). ``stats`` says what the call cost, where the backend
    measures it. ``logprobs_checked`` is set by backends that validated their log-probs where they entered (server
    answers, rollout files), so that :func:`generate_checked` does not pay for a second pass.
    """

    completion_ids: list[list[int]]
    logprobs: list[list[float]] | None = None
    stats: ExplorerStats | None = None
    logprobs_checked: bool = False


@runtime_checkable
class Explorer(Protocol):
    """A frozen model that samples ``n`` completions for each prompt.

    ``prompt_ids`` are token ids in the learner's tokenizer. ``inputs`` are the data-set rows the prompts come from
    (one per prompt), for backends that look completions up rather than sample them (offline rollouts).

    The trainer runs ``generate`` in a background thread, overlapping the learner's generation, unless the backend
    sets ``runs_in_background = False`` (one that samples with torch's global random generator).
    """

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput: ...


class ExplorerError(RuntimeError):
    """An explorer backend failed in a way training cannot recover from (server down, bad rollout file)."""


def logprob_values(rows: list[list[float] | None]) -> np.ndarray:
    """Every value of ``rows`` in one float64 array (a ``None`` row contributes nothing; a ``None`` value is NaN):
    one C-speed pass over the Python floats, no per-token Python code."""
    present = [r for r in rows if r is not None]
    total = sum(map(len, present))
    try:
        return np.fromiter(itertools.chain.from_iterable(present), dtype=np.float64, count=total)
    except (TypeError, ValueError):  # None items (unknown log-probs) or non-numbers: the slow, exact path
        pass
    try:
        return np.array([np.nan if v is None else float(v) for r in present for v in r], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ExplorerError(f"log-probs must be numbers (or None / NaN where unknown): {exc}") from None


def logprob_problem(values: np.ndarray) -> str | None:
    """What makes ``values`` impossible as sampled tokens' log-probabilities, or ``None``: every value must be NaN
    (unknown) or finite and <= 0, with :data:`LOGPROB_TOLERANCE` allowed above 0 for rounding and values at or below
    :data:`LOGPROB_FLOOR` (vLLM's -inf) counted as -inf. Vectorised; the message counts the bad values and shows the
    first ones."""
    if not values.size:
        return None
    positive = values > LOGPROB_TOLERANCE
    infinite = np.isinf(values) | (values <= LOGPROB_FLOOR)
    bad = positive | infinite
    if not bad.any():
        return None
    count, first = int(bad.sum()), values[np.flatnonzero(bad)[:3]].tolist()
    known = values[~np.isnan(values)]
    kinds = []
    if positive.any():
        kinds.append(f"{int(positive.sum())} above 0")
    if infinite.any():
        kinds.append(f"{int(infinite.sum())} infinite (or <= {LOGPROB_FLOOR:g}, vLLM's -inf)")
    hint = (
        "they all lie in [0, 1], as probabilities do: were probabilities given instead of log-probabilities? (store "
        "log(p))"
        if known.size and bool(((known >= 0) & (known <= 1)).all())
        else "a sampled token's log-probability is finite and <= 0"
    )
    return (
        f"{count} of {values.size} log-probs are impossible ({', '.join(kinds)}; first: {first}): {hint}; up to "
        f"{LOGPROB_TOLERANCE:g} above 0 is accepted as rounding."
    )


def check_output_logprobs(out: ExplorerOutput, source: str) -> None:
    """Refuse an :class:`ExplorerOutput` whose log-probs do not fit its completions (one list per completion, one value
    per token) or are impossible (:func:`logprob_problem`), naming ``source``."""
    if out.logprobs is None:
        return
    if len(out.logprobs) != len(out.completion_ids):
        raise ExplorerError(
            f"{source} returned {len(out.logprobs)} log-prob lists for {len(out.completion_ids)} completions: give one "
            "list per completion (or logprobs=None when they are unknown)."
        )
    for k, (ids, lps) in enumerate(zip(out.completion_ids, out.logprobs)):
        if lps is not None and len(lps) != len(ids):
            raise ExplorerError(
                f"{source} returned {len(lps)} log-probs for the {len(ids)} tokens of completion {k}: give one "
                "log-prob per completion token (NaN where unknown)."
            )
    problem = logprob_problem(logprob_values(out.logprobs))
    if problem:
        raise ExplorerError(f"{source} returned impossible log-probs: {problem}")


def generate_checked(explorer: Explorer, prompt_ids: list[list[int]], n: int, inputs=None) -> ExplorerOutput:
    """``explorer.generate`` with the contract every caller relies on: ``len(prompt_ids) * n`` completions, and
    log-probs that fit them and are log-probabilities (checked here unless the backend checked them where they
    entered: ``ExplorerOutput.logprobs_checked``)."""
    out = explorer.generate(prompt_ids, n, inputs=inputs)
    expected = len(prompt_ids) * n
    name = f"The explorer {type(explorer).__name__}"
    if len(out.completion_ids) != expected:
        raise ExplorerError(
            f"{name} returned {len(out.completion_ids)} completions, expected {expected} ({len(prompt_ids)} prompts "
            f"x n={n})."
        )
    if not out.logprobs_checked:
        check_output_logprobs(out, name)
    return out
