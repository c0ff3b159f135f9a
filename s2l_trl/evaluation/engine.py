"""The one sampling engine behind `s2l-eval` and `s2l-sample`: prompts in, ``n`` decoded completions each out.

It wraps an :class:`~s2l_trl.explorers.Explorer` backend:

* ``vllm``: in-process `vllm.LLM` (:class:`~s2l_trl.explorers.vllm_engine.VLLMEngineExplorer`), for GPU nodes;
* ``server``: an OpenAI-compatible vLLM server (`trl vllm-serve`) through
  :class:`~s2l_trl.explorers.ServerExplorer`;
* ``transformers``: plain ``model.generate`` (:class:`~s2l_trl.explorers.LocalExplorer`), for CPUs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..explorers.base import Explorer, SamplingSettings

BACKENDS = ("vllm", "server", "transformers")


@dataclass
class Completion:
    """One sampled completion: decoded text, token ids (as generated, EOS included) and sampling log-probs."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None


def build_explorer(backend: str, model_path: str, sampling: SamplingSettings, *, tokenizer=None,
                   server_base_url: str | None = None, tensor_parallel_size: int = 1, batch_size: int = 64,
                   vllm_kwargs: dict[str, Any] | None = None) -> Explorer:
    """An explorer backend that samples from ``model_path`` with ``sampling``.

    Args:
        backend: ``"vllm"``, ``"server"`` or ``"transformers"``.
        model_path: model id or path (for ``server``: the model the server serves; only its name is used).
        sampling: sampling settings of every request.
        tokenizer: tokenizer of the model, reused by the ``transformers`` backend.
        server_base_url: URL of the server (``server`` backend), e.g. ``http://127.0.0.1:8000``.
        tensor_parallel_size: GPUs per engine (``vllm`` backend).
        batch_size: rows per ``model.generate`` call (``transformers`` backend).
        vllm_kwargs: extra arguments of :class:`VLLMEngineExplorer` (``dtype``, ``max_model_len``, ...).
    """
    if backend == "transformers":
        from ..explorers.local import LocalExplorer

        return LocalExplorer(model_path, tokenizer=tokenizer, sampling=sampling, batch_size=batch_size)
    if backend == "server":
        from ..explorers.server import ServerExplorer

        if not server_base_url:
            raise ValueError("The 'server' backend needs --server_base_url (e.g. http://127.0.0.1:8000).")
        return ServerExplorer(server_base_url, sampling=sampling)
    if backend == "vllm":
        from ..explorers.vllm_engine import VLLMEngineExplorer

        return VLLMEngineExplorer(model_path, sampling=sampling, tensor_parallel_size=tensor_parallel_size,
                                  seed=sampling.seed or 0, **(vllm_kwargs or {}))
    raise ValueError(f"Unknown backend {backend!r}; choose from {BACKENDS}.")


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

    def generate(self, prompt_ids: Sequence[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
                 ) -> list[list[Completion]]:
        """``n`` completions for each prompt, grouped per prompt."""
        start = time.perf_counter()
        out = self.explorer.generate(list(prompt_ids), n, inputs=inputs)
        self.generation_seconds += time.perf_counter() - start
        if len(out.completion_ids) != len(prompt_ids) * n:
            raise RuntimeError(f"The explorer returned {len(out.completion_ids)} completions for "
                               f"{len(prompt_ids)} prompts x n={n}.")
        texts = self.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
        self.generated_tokens += sum(len(ids) for ids in out.completion_ids)
        rows = [Completion(text, list(ids), None if out.logprobs is None else list(out.logprobs[i]))
                for i, (text, ids) in enumerate(zip(texts, out.completion_ids))]
        return [rows[i * n:(i + 1) * n] for i in range(len(prompt_ids))]

    def stream(self, items: Iterable[Any], prompt_ids: Iterable[list[int]], n: int, batch_prompts: int = 8,
               progress=None) -> Iterator[tuple[Any, list[Completion]]]:
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
