"""The small model's rollouts sampled by a vLLM engine that follows its weights (`CoDistillConfig.small_use_vllm`).

The engine is TRL's own `VLLMGeneration`, bound to the small submodule instead of TRL's learner, with TRL's weight
push (`sync_weights`, which gathers ZeRO-3 / FSDP2 parameters collectively and merges PEFT adapters) and sampling.
Only what differs from TRL's learner path lives here: when to push (after each of the *small* model's optimizer
steps, not the large model's `global_step`) and who samples what (every process its own rows; in server mode through
one request per round from the main process, since TRL creates its `VLLMClient` there only).
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

import torch

from ..explorers import ExplorerOutput
from ..explorers.local import in_process_output
from ..trl_compat import vllm_server_generate


class SmallModelVLLMSampler:
    """Samples the small model *being trained* with vLLM; S2L-PO calls it through its `Explorer` protocol.

    `bind` builds a `trl.generation.vllm_generation.VLLMGeneration` for the small model from the trainer's `vllm_*`
    and sampling settings, on every process (colocate engines are built collectively). `generate` runs on every
    process once per mixed round (S2L-PO's rounds guarantee it):

    1. pushes the small model's weights into the engine with `VLLMGeneration.sync_weights()` when the small model's
       optimizer has stepped since the last push (`trainer.small_optimizer_steps`, equal on every process, so the
       collective gathers line up); the first generation of a run always pushes, since the engine loaded the
       checkpoint from disk and the live model may differ (a resumed run, a model object, LoRA);
    2. samples: colocate, each process with its own engine for its own rows; server, the prompts of every process
       gathered, one request from the main process, each process handed its own rows back;
    3. returns vLLM's sampled-token log-probs alongside, only for the `codistill/small/vllm_logp_gap` metric: the
       trainer scores the rows with the small model's own forward (the training convention) for everything else.
    """

    runs_in_background = False

    def __init__(self):
        self.trainer = None
        self.vllm_generation = None
        self.synced_step: int | None = None  # `trainer.small_optimizer_steps` when the engine last got the weights
        self.num_syncs = 0

    def bind(self, trainer) -> None:
        from trl.generation.vllm_generation import VLLMGeneration

        a = trainer.args
        self.trainer = trainer
        # vLLM seeds torch / random / numpy while it builds the engine; the trainer's streams must not depend on it.
        with _kept_rng_state():
            self.vllm_generation = VLLMGeneration(
                model=trainer.codistill.small,
                accelerator=trainer.accelerator,
                processing_class=trainer.processing_class,
                mode=a.vllm_mode,
                structured_outputs_regex=a.vllm_structured_outputs_regex,
                server_base_url=a.vllm_server_base_url,
                server_host=a.vllm_server_host,
                server_port=a.vllm_server_port,
                group_port=a.vllm_group_port,
                server_timeout=a.vllm_server_timeout,
                tensor_parallel_size=a.vllm_tensor_parallel_size,
                gpu_memory_utilization=a.vllm_gpu_memory_utilization,
                max_model_length=a.vllm_max_model_length,
                # Each process samples the small model's rows of its own generation batch (TRL's sizing for its policy).
                max_num_seqs=a.per_device_train_batch_size * a.vllm_tensor_parallel_size * a.steps_per_generation,
                enable_sleep_mode=a.vllm_enable_sleep_mode,
                model_impl=a.vllm_model_impl,
                trust_remote_code=a.trust_remote_code,
                repetition_penalty=trainer.repetition_penalty,
                temperature=trainer.temperature,
                top_p=trainer.top_p,
                top_k=trainer.top_k,
                min_p=trainer.min_p,
                max_completion_length=trainer.max_completion_length,
                logprobs=0,
                generation_kwargs=a.generation_kwargs,
            )

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        t = self.trainer
        if t is None or self.vllm_generation is None:
            raise RuntimeError("SmallModelVLLMSampler.bind(trainer) must be called before generate().")
        start = time.perf_counter()
        step = t.small_optimizer_steps
        if self.synced_step != step:
            sync_start = time.perf_counter()
            self.vllm_generation.sync_weights()
            self.synced_step = step
            self.num_syncs += 1
            t._metrics["train"]["codistill/small/weight_sync_time_s"].append(time.perf_counter() - sync_start)
        completion_ids, engine_logps = self._sample([list(ids) for ids in prompt_ids], n)
        return in_process_output(completion_ids, engine_logps, len(prompt_ids), start)

    def _sample(self, prompts: list[list[int]], n: int) -> tuple[list[list[int]], list[list[float]]]:
        """`n` completions per prompt (prompt-major) and vLLM's log-prob of each sampled token (NaN where unknown)."""
        vg = self.vllm_generation
        if vg.mode == "server":
            completion_ids, logprobs = self._sample_from_server(prompts, n)
        elif prompts:
            rows = [p for p in prompts for _ in range(n)]  # colocate samples one completion per row (TRL's way)
            _, completion_ids, logprobs, _ = vg.generate(prompts=rows, images=None, num_generations=n)
        else:
            return [], []
        completion_ids = [list(ids) for ids in completion_ids]
        if logprobs is None:
            return completion_ids, [[float("nan")] * len(ids) for ids in completion_ids]
        return completion_ids, [[float("nan") if not lp else lp[0] for lp in seq] for seq in logprobs]

    def _sample_from_server(self, prompts: list[list[int]], n: int):
        """Every process's prompts in one request from the main process (the only one with TRL's `VLLMClient`),
        each process handed back its own `n` rows per prompt; a collective, so every process calls it."""
        from accelerate.utils import broadcast_object_list, gather_object

        accelerator = self.trainer.accelerator
        counts = gather_object([len(prompts)])
        everything = gather_object(prompts) if accelerator.num_processes > 1 else prompts
        payload: list[Any] = [None]
        if accelerator.is_main_process:
            payload = [vllm_server_generate(self.vllm_generation, everything, n) if everything else ([], None)]
        if accelerator.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        ids, logps = payload[0]
        begin = sum(counts[: accelerator.process_index]) * n
        local = slice(begin, begin + len(prompts) * n)
        return ids[local], None if logps is None else logps[local]


@contextlib.contextmanager
def _kept_rng_state():
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
