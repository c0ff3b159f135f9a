"""The explorer protocol: whatever can sample completions for token-id prompts from a frozen model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


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
class ExplorerOutput:
    """Completions for ``len(prompt_ids) * n`` rows, prompt-major (the ``n`` rows of a prompt are adjacent).

    ``logprobs`` holds the sampled token's log-probability under the explorer's sampling distribution, one list per
    completion aligned with ``completion_ids``; ``None`` where the backend does not know them (offline rows without
    stored log-probs, a tokenizer mismatch).
    """

    completion_ids: list[list[int]]
    logprobs: list[list[float]] | None = None


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
