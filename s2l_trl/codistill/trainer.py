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
             reward (`"sequence"`).
    -> each micro-step: ONE forward of the `CoDistillModule` computes both models' outputs; TRL's GRPO loss is
       evaluated on each (the large model on every row, the small one on its own rows); the sum is backpropagated
       once, clipped per model and stepped by one optimizer whose parameter groups carry each model's learning
       rate, weight decay and schedule.

Because both models are one module with one optimizer, accelerate prepares them along its standard path: DDP,
DeepSpeed ZeRO-2/3 and FSDP2 shard, all-reduce and checkpoint both, and fp16 has one gradient scaler.
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
from ..checkpoints import load_saved_weights
from ..explorers.token_bridge import tokenizers_match
from ..model_card import codistill_card_section, codistill_small_model_card
from ..preflight import InputError
from . import objectives
from .config import CoDistillConfig, check_model_sizes
from .module import LARGE, ROLES, SMALL, CoDistillModule
from .s2l_seams import S2LSeams, SmallRows, small_rows_of
from .small_sampler import SmallModelSampler

logger = logging.getLogger(__name__)

SMALL_MODEL_DIR = "small_model"  # in every checkpoint and in the final output folder
LARGE_MODEL_DIR = "large_model"  # in the final output folder (checkpoints keep the large model at their root)


class _Replay:
    """Stands in for the model in TRL's `_compute_loss`: returns the output of the module's one forward of this
    micro-step (TRL's loss calls its model once per micro-batch, with the inputs checked here)."""

    def __init__(self, output, input_ids: torch.Tensor):
        self.output = output
        self.shape = tuple(input_ids.shape)

    def __call__(self, **kwargs):
        if tuple(kwargs["input_ids"].shape) != self.shape:
            raise RuntimeError(
                f"CoDistill's forward ran on inputs of shape {self.shape}, TRL's loss asks for "
                f"{tuple(kwargs['input_ids'].shape)}: the installed TRL builds its loss inputs differently."
            )
        return self.output


def _check_same_tokenizer(model: Any, small_model: Any, processing_class: Any = None) -> None:
    """Refuse a small model with another tokenizer before anything is loaded or written (the KD reward and the
    importance weights compare the two models token by token). Models passed as objects are checked later, once
    TRL has built the large model's tokenizer."""
    from transformers import AutoTokenizer

    def tokenizer_of(m: Any) -> Any:
        name = m if isinstance(m, str) else getattr(getattr(m, "config", None), "_name_or_path", None)
        try:
            return AutoTokenizer.from_pretrained(name) if name else None
        except Exception:  # not loadable here: the check after TRL's set-up decides
            return None

    large = processing_class if processing_class is not None else tokenizer_of(model)
    large, small = getattr(large, "tokenizer", large), tokenizer_of(small_model)
    if large is None or small is None:
        return
    if not tokenizers_match(large, small):
        raise InputError(
            f"small_model={small_model!r} does not share the tokenizer of model={model!r} (vocabularies of "
            f"{len(small)} and {len(large)} tokens): the KD reward and the importance weights compare the two models "
            "token by token; use a small model of the same family."
        )


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
    `codistill/update_time_s` (one micro-step's forward and backward of both models), `codistill/grad_norm/large` and
    `codistill/grad_norm/small` (each model's norm before its own clip, under every engine), and the small model's GRPO
    metrics under `small/` (`small/loss`, `small/grad_norm`, `small/learning_rate`, `small/entropy`, ...). TRL's own
    `loss`, `grad_norm`, `entropy`, ... are the large model's. With `small_use_vllm`: `codistill/small/
    vllm_logp_gap` and `codistill/small/weight_sync_time_s`.
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
        if "explorer" in kwargs:
            raise InputError(
                "CoDistillTrainer samples the rollouts with the small model; `explorer` (S2L-PO's frozen sampler) "
                "cannot be passed."
            )
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers is not None and any(o is not None for o in optimizers):
            raise InputError(
                "CoDistillTrainer builds one optimizer over both models (parameter groups per model), so "
                "`optimizers` cannot be passed; use `optimizer_cls_and_kwargs` or the config's `optim` fields."
            )
        _check_engine(args)
        if args.small_use_vllm:
            from trl.import_utils import is_vllm_available

            if not is_vllm_available():
                raise preflight.MissingPackageError("small_use_vllm=True needs vLLM: `pip install trl[vllm]`.")
        small_model = small_model if small_model is not None else args.small_model
        if small_model is None:
            raise InputError("CoDistillTrainer needs a small model: set `small_model` in the config or pass one.")
        # Checked before the small model is loaded (S2L-PO's own checks run once TRL starts building).
        preflight.check_output_dir(args.output_dir)
        preflight.check_model_path(model, "model")
        preflight.check_model_path(small_model, "small_model")
        _check_same_tokenizer(model, small_model, kwargs.get("processing_class"))
        check_model_sizes(model, small_model)
        # TRL creates output_dir while it builds; an error in the checks after it must not leave it behind.
        cleanup = preflight.removing_created_folder(args.output_dir)
        # Loading the small model must not consume the torch RNG (kd_coef=0 must reproduce plain GRPO on it).
        with torch.random.fork_rng(devices=[]):
            small = _load_small_model(small_model, args, small_peft_config)
        if args.small_use_vllm:
            from .small_vllm_sampler import SmallModelVLLMSampler

            self._small_sampler = SmallModelVLLMSampler()
        else:
            self._small_sampler = SmallModelSampler()
        super().__init__(
            model, reward_funcs, args, *pargs, small_sampler=self._small_sampler, mix_schedule=mix_schedule, **kwargs
        )
        with cleanup:
            self._check_small_model(small, args)
        self._prepare_small(small)
        # One module, one optimizer: from here on `self.model` is the pair, as TRL's PPO trainer wraps policy + value.
        self.codistill = CoDistillModule(self.model, small)
        self.model = self.model_wrapped = self.codistill
        self.callback_handler.model = self.codistill
        # The small model's optimizer steps so far (steps of windows that held small rows): a vLLM sampler pushes
        # its weights when this has moved.
        self.small_optimizer_steps = 0
        self._optimizer_roles: list[str] = []  # the role of each optimizer parameter group
        self._window_small_rows = False  # whether the current accumulation window trained the small model
        self._window_small_loss = 0.0
        self._grad_norms: dict[str, torch.Tensor] | None = None  # both models' norms at the last clip, by role
        self._final_save = False
        self._round_seconds = 0.0  # time of the generation round inside the current micro-step
        self._small_sampler.bind(self)

    # ------------------------------------------------------------------ the two models
    @property
    def large_model(self):
        return self.codistill.large

    @property
    def small_model(self):
        return self.codistill.small

    def _check_small_model(self, small: torch.nn.Module, args: CoDistillConfig) -> None:
        """What can only be checked once TRL has built the large model's side (its tokenizer, its processing class)."""
        if not self.small_tokenizer_matches:  # a small model passed as an object, whose tokenizer was not known
            raise InputError(
                f"small_model={args.small_model!r} does not share the large model's tokenizer: the KD reward and the "
                "importance weights compare the two models token by token; use a small model of the same family."
            )
        embeddings = small.get_input_embeddings().weight
        rows = getattr(embeddings, "ds_shape", embeddings.shape)[0]  # ZeRO-3 loads parameters partitioned
        if len(self._tokenizer) > rows:
            raise InputError(
                f"The small model has {rows} embedding rows, fewer than the tokenizer's {len(self._tokenizer)} "
                "tokens: it cannot be the large model's sibling."
            )
        if getattr(self, "_is_vlm", False):
            raise InputError("CoDistillTrainer supports text models only (the processing class is a processor).")

    def _prepare_small(self, small) -> None:
        """What TRL does to its learner at start-up, done to the small model: device, dropout, fused LM head."""
        from accelerate.utils import is_peft_model
        from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

        if self.place_model_on_device:
            small.to(self.args.device)
        if self.args.disable_dropout:
            disable_dropout_in_model(small)
        if is_peft_model(small) and self.args.gradient_checkpointing:
            # As TRL does for its learner: checkpointed PEFT layers need inputs that require gradients.
            small.enable_input_require_grads()
        # TRL's loss reads log-probs and entropies from a fused LM head (no full logits); the small model goes
        # through the same loss, so it gets the same head.
        add_fused_lm_head(
            small.get_base_model() if is_peft_model(small) else small,
            temperature=self.temperature,
            cast_lm_head_to_fp32=False,
            outputs=("log_probs", "entropy"),
        )
        small.train()

    # ------------------------------------------------------------------ optimizer and schedule
    def create_optimizer(self, model=None):
        """One optimizer over both models: a decay and a no-decay parameter group per model, each with its model's
        learning rate and weight decay (`small_learning_rate`, `small_weight_decay`), of the configured type."""
        if self.optimizer is not None:
            return self.optimizer
        a = self.args
        module = self.codistill
        decay_names = set(self.get_decay_parameter_names(module))
        groups, roles = [], []
        for role, lr, decay in ((LARGE, a.learning_rate, a.weight_decay), (SMALL, a.small_lr, a.small_decay)):
            named = [(f"{role}.{n}", p) for n, p in module.submodule(role).named_parameters() if p.requires_grad]
            for decayed in (True, False):
                params = [p for n, p in named if (n in decay_names) == decayed]
                if params:
                    groups.append({"params": params, "weight_decay": decay if decayed else 0.0, "lr": lr})
                    roles.append(role)
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(a, module)
        own_groups = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if own_groups:
            raise InputError(
                f"optim={a.optim!r} builds its own parameter groups ({sorted(own_groups)}), which would drop the small "
                "model's learning rate and weight decay: CoDistill supports optimizers that take parameter groups "
                "(adamw_torch, adamw_torch_fused, adafactor, sgd, the bitsandbytes Adam variants, ...)."
            )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        self._optimizer_roles = roles
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Each parameter group follows its model's schedule (`lr_scheduler_type` / `small_lr_scheduler_type`, same
        warm-up), stepped once per optimizer step; with one schedule for both, Transformers' own scheduler."""
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        a = self.args
        if a.small_scheduler == _schedule_name(a.lr_scheduler_type):
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        lambdas = {
            LARGE: _schedule_lambda(a, _schedule_name(a.lr_scheduler_type), num_training_steps),
            SMALL: _schedule_lambda(a, a.small_scheduler, num_training_steps),
        }
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [lambdas[r] for r in self._optimizer_roles])
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # ------------------------------------------------------------------ rollouts and scoring
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
        a = self.args
        metrics = self._metrics["train"]
        mask = output["completion_mask"]
        verifiable = output["advantages"]  # group advantages of the verifiable reward (B,)
        metrics["codistill/small/rollout_time_s"].append(small.rollout_time_s)

        if output.get("old_per_token_logps") is None:
            start = time.perf_counter()
            output["old_per_token_logps"] = self._large_logps(output)
            metrics["codistill/large/logp_time_s"].append(time.perf_counter() - start)
        large_logps = output["old_per_token_logps"].float()
        start = time.perf_counter()
        small_logps = self._small_logps(output).float()
        metrics["codistill/small/logp_time_s"].append(time.perf_counter() - start)
        small_logps = small_logps.masked_fill(~is_small.unsqueeze(1), float("nan"))
        known = objectives.known_tokens(large_logps, small_logps, mask, is_small)
        self._log_vllm_gap(small, small_logps, known)

        # S2L-PO's log-prob gap metric, and its importance weights on the large model's advantages.
        raw = objectives.ratio_values(large_logps, small_logps, mask, is_small)
        after = self._weigh_large_advantages(output, large_logps, small_logps, is_small)
        after = torch.ones_like(raw) if after is None else after
        if a.large_row_weight_bounds is not None:
            self._keep_plausible_rows(output, large_logps, small_logps, known, is_small)
        for name, values in (("is_weight_raw", raw), ("is_weight", after)):
            stats = self._reduce_min_mean_max(values)
            if stats is not None:
                for stat, value in zip(("min", "mean", "max"), stats):
                    metrics[f"codistill/{name}/{stat}"].append(value)

        # The small model's KD reward and its baseline (the round's mean over every process).
        kd_tokens = objectives.kd_token_rewards(large_logps, small_logps, mask, is_small, a.kd_clip)
        kd_sum, kd_count = self.accelerator.reduce(
            torch.stack(objectives.kd_reward_sum_count(kd_tokens, known)), reduction="sum"
        )
        baseline = kd_sum / kd_count.clamp(min=1.0) if a.kd_baseline == "mean" else torch.zeros_like(kd_sum)
        if kd_count > 0:
            metrics["codistill/kd_reward"].append((kd_sum / kd_count).item())

        # The small model's advantages: the group baseline of its own rows. At alpha = 1 with combined grouping
        # TRL's advantages are exactly that, so they are reused as they are.
        all_is_small = gather(is_small)
        rewards = mixing.weighted_rewards(small.rewards_per_func, self.reward_weights)
        metrics["codistill/reward/small"].append(torch.nanmean(rewards[all_is_small]).item())
        B = mask.size(0)
        local = slice(self.accelerator.process_index * B, (self.accelerator.process_index + 1) * B)
        if a.kd_mode == "token" and bool(all_is_small.all()) and a.advantage_grouping == "combined":
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
        else:
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
        large_call = self._forward_call(inputs, inputs["completion_mask"])
        if trains_small:
            small_mask = inputs["completion_mask"] * is_small.unsqueeze(1).to(inputs["completion_mask"].dtype)
            small_call = self._forward_call(inputs, small_mask)
        else:
            # The small model still runs (on one short row, with zero weight), so that every process and engine
            # sees both models in every forward and backward: DDP's reducer, ZeRO's and FSDP's collectives line up.
            small_call = self._forward_call(inputs, inputs["completion_mask"], rows=1, tokens=1)
        with self.accelerator.autocast():
            outputs = model(codistill_calls={LARGE: large_call, SMALL: small_call})
        loss = super()._compute_loss(_Replay(outputs[LARGE], large_call["input_ids"]), inputs)
        if trains_small:
            loss = loss + self._small_loss(outputs[SMALL], small_call["input_ids"], inputs, small_mask)
        else:
            loss = loss + 0.0 * outputs[SMALL].log_probs.sum()
        if self.is_deepspeed_enabled and self.accelerator.sync_gradients and not self._window_small_rows:
            # DeepSpeed steps inside this micro-step's backward, so a window without small rows is frozen here: a
            # learning rate of 0 keeps the small model's weights (its Adam moments still decay); the scheduler sets
            # the rate back at its step.
            for group, role in zip(self.optimizer.param_groups, self._optimizer_roles):
                if role == SMALL:
                    group["lr"] = 0.0
        metrics = self._metrics["train"]
        metrics["codistill/forward_time_s"].append(time.perf_counter() - start)
        for role, seconds in self.codistill.forward_seconds.items():
            metrics[f"codistill/{role}/forward_time_s"].append(seconds)
        return loss

    def _forward_call(self, inputs, completion_mask, rows: int | None = None, tokens: int | None = None) -> dict:
        """The keyword arguments TRL's `_get_per_token_logps_and_entropies` passes to the model for this batch
        (`rows` / `tokens`: only the first rows and completion tokens, for a zero-weight run of the small model)."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids = inputs["completion_ids"]
        if rows is not None:
            prompt_ids, prompt_mask = prompt_ids[:rows], prompt_mask[:rows]
            completion_ids, completion_mask = completion_ids[:rows, :tokens], completion_mask[:rows, :tokens]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, : -completion_ids.size(1)] = -100
        call = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "fused_lm_head": True}
        if self.aux_loss_enabled:
            call["output_router_logits"] = True
        return call

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
            loss = GRPOTrainer._compute_loss(self, _Replay(output, input_ids), small_inputs)
        finally:
            small_metrics, self._metrics = self._metrics, kept
        for mode, values in small_metrics.items():
            for name, v in values.items():
                kept[mode][f"small/{name}"].extend(v)
        self._window_small_loss += loss.detach().item()
        return loss

    def training_step(self, model, inputs, num_items_in_batch):
        """Transformers' micro-step (TRL's loss above, one backward). Its time, without the generation round TRL runs
        inside it every `steps_per_generation` micro-steps, is logged whole and split between the two models in
        proportion to their forward times (a backward costs about twice its forward, per model)."""
        self.codistill.forward_seconds = {}
        self._round_seconds = 0.0
        if self.is_deepspeed_enabled:
            self._clip_deepspeed_per_model()
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

    # ------------------------------------------------------------------ clipping and the optimizer step
    def _clip_grad_norm(self, model):
        """Transformers clips before each optimizer step; CoDistill clips each model by its own norm
        (`max_grad_norm`, `small_max_grad_norm`) and returns the large model's (TRL's `grad_norm`). Under DeepSpeed
        the engine steps inside the last micro-step's backward, so both models were clipped there already
        (`_clip_deepspeed_per_model`): their norms are only read here."""
        if self.is_deepspeed_enabled:
            return (self._grad_norms or {}).get(LARGE)
        return self._per_model_clip()

    def _get_grad_norm(self, model, grad_norm=None):
        """Called once per optimizer step, after clipping and before the step: the small model's window ends here.
        Both models' norms (before clipping) are logged as `codistill/grad_norm/large` and `codistill/grad_norm/small`;
        TRL's `grad_norm` is the large model's."""
        if grad_norm is None:
            grad_norm = (self._grad_norms or {}).get(LARGE) if self.is_deepspeed_enabled else self._per_model_clip()
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        for role, norm in (self._grad_norms or {}).items():
            self._metrics["train"][f"codistill/grad_norm/{role}"].append(float(norm))
        self._end_small_window()
        return grad_norm

    def _per_model_clip(self) -> torch.Tensor:
        a = self.args
        self.accelerator.unscale_gradients()  # once, under fp16: one scaler for the one optimizer
        norms = {}
        for role, max_norm in ((LARGE, a.max_grad_norm), (SMALL, a.small_clip)):
            params = [p for p in self.codistill.role_parameters(role) if p.grad is not None]
            if not params:
                norms[role] = torch.zeros((), device=self.accelerator.device)
                continue
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if max_norm and max_norm > 0:
                # Takes the parameters (it scales their `.grad`): given the gradients themselves it scales nothing.
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
            norms[role] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self._grad_norms = norms
        return norms[LARGE]

    def _clip_deepspeed_per_model(self) -> None:
        """Under DeepSpeed: each model clipped by its own norm, as under DDP / FSDP2, in place of the engine's one
        clip of the whole module (which would scale the large model's step by the small model's gradient).

        DeepSpeed steps inside `accelerator.backward` of the last micro-step, so this runs there: the engine's own
        clipping is switched off and its `step` first calls `_deepspeed_clip_step`, between the gradients' reduction
        and the optimizer step."""
        engine = self.accelerator.deepspeed_engine_wrapped.engine
        if getattr(engine, "_s2l_per_model_clip", False):
            return
        engine._config.gradient_clipping = 0.0
        if hasattr(engine.optimizer, "clip_grad"):  # ZeRO-1/2/3 and DeepSpeed's fp16 / bf16 optimizers
            engine.optimizer.clip_grad = 0.0
        step = engine.step

        def clipped_step(*args, **kwargs):
            if engine.is_gradient_accumulation_boundary():
                self._deepspeed_clip_step(engine)
            return step(*args, **kwargs)

        engine.step = clipped_step
        engine._s2l_per_model_clip = True

    def _deepspeed_clip_step(self, engine) -> None:
        """Both models' gradient norms from this process's share of each gradient inside the engine (one all-reduce
        of two numbers), then each model's share scaled by `min(1, max_norm / norm)`."""
        a = self.args
        shards = {role: _deepspeed_grad_shards(engine, self.codistill.role_parameters(role)) for role in ROLES}
        device = self.accelerator.device
        squares = torch.stack(
            [sum((g.float().square().sum() for g, _ in shards[role]), torch.zeros((), device=device)) for role in ROLES]
        ).to(device)
        if engine.zero_optimization_stage() > 0:  # partitions: each process holds a disjoint share
            torch.distributed.all_reduce(squares)
        # DeepSpeed keeps fp16 gradients multiplied by its loss scale until its own step.
        loss_scale = float(getattr(engine.optimizer, "loss_scale", 1.0) or 1.0)
        norms = dict(zip(ROLES, (squares.sqrt() / loss_scale).unbind()))
        for role, max_norm in ((LARGE, a.max_grad_norm), (SMALL, a.small_clip)):
            norm = norms[role]
            if max_norm and max_norm > 0 and torch.isfinite(norm) and norm > max_norm:
                coefficient = max_norm / (float(norm) + 1e-6)  # torch's clip_grad_norm_ coefficient
                for grad, write in shards[role]:
                    write(grad * coefficient)
        self._grad_norms = norms

    def _end_small_window(self) -> None:
        """A window without small rows leaves the small model exactly as it was: its gradients (zeros) are dropped,
        so the optimizer neither moves it (momentum, weight decay) nor advances its state."""
        metrics = self._metrics["train"]
        if self._window_small_rows:
            self.small_optimizer_steps += 1
            norm = (self._grad_norms or {}).get(SMALL)
            if norm is not None:
                metrics["small/grad_norm"].append(float(norm))
            loss = torch.tensor([self._window_small_loss], device=self.accelerator.device)
            metrics["small/loss"].append(self.accelerator.gather(loss).mean().item())
            metrics["small/learning_rate"].append(self._group_lr(SMALL))
        elif not self.is_deepspeed_enabled:
            for p in self.codistill.role_parameters(SMALL):
                p.grad = None
        self._window_small_rows, self._window_small_loss, self._grad_norms = False, 0.0, None

    def _group_lr(self, role: str) -> float:
        for group, r in zip(self.optimizer.param_groups, self._optimizer_roles):
            if r == role:
                return float(group["lr"])
        return 0.0

    # ------------------------------------------------------------------ checkpoints and saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Transformers calls this on the saving process with the module's state dict (gathered under ZeRO-3 /
        FSDP). CoDistill writes two model folders: the large model at the root of a checkpoint (or `large_model/` in
        a final save) and the small one in `small_model/`, each loadable with `from_pretrained`."""
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is None:
            state_dict = self.codistill.state_dict()
        folders = {
            LARGE: os.path.join(output_dir, LARGE_MODEL_DIR) if self._final_save else output_dir,
            SMALL: os.path.join(output_dir, SMALL_MODEL_DIR),
        }
        for role, folder in folders.items():
            os.makedirs(folder, exist_ok=True)
            role_state = self.codistill.role_state_dict(state_dict, role)
            if role_state:  # empty when ZeRO-3 saves no 16-bit weights (Transformers then saves its engine files)
                self.codistill.submodule(role).save_pretrained(folder, state_dict=role_state)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(folder)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume both models. DeepSpeed and FSDP checkpoints hold the whole module (Transformers loads them); the
        plain ones hold two model folders, the large model at the root and the small one in `small_model/`."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        folder = os.path.join(resume_from_checkpoint, SMALL_MODEL_DIR)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{resume_from_checkpoint} has no {SMALL_MODEL_DIR}/ folder: it was not written by CoDistillTrainer, "
                "so the small model cannot be resumed."
            )
        load_saved_weights(self.codistill.large, resume_from_checkpoint)
        load_saved_weights(self.codistill.small, folder)

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
            self._write_subfolder_cards(output_dir)

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

    def _write_subfolder_cards(self, output_dir: str) -> None:
        import shutil

        source = os.path.join(self.args.output_dir, "README.md")
        large_dir = os.path.join(output_dir, LARGE_MODEL_DIR)
        if os.path.exists(source) and os.path.isdir(large_dir):
            shutil.copyfile(source, os.path.join(large_dir, "README.md"))
        small_dir = os.path.join(output_dir, SMALL_MODEL_DIR)
        if os.path.isdir(small_dir):
            base = getattr(getattr(self.small_model, "config", None), "_name_or_path", None)
            with open(os.path.join(small_dir, "README.md"), "w", encoding="utf-8") as f:
                f.write(codistill_small_model_card(self.args, base))


def _check_engine(args: CoDistillConfig) -> None:
    """Engine settings CoDistill cannot honour, refused before any model is loaded."""
    if args.use_vllm:
        raise InputError(
            "CoDistillTrainer does not sample the large model with vLLM (use_vllm=True given): the small model "
            "samples the rollouts. To sample them with vLLM set small_use_vllm=True (and use_vllm=False); the "
            "vllm_* fields configure the small model's engine (docs/codistill.md)."
        )


def _deepspeed_grad_shards(engine, params) -> list[tuple[torch.Tensor, Any]]:
    """This process's share of each parameter's gradient inside a DeepSpeed engine, between its backward and its step,
    as `(gradient, write)` pairs (`write(new)` stores a new value): ZeRO-3 its partition of every parameter, ZeRO-1/2
    the fragment of the flat partition it owns (disjoint across processes, so squared norms add up); without ZeRO the
    whole, all-reduced gradient (the same on every process)."""
    shards = []
    stage = engine.zero_optimization_stage()
    for p in params:
        if not p.requires_grad:
            continue
        if stage == 3:
            from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

            grad = safe_get_local_grad(p)
            if grad is not None:
                shards.append((grad, lambda value, p=p: safe_set_local_grad(p, value)))
        elif getattr(p, "_hp_mapping", None) is not None:  # ZeRO-1/2 (and DeepSpeed's bf16 optimizer)
            mapping = p._hp_mapping
            grad = mapping.get_lp_grad_fragment(p._index_in_param_group).view(-1)
            if grad.numel() == p.numel() and mapping.lp_fragment_address.numel != p.numel():
                # A full accumulation buffer per process: only the owned fragment counts and is written.
                address = mapping.lp_fragment_address
                grad = grad.narrow(0, address.start, address.numel)
            shards.append((grad, grad.copy_))
        elif stage == 0 and p.grad is not None:
            shards.append((p.grad, p.grad.copy_))
    return shards


def _load_small_model(small_model, args: CoDistillConfig, peft_config):
    from transformers import AutoModelForCausalLM

    if isinstance(small_model, str):
        init = args.small_model_init_kwargs
        if init is None and isinstance(args.model_init_kwargs, dict):
            init = args.model_init_kwargs
        init = dict(init or {})
        dtype = init.get("dtype", init.pop("torch_dtype", None))
        if isinstance(dtype, str) and dtype not in ("auto", None):
            init["dtype"] = getattr(torch, dtype)
        small_model = AutoModelForCausalLM.from_pretrained(small_model, **init)
    if peft_config is not None:
        from peft import get_peft_model

        small_model = get_peft_model(small_model, peft_config)
    return small_model


def _schedule_name(name) -> str:
    return str(getattr(name, "value", name))


def _schedule_lambda(args: CoDistillConfig, name: str, num_training_steps: int):
    """The learning-rate multiplier of Transformers' schedule `name` as a function of the step (one LambdaLR
    per parameter group needs one function per group)."""
    from transformers import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = get_scheduler(
        name,
        optimizer=probe,
        num_warmup_steps=args.get_warmup_steps(num_training_steps),
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise ValueError(f"The {name!r} learning-rate schedule cannot run per parameter group (it is not a LambdaLR).")
    return scheduler.lr_lambdas[0]
