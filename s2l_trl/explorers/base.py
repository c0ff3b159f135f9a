"""The explorer protocol: whatever can sample completions for token-id prompts from a frozen model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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
    completion aligned with ``completion_ids``; ``None`` where the backend does not know them (offline rows without
    stored log-probs, a tokenizer mismatch). ``stats`` says what the call cost, where the backend measures it.
    """

    completion_ids: list[list[int]]
    logprobs: list[list[float]] | None = None
    stats: ExplorerStats | None = None


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


def generate_checked(explorer: Explorer, prompt_ids: list[list[int]], n: int, inputs=None) -> ExplorerOutput:
    """``explorer.generate`` with the one contract every caller relies on: ``len(prompt_ids) * n`` completions."""
    out = explorer.generate(prompt_ids, n, inputs=inputs)
    expected = len(prompt_ids) * n
    if len(out.completion_ids) != expected:
        raise ExplorerError(
            f"The explorer {type(explorer).__name__} returned {len(out.completion_ids)} completions, expected "
            f"{expected} ({len(prompt_ids)} prompts x n={n})."
        )
    return out
