"""The small model's rollouts sampled by a vLLM engine that follows its weights (`CoDistillConfig.small_use_vllm`).

The engine is TRL's own `VLLMGeneration`, bound to the small model instead of TRL's learner, with TRL's weight push
(`sync_weights`) and sampling (`generate`). Only what differs from TRL's learner path lives here: when to push (after
each of the *small* model's optimizer steps, not the large model's `global_step`) and which log-probs the trainer
gets (the small model's own forward, in the training convention, rather than the engine's).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Any

import torch

from ..explorers import ExplorerOutput
from ..explorers.local import in_process_output
from ..trl_compat import vllm_server_generate


class SmallModelVLLMExplorer:
    """An [`~s2l_trl.explorers.Explorer`] that samples the small model *being trained* with vLLM.

    `bind` builds a `trl.generation.vllm_generation.VLLMGeneration` for the small model from the trainer's `vllm_*`
    and sampling settings, on every process (colocate engines are built collectively). `generate` (main process only,
    for the whole global batch, like every S2L-PO explorer):

    1. pushes the small model's weights into the engine with `VLLMGeneration.sync_weights()` when the small model's
       optimizer has stepped since the last push (`trainer.small_optimizer_steps`); the first generation of a run
       always pushes, since the engine loaded the checkpoint from disk and the live model may differ (a resumed run,
       a model object, LoRA);
    2. samples with `VLLMGeneration.generate` (colocate) or TRL's `VLLMClient` (server; TRL's server branch gathers
       prompts from every process, and only the main process gets here);
    3. recomputes the sampled tokens' log-probs with a no-grad forward of the small model, `log_softmax(logits /
       temperature)` through TRL's own `_get_per_token_logps_and_entropies`: the KD reward and the importance weights
       then compare both models in one convention (identical weights give exactly 0 and 1), whatever vLLM's kernels,
       dtype or logit processors do. The mean absolute gap to vLLM's sampling log-probs is logged as
       `codistill/small/vllm_logp_gap` (large: a stale engine, or top-k/top-p/min-p processing) and each push's time
       as `codistill/small/weight_sync_time_s`.
    """

    runs_in_background = False

    def __init__(self, model):
        self.model = model
        self.trainer = None
        self.vllm_generation = None
        self.synced_step: int | None = None  # `trainer.small_optimizer_steps` when the engine last got the weights
        self.num_syncs = 0

    def bind(self, trainer) -> None:
        from accelerate.utils import DistributedType
        from trl.generation.vllm_generation import VLLMGeneration

        a = trainer.args
        accelerator = trainer.accelerator
        if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            raise ValueError(
                f"small_use_vllm does not support {accelerator.distributed_type.value}: the main process alone pushes "
                "the small model's weights into the engine, and sharded parameters need every process to gather."
            )
        self.trainer = trainer
        # vLLM seeds torch / random / numpy while it builds the engine; the trainer's streams must not depend on it.
        with _kept_rng_state():
            self.vllm_generation = VLLMGeneration(
                model=self.model,
                accelerator=accelerator,
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
                # The main process samples the explorer rows of the whole global batch in one call.
                max_num_seqs=a.generation_batch_size,
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
            raise RuntimeError("SmallModelVLLMExplorer.bind(trainer) must be called before generate().")
        start = time.perf_counter()
        metrics = t._metrics["train" if t.model.training else "eval"]
        step = t.small_optimizer_steps
        if self.synced_step != step:
            sync_start = time.perf_counter()
            self.vllm_generation.sync_weights()
            self.synced_step = step
            self.num_syncs += 1
            metrics["codistill/small/weight_sync_time_s"].append(time.perf_counter() - sync_start)
        rows = [list(ids) for ids in prompt_ids for _ in range(n)]
        completion_ids, engine_logps = self._sample(prompt_ids, rows, n)
        logps = self._training_logps(rows, completion_ids)
        gaps = [
            abs(e - r)
            for es, rs in zip(engine_logps, logps)
            for e, r in zip(es, rs)
            if e is not None and not math.isnan(e)
        ]
        if gaps:
            metrics["codistill/small/vllm_logp_gap"].append(sum(gaps) / len(gaps))
        return in_process_output(completion_ids, logps, len(prompt_ids), start)

    def _sample(
        self, prompt_ids: list[list[int]], rows: list[list[int]], n: int
    ) -> tuple[list[list[int]], list[list[float | None]]]:
        """Completions (prompt-major, `n` per prompt) and vLLM's log-prob of each sampled token."""
        vg = self.vllm_generation
        if vg.mode == "server":
            completion_ids, logprobs = vllm_server_generate(vg, [list(ids) for ids in prompt_ids], n)
        else:
            # Colocate samples one completion per row (TRL's convention): the prompts come repeated.
            _, completion_ids, logprobs, _ = vg.generate(prompts=rows, images=None, num_generations=n)
        completion_ids = [list(ids) for ids in completion_ids]
        if logprobs is None:
            return completion_ids, [[None] * len(ids) for ids in completion_ids]
        return completion_ids, [[lp[0] if lp else None for lp in seq] for seq in logprobs]

    def _training_logps(self, rows: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """Each sampled token's log-prob under the small model as the trainer computes it (one no-grad forward)."""
        from trl.trainer.utils import pad

        t = self.trainer
        width = max((len(c) for c in completion_ids), default=0)
        if width == 0:
            return [[] for _ in completion_ids]
        device = t.accelerator.device
        pad_id = t._tokenizer.pad_token_id if t._tokenizer.pad_token_id is not None else t.eos_token_ids[0]
        prompts = [torch.tensor(r, dtype=torch.long) for r in rows]
        completions = [torch.tensor(c, dtype=torch.long) for c in completion_ids]
        prompt = pad(prompts, padding_value=pad_id, padding_side="left")
        prompt_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
        completion = pad(completions, padding_value=pad_id, padding_side="right")
        completion_mask = pad([torch.ones_like(c) for c in completions], padding_value=0, padding_side="right")
        logps, _, _ = t._get_per_token_logps_and_entropies(
            self.model,
            torch.cat([prompt, completion], dim=1).to(device),
            torch.cat([prompt_mask, completion_mask], dim=1).to(device),
            completion.size(1),
            batch_size=t.args.per_device_train_batch_size,
        )
        logps = logps.float().cpu()
        return [logps[i, : len(c)].tolist() for i, c in enumerate(completion_ids)]


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
