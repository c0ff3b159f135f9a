"""The live small model as S2L-PO's explorer: CoDistill's rollouts, sampled in-process with transformers.

Every training process samples the rows whose explorer slots it holds (S2L-PO's `ExplorerRounds` calls `generate`
once per mixed round on every process, with no prompts where it holds none). The completions come back without
log-probs: the trainer scores the small model's rows with one forward in the training convention, whatever sampled
them (`CoDistillTrainer._small_logps`), so this explorer keeps no `(steps, rows, vocab)` logits while it decodes.
"""

from __future__ import annotations

import time
from typing import Any

from ..explorers import ExplorerOutput
from ..explorers.local import in_process_output
from .generation import sample_completions
from .module import SMALL


class SmallModelExplorer:
    """An [`~s2l_trl.explorers.Explorer`] that samples from the small model *being trained* (never frozen).

    It generates as TRL's transformers path generates for the learner (`generation.sample_completions`): one
    left-padded batch, the trainer's `generation_config`, torch's global random generator. So a CoDistill run with
    `kd_coef=0` draws the rollouts a plain `GRPOTrainer` on the small model draws.

    `runs_in_background = False`: it samples with the global generator, in the trainer's thread, inside the context
    the trainer gives foreground explorers (`CoDistillTrainer._explorer_rng`: none, the small model samples on the
    global generator like any policy TRL trains). `bind` connects it to the trainer once the module exists.
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
            raise RuntimeError("SmallModelExplorer.bind(trainer) must be called before generate().")
        start = time.perf_counter()
        rows = [list(ids) for ids in prompt_ids for _ in range(n)]
        completions = sample_completions(self.trainer, SMALL, rows)
        return in_process_output(completions, None, len(prompt_ids), start)
