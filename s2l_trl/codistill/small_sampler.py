"""The small model's rollouts, sampled in-process with transformers from the live small model.

Every training process samples the small model's rows of the groups it holds (S2L-PO's rounds call `generate` once
per mixed round on every process, with no prompts where it holds none: `s2l_seams` hands this sampler to S2L-PO as
its explorer). The completions come back without log-probs: the trainer scores the small model's rows with one
forward in the training convention, whatever sampled them (`CoDistillTrainer._small_logps`), so this sampler keeps
no `(steps, rows, vocab)` logits while it decodes.
"""

from __future__ import annotations

import time
from typing import Any

from ..explorers import ExplorerOutput
from ..explorers.local import in_process_output
from .generation import sample_completions
from .module import SMALL


class SmallModelSampler:
    """Samples the small model *being trained* (never frozen); S2L-PO calls it through its `Explorer` protocol.

    It generates as TRL's transformers path generates for the learner (`generation.sample_completions`): one
    left-padded batch, the trainer's `generation_config`, torch's global random generator. So a CoDistill run with
    `kd_coef=0` draws the rollouts a plain `GRPOTrainer` on the small model draws.

    `runs_in_background = False`: it samples with the global generator, in the trainer's thread, with no generator of
    its own (`S2LSeams._explorer_rng`: the small model samples on the global generator like any policy TRL trains).
    `bind` connects it to the trainer once the module exists.
    """

    runs_in_background = False

    def __init__(self):
        self.trainer = None

    def bind(self, trainer) -> None:
        self.trainer = trainer

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        if self.trainer is None:
            raise RuntimeError("SmallModelSampler.bind(trainer) must be called before generate().")
        start = time.perf_counter()
        rows = [list(ids) for ids in prompt_ids for _ in range(n)]
        completions = sample_completions(self.trainer, SMALL, rows)
        return in_process_output(completions, None, len(prompt_ids), start)
