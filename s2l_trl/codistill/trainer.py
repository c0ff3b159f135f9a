"""`CoDistillTrainer`: a large and a small model trained together, on S2L-PO's round machinery, in one engine.

Vocabulary: CoDistill speaks of the *large* and the *small* model. S2L-PO's code, which this trainer reuses, calls
them the *learner* and the *explorer*; the mapping lives in one place, `s2l_seams.S2LSeams`.

Data flow of one generation round (train mode, default alpha = 1):

    S2L-PO plans the round (alpha, G_w, G_s) -> every process samples the small model's G_w rows of the groups it
    holds (`SmallModelSampler`, transformers; or `SmallModelVLLMSampler`, a vLLM engine that follows the small
    model's weights); the large model samples the G_s rows (none by default) -> TRL scores the rows (verifiable
    rewards, group-relative advantages)
        -> two no-grad forwards on the local rows give `log pi_large` (stored as TRL's old log-probs) and
           `log pi_small` (the training convention, whatever sampled the rows), used for
           * the large update: S2L-PO's per-token importance weights `pi_large / pi_small` on the small model's
             tokens (`explorer_importance_sampling`, truncated at 2 by default), folded into the advantages;
           * the small update: KD reward `r_t = log pi_large(y_t) - log pi_small(y_t)`, `kd_coef` times
             `r_t - mean(r)` added to each token's advantage (`kd_mode="token"`) or its sequence mean added to the
             reward (`"sequence"`); or (`"full_kl"`) no KD reward but `kd_coef` times the exact reverse KL
             `KL(pi_small || pi_large)` over the vocabulary, a loss term computed inside the micro-step's forward.
    -> each micro-step: ONE forward of the `CoDistillModule` computes both models' outputs; TRL's GRPO loss is
       evaluated on each (the large model on every row, the small one on its own rows); the sum is backpropagated
       once, clipped per model and stepped by one optimizer whose parameter groups carry each model's learning
       rate, weight decay and schedule.

Because both models are one module with one optimizer, accelerate prepares them along its standard path: DDP,
DeepSpeed ZeRO-2/3 and FSDP2 shard, all-reduce and checkpoint both, and fp16 has one gradient scaler.

This file holds the algorithm: one round's scoring (`_score_round`) and one micro-step of both models
(`_compute_loss`). Plumbing lives elsewhere: S2L-PO's hooks (`s2l_seams`), the small model's checks, loading and
set-up (`small_model`), its rollouts (`small_sampler`, `small_vllm_sampler`, `generation`), the optimizer and
schedules (`optimizer`), per-model clipping (`clipping`), the two model folders (`saving`), the KD and
importance-weight tensors (`objectives`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from typing import Any

import torch
from accelerate.utils import gather
from trl import GRPOTrainer

from .. import mixing, preflight
from ..model_card import codistill_card_section
from . import objectives
from .clipping import PerModelClipping
from .config import CoDistillConfig
from .full_kl import kd_kl_use
from .module import LARGE, SMALL, CoDistillModule, Replay, forward_call
from .optimizer import create_optimizer, create_scheduler, freeze_role_lr, role_lr, same_schedule
from .s2l_seams import S2LSeams, SmallRows, small_rows_of
from .saving import load_models, save_models, write_model_cards
from .small_model import check_before_loading, check_small_model, load_small_model, prepare_small_model
from .small_sampler import SmallModelSampler

logger = logging.getLogger(__name__)
_SKIPPED = "codistill/large_steps_skipped"


class CoDistillTrainer(S2LSeams):
    """CoDistill-GRPO: co-train a large model (`model`) and a small model (`small_model`).

    Use it like [`S2LTrainer`] with a [`CoDistillConfig`]. The small model samples the rollouts (the share of each
    group S2L-PO's schedule gives it) and learns by GRPO with a KD reward from the large model; the large model learns
    by GRPO on those rollouts with importance weights `pi_large / pi_small` and samples nothing of its own (at the
    default alpha = 1).

    Both models live in one [`CoDistillModule`] (`trainer.model`; `trainer.large_model` and `trainer.small_model` are
    its two halves) trained by one optimizer: launch it like any TRL trainer under DDP, DeepSpeed ZeRO-2/3 or FSDP2.

    Args:
        model, reward_funcs, args, train_dataset, peft_config, ...: as for [`S2LTrainer`], for the large model.
        small_model (`str` or `PreTrainedModel`, *optional*):
            The small model, or its id/path; defaults to `args.small_model`. Must share the large model's tokenizer.
        small_peft_config (`peft.PeftConfig`, *optional*):
            LoRA (or any PEFT) configuration of the small model.
        mix_schedule: as for [`S2LTrainer`]: the small model's share of each group.

    Metrics (TRL's logging): `codistill/kd_reward` (mean per-token KD log-ratio, the baseline of `kd_mode="token"`),
    `codistill/is_weight/{min,mean,max}` and `codistill/is_weight_raw/{min,mean,max}` (after / before truncation or
    masking), `codistill/reward/small`, `codistill/reward/large` (evaluation, the large model's own samples),
    `codistill/{small,large}/rollout_time_s`, `codistill/{large,small}/logp_time_s` (the scoring forwards),
    `codistill/kd_kl` (the exact KL(small || large) per small-model token over the vocabulary, `log_kd_kl`),
    `codistill/update_time_s` (one micro-step's forward and backward of both models), `codistill/grad_norm/large` and
    `codistill/grad_norm/small` (each model's norm before its own clip, under every engine), and the small model's GRPO
    metrics under `small/` (`small/loss`, `small/grad_norm`, `small/learning_rate`, `small/entropy`, ...). TRL's own
    `loss`, `grad_norm`, `entropy`, ... are the large model's. With `small_use_vllm`: `codistill/small/
    vllm_logp_gap` and `codistill/small/weight_sync_time_s`. With `large_skip_zero_gradient`:
    `codistill/large_steps_skipped` (the running count of the large model's skipped steps).
    """

    _tag_names = ["trl", "grpo", "s2l-po", "codistill"]
    _name = "CoDistill-GRPO"

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: CoDistillConfig | None = None,
        *pargs,
        small_model=None,
        small_peft_config=None,
        mix_schedule=None,
        **kwargs,
    ):
        if not isinstance(args, CoDistillConfig):
            raise TypeError(
                f"CoDistillTrainer needs `args` to be a CoDistillConfig, got {type(args).__name__ if args else None}."
            )
        small_model = small_model if small_model is not None else args.small_model
        check_before_loading(model, small_model, args, kwargs)
        # TRL creates output_dir while it builds; an error in the checks after it must not leave it behind.
        cleanup = preflight.removing_created_folder(args.output_dir)
        # Loading the small model must not consume the torch RNG (kd_coef=0 must reproduce plain GRPO on it).
        with torch.random.fork_rng(devices=[]):
            small = load_small_model(small_model, args, small_peft_config)
        if args.small_use_vllm:
            from .small_vllm_sampler import SmallModelVLLMSampler

            self._small_sampler = SmallModelVLLMSampler()
        else:
            self._small_sampler = SmallModelSampler()
        super().__init__(
            model, reward_funcs, args, *pargs, small_sampler=self._small_sampler, mix_schedule=mix_schedule, **kwargs
        )
        with cleanup:
            vlm = getattr(self, "_is_vlm", False)
            check_small_model(small, args.small_model, self.small_tokenizer_matches, len(self._tokenizer), vlm)
            # How the micro-step computes the exact KL(small || large): the KD loss term, the metric, or not at all.
            self._kd_kl = kd_kl_use(self.model, small, args.kd_mode, args.log_kd_kl)
        # TRL set up the model it was handed (the large one); the small model gets the same.
        prepare_small_model(small, args, args.device if self.place_model_on_device else None, self.temperature)
        # One module, one optimizer: from here on `self.model` is the pair, as TRL's PPO trainer wraps policy + value.
        self.codistill = CoDistillModule(self.model, small)
        self.model = self.model_wrapped = self.codistill
        self.callback_handler.model = self.codistill
        self.clipping = PerModelClipping(
            self.codistill, self.accelerator, {LARGE: args.max_grad_norm, SMALL: args.small_clip}
        )
        # The small model's optimizer steps so far (steps of windows that held small rows): a vLLM sampler pushes
        # its weights when this has moved.
        self.small_optimizer_steps = 0
        self._optimizer_roles: list[str] = []  # the role of each optimizer parameter group
        self._window_small_rows = False  # whether the current accumulation window trained the small model
        self._window_small_loss = 0.0
        self._window_kd_kl = torch.zeros(2)  # this process's (sum, count) of the window's exact KL per token
        self.large_steps_skipped: int | None = None  # `large_skip_zero_gradient`'s count, read at the first step
        self._final_save = False
        self._round_seconds = 0.0  # time of the generation round inside the current micro-step
        self._small_sampler.bind(self)

    @property
    def large_model(self):
        return self.codistill.large

    @property
    def small_model(self):
        return self.codistill.small

    # ------------------------------------------------------------------ one round: scoring both models
    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        self._round_seconds += time.perf_counter() - start
        if not self.model.training:
            metrics = self._metrics["eval"]
            if metrics.get("reward"):
                metrics["codistill/reward/large"].append(metrics["reward"][-1])
        return output

    def _score_round(self, output: dict[str, Any], small: SmallRows, is_small: torch.Tensor) -> None:
        """The round's CoDistill terms, once TRL has scored it (S2L-PO's off-policy hook, `S2LSeams`).

        Scores the round's local rows with both models (no grad, the training convention for both), then writes
        into TRL's batch: the large model's old log-probs, its advantages weighted by `pi_large / pi_small` on the
        small model's tokens, and the small model's `(B, T)` advantages, token count and (when TRL's rule asks for
        them) old log-probs.
        """
        verifiable = output["advantages"]  # group advantages of the verifiable reward (B,)
        self._metrics["train"]["codistill/small/rollout_time_s"].append(small.rollout_time_s)
        large_logps, small_logps = self._score_both_models(output, is_small)
        known = objectives.known_tokens(large_logps, small_logps, output["completion_mask"], is_small)
        self._log_vllm_gap(small, small_logps, known)
        self._weigh_large_update(output, large_logps, small_logps, known, is_small)
        self._set_small_update(output, verifiable, small, large_logps, small_logps, known, is_small)

    def _score_both_models(self, output: dict[str, Any], is_small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`log pi_large` of every local row (TRL's old log-probs, computed here when TRL did not) and `log pi_small`
        of the small model's rows (NaN on the others)."""
        metrics = self._metrics["train"]
        if output.get("old_per_token_logps") is None:
            start = time.perf_counter()
            output["old_per_token_logps"] = self._large_logps(output)
            metrics["codistill/large/logp_time_s"].append(time.perf_counter() - start)
        large_logps = output["old_per_token_logps"].float()
        start = time.perf_counter()
        small_logps = self._small_logps(output).float()
        metrics["codistill/small/logp_time_s"].append(time.perf_counter() - start)
        return large_logps, small_logps.masked_fill(~is_small.unsqueeze(1), float("nan"))

    def _weigh_large_update(self, output, large_logps, small_logps, known, is_small) -> None:
        """S2L-PO's log-prob gap metric and its importance weights on the large model's advantages; optionally only
        plausible rows train the large model (`large_row_weight_bounds`)."""
        raw = objectives.ratio_values(large_logps, small_logps, output["completion_mask"], is_small)
        after = self._weigh_large_advantages(output, large_logps, small_logps, is_small)
        after = torch.ones_like(raw) if after is None else after
        if self.args.large_row_weight_bounds is not None:
            self._keep_plausible_rows(output, large_logps, small_logps, known, is_small)
        for name, values in (("is_weight_raw", raw), ("is_weight", after)):
            stats = self._reduce_min_mean_max(values)
            if stats is not None:
                for stat, value in zip(("min", "mean", "max"), stats):
                    self._metrics["train"][f"codistill/{name}/{stat}"].append(value)

    def _set_small_update(self, output, verifiable, small: SmallRows, large_logps, small_logps, known, is_small):
        """The small model's KD reward and advantages, token count and old log-probs, into TRL's batch."""
        a = self.args
        metrics = self._metrics["train"]
        mask = output["completion_mask"]
        # The KD reward and its baseline (the round's mean over every process).
        kd_tokens = objectives.kd_token_rewards(large_logps, small_logps, mask, is_small, a.kd_clip)
        kd_sum, kd_count = self.accelerator.reduce(
            torch.stack(objectives.kd_reward_sum_count(kd_tokens, known)), reduction="sum"
        )
        baseline = kd_sum / kd_count.clamp(min=1.0) if a.kd_baseline == "mean" else torch.zeros_like(kd_sum)
        if kd_count > 0:
            metrics["codistill/kd_reward"].append((kd_sum / kd_count).item())

        # The group baseline of the small model's own rows. At alpha = 1 with combined grouping TRL's advantages are
        # exactly that, so they are reused as they are.
        all_is_small = gather(is_small)
        rewards = mixing.weighted_rewards(small.rewards_per_func, self.reward_weights)
        metrics["codistill/reward/small"].append(torch.nanmean(rewards[all_is_small]).item())
        B = mask.size(0)
        local = slice(self.accelerator.process_index * B, (self.accelerator.process_index + 1) * B)
        if a.kd_mode != "sequence" and bool(all_is_small.all()) and a.advantage_grouping == "combined":
            sequence_advantages = verifiable
        else:
            small_rewards = rewards
            if a.kd_mode == "sequence":
                small_rewards = rewards + a.kd_coef * gather(objectives.kd_sequence_rewards(kd_tokens, mask))
            sequence_advantages = mixing.per_source_advantages(
                small_rewards, all_is_small, self.num_generations, self.scale_rewards
            )[local]
        if a.kd_mode == "token":
            small_advantages = objectives.dense_small_advantages(
                sequence_advantages, kd_tokens, known, a.kd_coef, baseline
            )
        else:  # "sequence": KD inside the rewards; "full_kl": KD as a loss term of its own (`_small_loss`)
            small_advantages = sequence_advantages.unsqueeze(1).expand_as(mask).clone()
        output["codistill_small_advantages"] = small_advantages
        small_mask = mask * is_small.unsqueeze(1).to(mask.dtype)
        output["codistill_small_num_items"] = self.accelerator.gather(small_mask.sum()).sum()
        # TRL's rule for old log-probs: needed when a round is used by more than one optimizer step.
        if a.gradient_accumulation_steps % (a.steps_per_generation * self.num_iterations) != 0:
            output["codistill_small_old_logps"] = torch.nan_to_num(small_logps, nan=0.0)

    def _keep_plausible_rows(self, output, large_logps, small_logps, known, is_small) -> None:
        """The large model learns only from small-model rows whose geometric-mean weight pi_large / pi_small lies in
        `large_row_weight_bounds` (its advantages are zeroed on the others)."""
        low, high = self.args.large_row_weight_bounds
        count = known.sum(dim=1)
        mean_log_ratio = torch.where(known, large_logps - small_logps, torch.zeros_like(large_logps)).sum(dim=1)
        row_weight = torch.exp(mean_log_ratio / count.clamp(min=1))
        inside = (row_weight >= low) & (row_weight <= high) & (count > 0)
        keep = ~is_small | inside
        advantages = output["advantages"]
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        output["advantages"] = advantages * keep.unsqueeze(1).to(advantages.dtype)
        kept = self.accelerator.reduce(
            torch.stack([(inside & is_small).sum(), is_small.sum()]).float(), reduction="sum"
        )
        if kept[1] > 0:
            self._metrics["train"]["codistill/large_rows_kept"].append((kept[0] / kept[1]).item())

    def _log_vllm_gap(self, small: SmallRows, small_logps: torch.Tensor, known: torch.Tensor) -> None:
        """Mean |vLLM's sampling log-prob - the small model's own| over the round's tokens (`small_use_vllm`)."""
        if not self.args.small_use_vllm or small.sampler_logps is None:
            return
        engine = small.engine_logps(tuple(small_logps.shape), small_logps.device)
        both = known & ~torch.isnan(engine)
        stats = self.accelerator.reduce(
            torch.stack([(engine - small_logps).abs()[both].sum(), both.sum().float()]), reduction="sum"
        )
        if stats[1] > 0:
            self._metrics["train"]["codistill/small/vllm_logp_gap"].append((stats[0] / stats[1]).item())

    @torch.no_grad()
    def _small_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """`(B, T)` sampled-token log-probs of every local row under the small model (one no-grad forward through the
        module, so that sharded engines gather its parameters; every process scores the same number of rows)."""
        from trl.models.utils import disable_gradient_checkpointing

        with (
            self.codistill.routed(SMALL),
            disable_gradient_checkpointing(self.codistill, self.args.gradient_checkpointing_kwargs),
        ):
            return self._routed_logps(output)

    def _reduce_min_mean_max(self, values: torch.Tensor) -> tuple[float, float, float] | None:
        s = objectives.min_mean_max(values.to(self.accelerator.device))
        gathered = gather(s.reshape(1, 4))
        count = gathered[:, 2].sum()
        if count == 0:
            return None
        return gathered[:, 0].min().item(), (gathered[:, 1].sum() / count).item(), gathered[:, 3].max().item()

    # ------------------------------------------------------------------ one micro-step of both models
    def _compute_loss(self, model, inputs):
        """TRL calls this with the (wrapped) module and one micro-batch; in training it returns the large model's
        GRPO loss plus the small model's, both from ONE forward of the module (so every engine sees one forward and
        one backward per micro-step). Evaluation: the large model's loss only."""
        if not self.model.training:
            return super()._compute_loss(model, inputs)
        start = time.perf_counter()
        mixed = "codistill_small_advantages" in inputs
        if mixed:
            # Decided from the round's token count over every process: the same on all of them.
            self._window_small_rows |= bool(inputs["codistill_small_num_items"] > 0)
        is_small = small_rows_of(inputs) if mixed else None
        trains_small = mixed and bool((is_small.unsqueeze(1) & inputs["completion_mask"].bool()).any())
        if mixed and self.accelerator.num_processes > 1:
            # The small model's loss has collectives of its own (TRL's metrics): when any process trains it in this
            # micro-step, every process computes it, over no tokens where it holds no small rows.
            trains_small = bool(
                self.accelerator.reduce(
                    torch.tensor(float(trains_small), device=self.accelerator.device), reduction="sum"
                )
                > 0
            )
        aux = self.aux_loss_enabled
        large_call = forward_call(inputs, inputs["completion_mask"], aux)
        if trains_small:
            small_mask = inputs["completion_mask"] * is_small.unsqueeze(1).to(inputs["completion_mask"].dtype)
            small_call = forward_call(inputs, small_mask, aux)
        else:
            # The small model still runs (on one short row, with zero weight), so that every process and engine
            # sees both models in every forward and backward: DDP's reducer, ZeRO's and FSDP's collectives line up.
            small_call = forward_call(inputs, inputs["completion_mask"], aux, rows=1, tokens=1)
        # The exact KL(small || large) on the small model's tokens (KD loss term or metric, `full_kl`); decided the
        # same way on every process (it gathers the large model's head under FSDP2 / ZeRO-3).
        kd_kl = self._kd_kl if trains_small else None
        with self.accelerator.autocast():
            outputs = model(codistill_calls={LARGE: large_call, SMALL: small_call}, kd_kl=kd_kl)
        loss = super()._compute_loss(Replay(outputs[LARGE], large_call["input_ids"]), inputs)
        if trains_small:
            loss = loss + self._small_loss(outputs[SMALL], small_call["input_ids"], inputs, small_mask)
        else:
            loss = loss + 0.0 * outputs[SMALL].log_probs.sum()
        if self.is_deepspeed_enabled and self.accelerator.sync_gradients and not self._window_small_rows:
            # DeepSpeed steps inside this micro-step's backward, so a window without small rows is frozen here: a
            # learning rate of 0 keeps the small model's weights (its Adam moments still decay); the scheduler sets
            # the rate back at its step.
            freeze_role_lr(self.optimizer, self._optimizer_roles, SMALL)
        metrics = self._metrics["train"]
        metrics["codistill/forward_time_s"].append(time.perf_counter() - start)
        for role, seconds in self.codistill.forward_seconds.items():
            metrics[f"codistill/{role}/forward_time_s"].append(seconds)
        return loss

    def _small_loss(self, output, input_ids: torch.Tensor, inputs: dict, small_mask: torch.Tensor) -> torch.Tensor:
        """TRL's GRPO loss of the small model on its own rows, with its own advantages; its metrics under `small/`."""
        small_inputs = {
            "prompt_ids": inputs["prompt_ids"],
            "prompt_mask": inputs["prompt_mask"],
            "completion_ids": inputs["completion_ids"],
            "completion_mask": small_mask,
            "advantages": inputs["codistill_small_advantages"],
            "num_items_in_batch": inputs["codistill_small_num_items"].clamp(min=1),
        }
        if "codistill_small_old_logps" in inputs:
            small_inputs["old_per_token_logps"] = inputs["codistill_small_old_logps"]
        kept, self._metrics = self._metrics, {"train": defaultdict(list), "eval": defaultdict(list)}
        try:
            loss = GRPOTrainer._compute_loss(self, Replay(output, input_ids), small_inputs)
        finally:
            small_metrics, self._metrics = self._metrics, kept
        for mode, values in small_metrics.items():
            for name, v in values.items():
                kept[mode][f"small/{name}"].extend(v)
        kd_kl = output.get("kd_kl")
        if kd_kl is not None:
            count = output.label_mask.sum().to(kd_kl.dtype)
            self._window_kd_kl += torch.stack([kd_kl.detach().sum(), count]).cpu()
            if self.args.kd_mode == "full_kl":
                # TRL's "dapo" normaliser: the mean over the optimizer step's small-model tokens, on every process.
                normalizer = small_inputs["num_items_in_batch"] / self.accelerator.num_processes
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
                loss = loss + self.args.kd_coef * kd_kl.sum() / normalizer
        self._window_small_loss += loss.detach().item()
        return loss

    def training_step(self, model, inputs, num_items_in_batch):
        """Transformers' micro-step (TRL's loss above, one backward). Its time, without the generation round TRL runs
        inside it every `steps_per_generation` micro-steps, is logged whole and split between the two models in
        proportion to their forward times (a backward costs about twice its forward, per model)."""
        self.codistill.forward_seconds = {}
        self._round_seconds = 0.0
        if self.is_deepspeed_enabled:
            self.clipping.install_on_deepspeed(self.accelerator.deepspeed_engine_wrapped.engine)
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        elapsed = time.perf_counter() - start - self._round_seconds
        metrics = self._metrics["train"]
        metrics["codistill/update_time_s"].append(elapsed)
        forwards = self.codistill.forward_seconds
        if forwards and sum(forwards.values()) > 0:
            for role, seconds in forwards.items():
                metrics[f"codistill/{role}/update_time_s"].append(elapsed * seconds / sum(forwards.values()))
        return loss

    # ------------------------------------------------------------------ the optimizer step
    def create_optimizer(self, model=None):
        """One optimizer over both models: a decay and a no-decay parameter group per model, each with its model's
        learning rate and weight decay (`small_learning_rate`, `small_weight_decay`), of the configured type."""
        if self.optimizer is None:
            self.optimizer, self._optimizer_roles = create_optimizer(self, self.codistill)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Each parameter group follows its model's schedule (`lr_scheduler_type` / `small_lr_scheduler_type`, same
        warm-up), stepped once per optimizer step; with one schedule for both, Transformers' own scheduler."""
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        if same_schedule(self.args):
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        self.lr_scheduler = create_scheduler(self.args, optimizer, self._optimizer_roles, num_training_steps)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _clip_grad_norm(self, model):
        """Transformers clips before each optimizer step; CoDistill clips each model by its own norm
        (`max_grad_norm`, `small_max_grad_norm`, `clipping.PerModelClipping`) and returns the large model's (TRL's
        `grad_norm`). Under DeepSpeed both models were clipped inside the last micro-step's backward already."""
        if self.is_deepspeed_enabled:
            return (self.clipping.norms or {}).get(LARGE)
        return self.clipping.clip()

    def _get_grad_norm(self, model, grad_norm=None):
        """Called once per optimizer step, after clipping and before the step: the small model's window ends here.
        Both models' norms (before clipping) are logged as `codistill/grad_norm/large` and `codistill/grad_norm/small`;
        TRL's `grad_norm` is the large model's."""
        if grad_norm is None:
            grad_norm = self._clip_grad_norm(model)
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        for role, norm in (self.clipping.norms or {}).items():
            self._metrics["train"][f"codistill/grad_norm/{role}"].append(float(norm))
        self._end_small_window()
        if self.args.large_skip_zero_gradient:
            self._skip_zero_large_step()
        return grad_norm

    def _end_small_window(self) -> None:
        """A window without small rows leaves the small model exactly as it was: its gradients (zeros) are dropped,
        so the optimizer neither moves it (momentum, weight decay) nor advances its state."""
        metrics = self._metrics["train"]
        if self._window_small_rows:
            self.small_optimizer_steps += 1
            norm = (self.clipping.norms or {}).get(SMALL)
            if norm is not None:
                metrics["small/grad_norm"].append(float(norm))
            loss = torch.tensor([self._window_small_loss], device=self.accelerator.device)
            metrics["small/loss"].append(self.accelerator.gather(loss).mean().item())
            metrics["small/learning_rate"].append(role_lr(self.optimizer, self._optimizer_roles, SMALL))
            if self._kd_kl:
                window = self.accelerator.reduce(self._window_kd_kl.to(self.accelerator.device), reduction="sum")
                if window[1] > 0:
                    metrics["codistill/kd_kl"].append((window[0] / window[1]).item())
        elif not self.is_deepspeed_enabled:
            for p in self.codistill.role_parameters(SMALL):
                p.grad = None
        self._window_small_rows, self._window_small_loss, self.clipping.norms = False, 0.0, None
        self._window_kd_kl = torch.zeros(2)

    def _skip_zero_large_step(self) -> None:
        """`large_skip_zero_gradient`: a step whose large-model gradient is exactly zero (absent or all zeros on every
        process, after the gradients' reduction) leaves the large model exactly as it was, as `_end_small_window`
        does for the small model: its gradients are dropped, so the optimizer neither moves it nor advances its state.
        The running count of skipped steps is logged as `codistill/large_steps_skipped`."""
        params = self.codistill.role_parameters(LARGE)
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params if p.grad is not None]
        nonzero = torch.stack([g.ne(0).any() for g in grads]).any().float() if grads else torch.zeros(())
        # Summed over every process (FSDP2 shards each gradient), so that every process decides the same.
        skipped = int(self.accelerator.reduce(nonzero.to(self.accelerator.device), reduction="sum") == 0)
        if skipped:
            for p in params:
                p.grad = None
        if self.large_steps_skipped is None:  # a resumed run continues the count it logged
            logged = [h[_SKIPPED] for h in self.state.log_history if _SKIPPED in h]
            self.large_steps_skipped = int(logged[-1]) if logged else 0
        self.large_steps_skipped += skipped
        # A running total: one value per logging interval, the count so far, whatever `logging_steps`.
        self._metrics["train"][_SKIPPED] = [float(self.large_steps_skipped)]

    # ------------------------------------------------------------------ checkpoints and saving (`saving`)
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Transformers calls this on the saving process with the module's state dict (gathered under ZeRO-3 /
        FSDP). CoDistill writes two model folders: the large model at the root of a checkpoint (or `large_model/` in
        a final save) and the small one in `small_model/`, each loadable with `from_pretrained`."""
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is None:
            state_dict = self.codistill.state_dict()
        save_models(self.codistill, output_dir, state_dict, self.processing_class, final=self._final_save)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume both models. DeepSpeed and FSDP checkpoints hold the whole module (Transformers loads them); the
        plain ones hold two model folders, the large model at the root and the small one in `small_model/`."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_models(self.codistill, resume_from_checkpoint)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Checkpoints (`_internal_call`) keep the large model at their root, where Transformers resumes it from.
        A final save writes `large_model/` and `small_model/`, each a loadable model folder with its model card."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        output_dir = output_dir or self.args.output_dir
        self._final_save = True
        try:
            super().save_model(output_dir, _internal_call=True)
        finally:
            self._final_save = False
        if self.args.should_save:
            self.create_model_card()
            write_model_cards(self.args, output_dir, self.small_model)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs):
        """Saves both models into their subfolders of `output_dir` (each with its model card), then uploads the
        folder as Transformers does: one Hub repository holding `large_model/` and `small_model/`."""
        self.save_model(self.args.output_dir)
        return super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None) -> None:
        """S2L-PO's card for the large model (`<output_dir>/README.md`), with a CoDistill section."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        if os.path.exists(path):
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n" + codistill_card_section(self.args, role="large") + "\n")
