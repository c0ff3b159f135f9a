"""The one sampling engine behind `s2l-eval` and `s2l-sample`: prompts in, ``n`` decoded completions each out.

It wraps any :class:`~s2l_trl.explorers.Explorer` backend, built by :func:`s2l_trl.explorers.build_explorer`
(``vllm``: in-process engine on a GPU node; ``server``: a vLLM server; ``local``: ``model.generate``, for CPUs).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import prompt_token_ids
from ..explorers.base import Explorer, SamplingSettings, generate_checked
from ..explorers.factory import SAMPLING_BACKENDS, resolve_backend
from ..explorers.token_bridge import completion_text

BACKEND_CHOICES = (*SAMPLING_BACKENDS, "transformers")


@dataclass
class EngineArguments:
    r"""
    Which sampling backend serves a frozen model, and its settings. Shared by `s2l-eval` and `s2l-sample`.

    Parameters:
        backend (`str`, *optional*, defaults to `"vllm"`):
            `"vllm"` (in-process vLLM engine, GPU node), `"server"` (an OpenAI-compatible vLLM server at
            `server_base_url`, e.g. `trl vllm-serve`) or `"local"` (in-process `transformers`, CPU; `"transformers"` is
            accepted as an alias).
        server_base_url (`str` or `None`, *optional*, defaults to `None`):
            URL of the vLLM server (backend `"server"`), e.g. `http://127.0.0.1:8000`.
        tokenizer_path (`str` or `None`, *optional*, defaults to `None`):
            Tokenizer id or path (chat template and decoding); defaults to `model_path`.
        tensor_parallel_size (`int`, *optional*, defaults to `1`):
            GPUs of the in-process vLLM engine (backend `"vllm"`).
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weight dtype of the in-process vLLM engine (`float32` for the tiny CPU models).
        max_model_len (`int` or `None`, *optional*, defaults to `None`):
            Context length of the in-process vLLM engine (default: the model's).
        gpu_memory_utilization (`float`, *optional*, defaults to `0.9`):
            Share of GPU memory the in-process vLLM engine may take.
        enforce_eager (`bool`, *optional*, defaults to `False`):
            Run the in-process vLLM engine without CUDA graphs (required on CPU).
        batch_size (`int`, *optional*, defaults to `64`):
            Rows per `generate` call of the `"local"` backend, to bound memory.
    """

    backend: str = field(
        default="vllm",
        metadata={
            "help": '`"vllm"` (in-process vLLM engine, GPU node), `"server"` (an OpenAI-compatible vLLM server at '
            '`server_base_url`, e.g. `trl vllm-serve`) or `"local"` (in-process `transformers`, CPU; `"transformers"` '
            "is accepted as an alias).",
            "choices": list(BACKEND_CHOICES),
        },
    )
    server_base_url: str | None = field(
        default=None,
        metadata={"help": 'URL of the vLLM server (backend `"server"`), e.g. `http://127.0.0.1:8000`.'},
    )
    tokenizer_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer id or path (chat template and decoding); defaults to `model_path`."},
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": 'GPUs of the in-process vLLM engine (backend `"vllm"`).'}
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Weight dtype of the in-process vLLM engine (`float32` for the tiny CPU models)."},
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "Context length of the in-process vLLM engine (default: the model's)."}
    )
    gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "Share of GPU memory the in-process vLLM engine may take."}
    )
    enforce_eager: bool = field(
        default=False, metadata={"help": "Run the in-process vLLM engine without CUDA graphs (required on CPU)."}
    )
    batch_size: int = field(
        default=64, metadata={"help": 'Rows per `generate` call of the `"local"` backend, to bound memory.'}
    )

    def __post_init__(self):
        resolve_backend(self.backend, SAMPLING_BACKENDS)  # an unknown name is an error naming the choices

    def build_engine(
        self, model_path: str, sampling: SamplingSettings, chat_template_kwargs: Mapping[str, Any] | None = None
    ) -> SamplingEngine:
        """A :class:`SamplingEngine` over this backend serving ``model_path`` with ``sampling``."""
        from transformers import AutoTokenizer

        from ..explorers.factory import build_explorer

        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path or model_path)
        explorer = build_explorer(
            self.backend,
            model=model_path,
            sampling=sampling,
            tokenizer=tokenizer,
            server_base_url=self.server_base_url,
            tensor_parallel_size=self.tensor_parallel_size,
            batch_size=self.batch_size,
            vllm_kwargs={
                "dtype": self.dtype,
                "max_model_len": self.max_model_len,
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "enforce_eager": self.enforce_eager,
            },
        )
        return SamplingEngine(explorer, tokenizer, chat_template_kwargs=chat_template_kwargs)


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
        chat_template_kwargs: extra arguments of the chat template (e.g. ``{"enable_thinking": False}``).
    """

    def __init__(self, explorer: Explorer, tokenizer, chat_template_kwargs: Mapping[str, Any] | None = None):
        self.explorer = explorer
        self.tokenizer = tokenizer
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.generated_tokens = 0
        self.generation_seconds = 0.0

    def encode(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Token ids of one prompt exactly as TRL's GRPOTrainer builds them (:func:`s2l_trl.data.prompt_token_ids`):
        the chat template with the generation prompt for a list of messages, the tokenizer's encoding of a string."""
        return self.encode_batch([prompt])[0]

    def encode_batch(self, prompts: Sequence[str | list[dict[str, str]]]) -> list[list[int]]:
        """:meth:`encode` for several prompts of the same kind (all strings or all message lists)."""
        return prompt_token_ids(self.tokenizer, prompts, self.chat_template_kwargs)

    def generate(
        self, prompt_ids: Sequence[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt, grouped per prompt."""
        start = time.perf_counter()
        out = generate_checked(self.explorer, list(prompt_ids), n, inputs=inputs)
        self.generation_seconds += time.perf_counter() - start
        special = set(self.tokenizer.all_special_ids)
        # A completion that did not end with a special token (EOS) was cut by max_tokens: a partial last character is
        # dropped (`completion_text`), so the text (s2l-sample's `response`, re-tokenized for other learners) holds
        # what the model wrote.
        texts = [completion_text(self.tokenizer, ids, bool(ids) and ids[-1] in special) for ids in out.completion_ids]
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
