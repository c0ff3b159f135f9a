"""Where CoDistill meets S2L-PO: S2L-PO's hooks, which speak of a *learner* and an *explorer*, in CoDistill's words.

CoDistill reuses S2L-PO's round machinery whole (schedule, row placement and mixing, rounds on every process,
per-token importance weights, per-source advantages). S2L-PO calls the model it trains the *learner* and the model
that samples part of each group the *explorer*; in CoDistill they are the *large* and the *small* model, and the
small one is trained too. This module is the one place where the two vocabularies meet: `S2LSeams` overrides S2L-PO's
private hooks (all but one in a line or two) and hands CoDistill's trainer what it needs under CoDistill's names:

    S2L-PO (`S2LTrainer`)                          CoDistill (`CoDistillTrainer`)
    explorer=...  (the object that samples)        the small model's sampler (`SmallModelSampler`, vLLM's)
    _explorer_rng(round)                           none: the small model samples on torch's global generator
    _generate_learner_rows(round, ...)             the large model's rows (`G_s` per group; none at alpha = 1)
    _explorer_off_policy_terms(output, round, ..)  `_score_round(output, SmallRows, is_small)`
    _learner_logps(output)                         `_large_logps(output)`, `_routed_logps(output)`
    _weigh_explorer_tokens(...)                    `_weigh_large_advantages(...)`
    batch key `s2l_is_explorer`                    `small_rows_of(inputs)`: the small model's rows
    explorer_tokenizer_matches                     `small_tokenizer_matches`
    _weighs_explorer_logprobs, _source_names       the trainer scores the small rows; table sources large / small
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import mixing
from ..trainer import S2LTrainer
from .generation import gathers_one_model_for_generation, sample_completions
from .module import LARGE

# S2L-PO's row flags in TRL's batch dict: the rows its explorer sampled, here the small model's rows.
SMALL_ROWS_KEY = "s2l_is_explorer"


def small_rows_of(inputs: dict[str, Any]) -> torch.Tensor | None:
    """`(B,)` flags of the small model's rows of a scored batch (None outside mixed train rounds)."""
    flags = inputs.get(SMALL_ROWS_KEY)
    return None if flags is None else flags.bool()


@dataclass
class SmallRows:
    """The small model's rows of one round, read from S2L-PO's `MixedRound` (where they are the explorer's)."""

    rewards_per_func: torch.Tensor | None  # every reward function's rewards, gathered over processes
    rollout_time_s: float  # the small model's sampling time of this process's rows
    sampler_logps: dict[int, list[float]] | None  # local row -> the sampling engine's log-probs; None: no rows here

    @classmethod
    def of(cls, rnd: Any) -> SmallRows:
        collected = rnd.explorer  # S2L-PO's `CollectedRows` of the round, None when this process asked for none
        if collected is None:
            return cls(rnd.rewards_per_func, 0.0, None)
        logps = {i: collected.rows[rnd.placement.slots[i]][1] for i in rnd.placement.explorer_rows}
        return cls(rnd.rewards_per_func, collected.latency_s, logps)

    def engine_logps(self, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        """`(B, T)` log-probs the sampling engine reported for the small model's tokens (NaN where unknown)."""
        return mixing.explorer_logps_tensor(shape, self.sampler_logps or {}, device)


class S2LSeams(S2LTrainer):
    """`S2LTrainer` with its explorer hooks renamed for a trainer whose explorer is a trained small model.

    Subclasses implement `_score_round`; everything else is S2L-PO's.
    """

    # The small model's rows are scored by the trainer, not by their sampler (`CoDistillTrainer._small_logps`).
    _weighs_explorer_logprobs = False
    _source_names = ("large", "small")  # the completions table's `source` of large-model and small-model rows

    def __init__(self, model, reward_funcs, args, *pargs, small_sampler, mix_schedule=None, **kwargs):
        super().__init__(model, reward_funcs, args, *pargs, explorer=small_sampler, mix_schedule=mix_schedule, **kwargs)

    @property
    def small_tokenizer_matches(self) -> bool:
        return self.explorer_tokenizer_matches

    def _explorer_rng(self, round_index: int):
        """S2L-PO samples an in-process frozen explorer on a forked generator, to keep the learner's stream intact.
        CoDistill: the small model *is* a policy being trained, so it samples on torch's global generator exactly as
        TRL would sample it (and a resumed run continues that stream from Transformers' checkpointed RNG state)."""
        return contextlib.nullcontext()

    def _generate_learner_rows(self, rnd, prompt_ids, images, multimodal_fields, has_tool_images):
        """The large model's `G_s` rows per group. Under ZeRO-3 with `ds3_gather_for_generation`, TRL's path would
        gather the whole two-model module to generate; they are sampled as TRL samples them (`sample_completions`)
        with only the large model's parameters gathered (every process generates, a throw-away row where it holds
        none)."""
        start = time.perf_counter()
        try:
            if not gathers_one_model_for_generation(self):
                return super()._generate_learner_rows(rnd, prompt_ids, images, multimodal_fields, has_tool_images)
            rows = rnd.placement.learner_rows  # every row at G_w = 0
            rnd.learner_rows = len(rows)
            if rnd.g_s == 0:
                return [], None
            return sample_completions(self, LARGE, [prompt_ids[i] for i in rows]), None
        finally:
            self._metrics["train"]["codistill/large/rollout_time_s"].append(time.perf_counter() - start)

    def _explorer_off_policy_terms(self, output: dict[str, Any], rnd, is_explorer: torch.Tensor) -> None:
        self._score_round(output, SmallRows.of(rnd), is_explorer.bool())

    def _score_round(self, output: dict[str, Any], small: SmallRows, is_small: torch.Tensor) -> None:
        raise NotImplementedError

    def _large_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """`(B, T)` sampled-token log-probs of the local rows under the large model (one no-grad forward)."""
        return self._learner_logps(output)

    def _routed_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """The same forward through the module as routed by the caller (`CoDistillModule.routed`)."""
        return self._learner_logps(output)

    def _weigh_large_advantages(self, output, large_logps, small_logps, is_small) -> torch.Tensor | None:
        """S2L-PO's importance weights `pi_large / pi_small` on the small model's tokens, folded into the large model's
        advantages (`explorer_importance_sampling`), and its log-prob gap metric; the weights' values, or None."""
        return self._weigh_explorer_tokens(output, large_logps, small_logps, is_small)


__all__ = ["SMALL_ROWS_KEY", "S2LSeams", "SmallRows", "small_rows_of"]
