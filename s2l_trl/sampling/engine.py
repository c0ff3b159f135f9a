"""The one sampling engine behind `s2l-eval` and `s2l-sample`: prompts in, ``n`` decoded completions each out.

It wraps any :class:`~s2l_trl.explorers.Explorer` backend, built by :func:`s2l_trl.explorers.build_explorer`
(``vllm``: in-process engine on a GPU node; ``server``: a vLLM server; ``local``: ``model.generate``, for CPUs).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..explorers.base import Explorer


@dataclass
class Completion:
    """One sampled completion: decoded text, token ids (as generated, EOS included) and sampling log-probs."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None


class SamplingEngine:
    """Tokenizes prompts, asks the explorer for ``n`` completions each, and decodes them.

    Args:
        explorer: any :class:`~s2l_trl.explorers.Explorer` backend.
        tokenizer: the model's tokenizer (chat template and decoding).
    """

    def __init__(self, explorer: Explorer, tokenizer):
        self.explorer = explorer
        self.tokenizer = tokenizer
        self.generated_tokens = 0
        self.generation_seconds = 0.0

    def encode(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Token ids of a prompt as TRL builds them: chat template (with generation prompt) for a list of
        messages, the text as-is for a string."""
        if isinstance(prompt, list):
            text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        elif isinstance(prompt, str):
            text = prompt
        else:
            raise TypeError(f"A prompt must be a string or a list of chat messages, got {type(prompt).__name__}.")
        # The chat template already holds any special tokens the model expects.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(
        self, prompt_ids: Sequence[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt, grouped per prompt."""
        start = time.perf_counter()
        out = self.explorer.generate(list(prompt_ids), n, inputs=inputs)
        self.generation_seconds += time.perf_counter() - start
        if len(out.completion_ids) != len(prompt_ids) * n:
            raise RuntimeError(
                f"The explorer returned {len(out.completion_ids)} completions for {len(prompt_ids)} prompts x n={n}."
            )
        texts = self.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
        self.generated_tokens += sum(len(ids) for ids in out.completion_ids)
        rows = [
            Completion(text, list(ids), None if out.logprobs is None else list(out.logprobs[i]))
            for i, (text, ids) in enumerate(zip(texts, out.completion_ids))
        ]
        return [rows[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    def stream(
        self, items: Iterable[Any], prompt_ids: Iterable[list[int]], n: int, batch_prompts: int = 8, progress=None
    ) -> Iterator[tuple[Any, list[Completion]]]:
        """Yield ``(item, completions)`` per prompt, in order, generating ``batch_prompts`` prompts per request.

        Batching keeps the backend busy; yielding per prompt lets callers append and flush each finished
        problem, so an interrupted run loses at most one batch. ``progress`` is a tqdm bar advanced per prompt.
        """
        batch_items: list[Any] = []
        batch_ids: list[list[int]] = []
        for item, ids in zip(items, prompt_ids):
            batch_items.append(item)
            batch_ids.append(ids)
            if len(batch_ids) == batch_prompts:
                yield from self._run_batch(batch_items, batch_ids, n, progress)
                batch_items, batch_ids = [], []
        if batch_ids:
            yield from self._run_batch(batch_items, batch_ids, n, progress)

    def _run_batch(self, items, ids, n, progress):
        for item, completions in zip(items, self.generate(ids, n)):
            yield item, completions
            if progress is not None:
                progress.update(1)

    def close(self) -> None:
        """Release the backend (shuts an in-process vLLM engine down)."""
        close = getattr(self.explorer, "close", None)
        if callable(close):
            close()
