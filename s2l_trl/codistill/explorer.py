"""The live small model as an S2L-PO explorer: CoDistill's rollouts, sampled in-process on the trainer's settings."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from ..explorers import ExplorerOutput
from ..explorers.local import in_process_output, sampled_completions


class SmallModelExplorer:
    """An [`~s2l_trl.explorers.Explorer`] that samples from the small model *being trained* (never frozen).

    It generates exactly as TRL's transformers path generates for the learner: prompts left-padded in one batch, the
    trainer's `generation_config`, `trl.models.unwrap_model_for_generation`, torch's global random generator. So a
    CoDistill run with `kd_coef=0` draws the rollouts a plain `GRPOTrainer` on the small model draws. The log-prob
    of each sampled token is `log_softmax(logits / temperature)`, the convention TRL's training forward uses for
    both models (top-k / top-p are not applied: *assumption*, so that the KD reward and the importance weights
    compare like with like and are exactly 0 / 1 for identical models).

    `runs_in_background = False`: it samples with the global generator, in the foreground (see
    `CoDistillTrainer._generate_in_foreground`). `bind` connects it to the trainer once TRL has built the generation
    settings. `small_use_vllm=True` replaces it with `SmallModelVLLMExplorer` (a vLLM engine that receives the small
    model's weights after each of its optimizer steps; docs/codistill.md).
    """

    runs_in_background = False

    def __init__(self, model):
        self.model = model
        self.trainer = None

    def bind(self, trainer) -> None:
        self.trainer = trainer

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        from trl.models import unwrap_model_for_generation
        from trl.trainer.utils import pad

        t = self.trainer
        if t is None:
            raise RuntimeError("SmallModelExplorer.bind(trainer) must be called before generate().")
        start = time.perf_counter()
        rows = [list(ids) for ids in prompt_ids for _ in range(n)]
        tensors = [torch.tensor(r) for r in rows]
        device = t.accelerator.device
        padded = pad(
            tensors,
            padding_value=t._tokenizer.pad_token_id,
            padding_side="left",
            pad_to_multiple_of=t.pad_to_multiple_of,
        ).to(device)
        attention = pad(
            [torch.ones_like(x) for x in tensors],
            padding_value=0,
            padding_side="left",
            pad_to_multiple_of=t.pad_to_multiple_of,
        ).to(device)
        config = copy.deepcopy(t.generation_config)
        config.return_dict_in_generate = True
        config.output_logits = True
        wrapped = getattr(t, "small_model_wrapped", None) or self.model
        was_training = self.model.training
        with unwrap_model_for_generation(
            wrapped,
            t.accelerator,
            gather_deepspeed3_params=t.args.ds3_gather_for_generation,
            generation_kwargs=t.generation_kwargs,
            gradient_checkpointing_kwargs=t.args.gradient_checkpointing_kwargs,
        ) as unwrapped:
            out = unwrapped.generate(input_ids=padded, attention_mask=attention, generation_config=config)
        self.model.train(was_training)
        width = padded.size(1)
        new_tokens = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1).float() / t.temperature
        completion_ids, logprobs = sampled_completions(new_tokens, logits, t.eos_token_ids)
        return in_process_output(completion_ids, logprobs, len(prompt_ids), start)
