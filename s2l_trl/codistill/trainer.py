"""`CoDistillTrainer`: a large and a small model trained together, on S2L-PO's explorer machinery.

Data flow of one generation round (train mode, default alpha = 1):

    S2L-PO plans the round (alpha, G_w, G_s) -> the *small* model is the explorer: it samples the G_w rows of every
    group in-process (`SmallModelExplorer`: completions + sampled-token log-probs), or with a vLLM engine that gets
    its weights after each of its optimizer steps (`small_use_vllm`, `SmallModelVLLMExplorer`); the large model
    samples the G_s rows (none by default) -> TRL scores the rows (verifiable rewards, group-relative advantages)
        -> one no-grad forward of the large model on the rows gives `log pi_large` (TRL's old log-probs), used twice:
           * large update: S2L-PO's per-token importance weights `pi_large / pi_small` on the small model's tokens
             (`explorer_importance_sampling`, truncated at 2 by default), folded into the advantages;
           * small update: KD reward `log pi_large(y_t) - log pi_small(y_t)` (`kd_mode`: dense per token, or its
             sequence mean added to the reward before group normalisation), times `kd_coef`.
    -> each micro-step: TRL's GRPO loss and backward for the large model (Transformers' loop steps its optimizer),
       then the same GRPO loss for the small model on its own rows with its own advantages, backward, and at the
       end of the accumulation window its own clip / optimizer / LR-scheduler step.

The large model is TRL's `self.model`; the small model, its optimizer and scheduler live here, prepared by the same
accelerator, saved into `small_model/` of every checkpoint and restored on resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import defaultdict
from typing import Any

import torch
from accelerate.utils import gather
from trl import GRPOTrainer

from .. import mixing
from ..trainer import S2LTrainer
from . import objectives
from .config import CoDistillConfig
from .explorer import SmallModelExplorer

logger = logging.getLogger(__name__)

SMALL_MODEL_DIR = "small_model"  # in every checkpoint and in the final output folder
LARGE_MODEL_DIR = "large_model"  # in the final output folder (checkpoints keep the large model at their root)
SMALL_OPTIMIZER_NAME = "optimizer.pt"
SMALL_SCHEDULER_NAME = "scheduler.pt"

CODISTILL_PAPER = {"title": "CoDistill-GRPO", "id": None, "citation": None}


class CoDistillTrainer(S2LTrainer):
    """CoDistill-GRPO: co-train a large model (`model`, TRL's learner) and a small model (`small_model`).

    Use it like [`S2LTrainer`] with a [`CoDistillConfig`]. The small model samples the rollouts (S2L-PO's explorer,
    here trainable) and learns by GRPO with a KD reward from the large model; the large model learns by GRPO on those
    rollouts with importance weights `pi_large / pi_small` and samples nothing of its own (at the default alpha = 1).

    Args:
        model, reward_funcs, args, train_dataset, peft_config, ...: as for [`S2LTrainer`], for the large model.
        small_model (`str` or `PreTrainedModel`, *optional*):
            The small model, or its id/path; defaults to `args.small_model`. Must share the large model's tokenizer.
        small_peft_config (`peft.PeftConfig`, *optional*):
            LoRA (or any PEFT) configuration of the small model.
        mix_schedule: as for [`S2LTrainer`]: the small model's share of each group.

    Metrics (TRL's logging): `codistill/kd_reward` (mean per-token KD log-ratio), `codistill/is_weight/{min,mean,
    max}` and `codistill/is_weight_raw/{min,mean,max}` (after / before truncation or masking), `codistill/reward/
    small`, `codistill/reward/large` (evaluation, the large model's own samples), `codistill/{small,large}/
    rollout_time_s`, `codistill/large/logp_time_s`, `codistill/{large,small}/update_time_s`, and the small model's
    GRPO metrics under `small/` (`small/loss`, `small/grad_norm`, `small/learning_rate`, `small/entropy`, ...). With
    `small_use_vllm`: `codistill/small/vllm_logp_gap` and `codistill/small/weight_sync_time_s`.
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
            raise ValueError("CoDistillTrainer builds its explorer from the small model; do not pass `explorer`.")
        sharded = _sharding_requested(args)
        if sharded:
            raise ValueError(
                f"CoDistillTrainer runs under DDP (or one process) only; {sharded} was requested. Both models are "
                "prepared by one accelerator, which DeepSpeed does not allow, and FSDP is untested: use LoRA "
                "(`peft_config` / `small_peft_config`) to fit large models instead (docs/codistill.md)."
            )
        if args.use_vllm:
            raise ValueError(
                "CoDistillTrainer does not sample the large model with vLLM (use_vllm=True given): the small model "
                "samples the rollouts. To sample them with vLLM set small_use_vllm=True (and use_vllm=False); the "
                "vllm_* fields configure the small model's engine (docs/codistill.md)."
            )
        if args.small_use_vllm:
            from trl.import_utils import is_vllm_available

            if not is_vllm_available():
                raise ImportError("small_use_vllm=True needs vLLM: `pip install trl[vllm]`.")
        small_model = small_model if small_model is not None else args.small_model
        if small_model is None:
            raise ValueError("CoDistillTrainer needs a small model: set `small_model` in the config or pass one.")
        # Loading the small model must not consume the torch RNG (kd_coef=0 must reproduce plain GRPO on it).
        with torch.random.fork_rng(devices=[]):
            self.small_model = self._load_small_model(small_model, args, small_peft_config)
        if args.small_use_vllm:
            from .vllm_explorer import SmallModelVLLMExplorer

            self._small_explorer = SmallModelVLLMExplorer(self.small_model)
        else:
            self._small_explorer = SmallModelExplorer(self.small_model)
        super().__init__(
            model, reward_funcs, args, *pargs, explorer=self._small_explorer, mix_schedule=mix_schedule, **kwargs
        )
        if not self.explorer_tokenizer_matches:
            raise ValueError(
                f"small_model={args.small_model!r} does not share the large model's tokenizer: the KD reward and the "
                "importance weights compare the two models token by token."
            )
        if len(self._tokenizer) > self.small_model.get_input_embeddings().weight.size(0):
            raise ValueError(
                f"The small model has {self.small_model.get_input_embeddings().weight.size(0)} embedding rows, fewer "
                f"than the tokenizer's {len(self._tokenizer)} tokens: it cannot be the large model's sibling."
            )
        self.small_model.to(self.accelerator.device)
        self._patch_small_lm_head()
        # The small model's optimizer steps so far: a vLLM explorer pushes its weights when this has moved.
        self.small_optimizer_steps = 0
        self._small_explorer.bind(self)
        self.small_model_wrapped = self.small_model
        self.small_optimizer = None
        self.small_lr_scheduler = None
        self._micro_batch: dict[str, Any] | None = None
        self._small_loss_window = 0.0
        self._generation_time = 0.0

    # ------------------------------------------------------------------ set-up
    @staticmethod
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
        small_model.train()
        return small_model

    def _patch_small_lm_head(self) -> None:
        """TRL (>= 1.16) patches the learner's LM head to return log-probs and entropies without full logits, and its
        loss reads them; the small model goes through the same loss, so it gets the same patch."""
        try:
            from trl.trainer.utils import add_fused_lm_head
        except ImportError:  # older TRL computes log-probs from the logits: nothing to patch
            return
        from accelerate.utils import is_peft_model

        model = self.small_model
        add_fused_lm_head(
            model.get_base_model() if is_peft_model(model) else model,
            temperature=self.temperature,
            cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32,
            outputs=("log_probs", "entropy"),
        )

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Transformers calls this once the large model's optimizer exists; CoDistill builds and prepares the small
        model's optimizer and LR schedule here too (same optimizer type and warm-up; its own LR, decay, schedule)."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.small_optimizer is None:
            from transformers import Trainer, get_scheduler

            a = self.args
            decay = a.weight_decay if a.small_weight_decay is None else a.small_weight_decay
            decay_names = set(self.get_decay_parameter_names(self.small_model))
            params = [(n, p) for n, p in self.small_model.named_parameters() if p.requires_grad]
            groups = [
                {"params": [p for n, p in params if n in decay_names], "weight_decay": decay},
                {"params": [p for n, p in params if n not in decay_names], "weight_decay": 0.0},
            ]
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(a, self.small_model)
            optimizer_kwargs = {**optimizer_kwargs, "lr": a.small_lr}
            self.small_model_wrapped, small_optimizer = self.accelerator.prepare(
                self.small_model, optimizer_cls(groups, **optimizer_kwargs)
            )
            self.small_optimizer = small_optimizer
            self.small_lr_scheduler = get_scheduler(
                a.small_scheduler,
                optimizer=self.small_optimizer,
                num_warmup_steps=a.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=a.lr_scheduler_kwargs,
            )
        return scheduler

    # ------------------------------------------------------------------ rollouts and scoring
    def _explorer_rng(self, round_index: int):
        """S2L-PO samples an in-process frozen explorer on a forked generator, to keep the learner's stream intact.
        CoDistill: the small model *is* a policy being trained, so it samples on torch's global generator exactly as
        TRL would sample it (and a resumed run continues that stream from Transformers' checkpointed RNG state)."""
        return contextlib.nullcontext()

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        self._generation_time += time.perf_counter() - start
        if not self.model.training:
            self._log_eval_reward()
        return output

    def _log_eval_reward(self) -> None:
        metrics = self._metrics["eval"]
        if metrics.get("reward"):
            metrics["codistill/reward/large"].append(metrics["reward"][-1])

    def _finish_round(self, output: dict[str, Any], rnd) -> None:
        """S2L-PO's round (per-source metrics, importance weights on the large model's advantages), plus the small
        model's update terms. The large model's log-probs on the rows are computed once, here, and stored as TRL's
        old log-probs (on-policy they equal the detached ones TRL would use), so S2L-PO's weights reuse them."""
        verifiable_advantages = output["advantages"].clone()
        if rnd.g_w > 0 and output.get("old_per_token_logps") is None:
            start = time.perf_counter()
            output["old_per_token_logps"] = self._learner_logps(output)
            self._metrics["train"]["codistill/large/logp_time_s"].append(time.perf_counter() - start)
        super()._finish_round(output, rnd)
        metrics = self._metrics["train"]
        metrics["codistill/small/rollout_time_s"].append(rnd.explorer.latency_s if rnd.explorer is not None else 0.0)
        if rnd.g_w > 0:
            self._small_update_terms(output, rnd, verifiable_advantages)

    def _generate_learner_rows(self, rnd, prompt_ids, images, multimodal_fields, has_tool_images):
        start = time.perf_counter()
        try:
            return super()._generate_learner_rows(rnd, prompt_ids, images, multimodal_fields, has_tool_images)
        finally:
            self._metrics["train"]["codistill/large/rollout_time_s"].append(time.perf_counter() - start)

    def _small_logps(self, output: dict[str, Any], rnd) -> torch.Tensor:
        """`(B, T)` sampled-token log-probs of the small model's rows (NaN elsewhere), from its rollouts."""
        mask = output["completion_mask"]
        logps = torch.full(mask.shape, float("nan"), device=mask.device)
        for i in rnd.placement.explorer_rows:
            _, lps = rnd.explorer.rows[rnd.placement.slots[i]]
            if lps:
                width = min(len(lps), logps.size(1))
                logps[i, :width] = torch.tensor(lps[:width], device=mask.device, dtype=torch.float32)
        return logps

    def _small_update_terms(self, output: dict[str, Any], rnd, verifiable_advantages: torch.Tensor) -> None:
        a = self.args
        device = self.accelerator.device
        metrics = self._metrics["train"]
        mask = output["completion_mask"]
        is_small = output["s2l_is_explorer"]
        large_logps = output["old_per_token_logps"]
        small_logps = self._small_logps(output, rnd)

        # Importance-weight statistics, before and after S2L-PO's truncation / masking.
        raw = objectives.ratio_values(large_logps, small_logps, mask, is_small)
        if a.explorer_importance_sampling == "none":
            after = torch.ones_like(raw)
        else:
            _, after = mixing.explorer_is_weights(
                large_logps,
                small_logps,
                mask,
                is_small,
                a.explorer_importance_sampling,
                a.explorer_importance_sampling_clip_min,
                a.explorer_importance_sampling_clip_max,
            )
        for name, values in (("is_weight_raw", raw), ("is_weight", after)):
            s = self._reduce_min_mean_max(values)
            if s is not None:
                metrics[f"codistill/{name}/min"].append(s[0])
                metrics[f"codistill/{name}/mean"].append(s[1])
                metrics[f"codistill/{name}/max"].append(s[2])

        # KD reward of the small model.
        kd_tokens = objectives.kd_token_rewards(large_logps, small_logps, mask, is_small, a.kd_clip)
        known = mask.bool() & is_small.unsqueeze(1) & ~torch.isnan(small_logps)
        kd_stats = self.accelerator.reduce(
            torch.stack([kd_tokens[known].sum(), known.sum().to(kd_tokens.dtype)]), reduction="sum"
        )
        if kd_stats[1] > 0:
            metrics["codistill/kd_reward"].append((kd_stats[0] / kd_stats[1]).item())

        # Verifiable reward of the small model's rows.
        all_is_small = gather(is_small)
        rewards = (rnd.rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rnd.rewards_per_func).all(dim=1)] = torch.nan
        metrics["codistill/reward/small"].append(torch.nanmean(rewards[all_is_small]).item())

        # The small model's advantages: its own rows' group baseline. At alpha = 1 with the dense KD reward, TRL's
        # advantages (before S2L-PO's importance weights) are exactly that baseline, so they are reused as they are.
        B = mask.size(0)
        local = slice(self.accelerator.process_index * B, (self.accelerator.process_index + 1) * B)
        only_small = bool(all_is_small.all())
        if a.kd_mode == "token" and only_small and a.advantage_grouping == "combined":
            seq_adv = verifiable_advantages
        else:
            small_rewards = rewards
            if a.kd_mode == "sequence":
                small_rewards = rewards + a.kd_coef * gather(objectives.kd_sequence_rewards(kd_tokens, mask))
            seq_adv = mixing.per_source_advantages(
                small_rewards, all_is_small, self.num_generations, self.scale_rewards
            )[local]
        if a.kd_mode == "token":
            small_adv = objectives.dense_small_advantages(seq_adv, kd_tokens, a.kd_coef)
        else:
            small_adv = seq_adv
        output["codistill_small_advantages"] = small_adv
        small_mask = mask * is_small.unsqueeze(1).to(mask.dtype)
        output["codistill_small_num_items"] = self.accelerator.gather(small_mask.sum()).sum()
        # TRL's rule for old log-probs: needed when a round is used by more than one optimizer step.
        every = a.steps_per_generation * self.num_iterations
        if a.gradient_accumulation_steps % every != 0:
            with torch.no_grad():
                output["codistill_small_old_logps"] = self._per_token_logps(self.small_model, output)

    def _reduce_min_mean_max(self, values: torch.Tensor) -> tuple[float, float, float] | None:
        s = objectives.min_mean_max(values.to(self.accelerator.device))
        gathered = gather(s.reshape(1, 4))
        count = gathered[:, 2].sum()
        if count == 0:
            return None
        return gathered[:, 0].min().item(), (gathered[:, 1].sum() / count).item(), gathered[:, 3].max().item()

    def _per_token_logps(self, model, output: dict[str, Any]) -> torch.Tensor:
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            output["completion_ids"].size(1),
            batch_size=self.args.per_device_train_batch_size,
        )
        return logps

    # ------------------------------------------------------------------ the two updates
    def _compute_loss(self, model, inputs):
        """The large model's loss is S2L-PO's (TRL's GRPO loss with importance-weighted advantages); the micro-batch
        is kept for the small model's update, which `training_step` runs after the large model's backward."""
        if model is not self.small_model_wrapped and self.model.training:
            self._micro_batch = inputs
        return super()._compute_loss(model, inputs)

    def training_step(self, model, inputs, num_items_in_batch):
        """TRL's micro-step for the large model, then the small model's forward / backward on the same micro-batch
        and, at the end of the accumulation window, its clip / optimizer / scheduler step."""
        self._micro_batch = None
        self._generation_time = 0.0
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        large_time = time.perf_counter() - start - self._generation_time
        batch, self._micro_batch = self._micro_batch, None
        start = time.perf_counter()
        if batch is not None and "codistill_small_advantages" in batch:
            self._small_micro_step(batch, num_items_in_batch)
        if self.accelerator.sync_gradients and self.small_optimizer is not None:
            self._small_optimizer_step()
        metrics = self._metrics["train"]
        metrics["codistill/large/update_time_s"].append(large_time)
        metrics["codistill/small/update_time_s"].append(time.perf_counter() - start)
        return loss

    def _small_micro_step(self, batch: dict[str, Any], num_items_in_batch) -> None:
        is_small = batch["s2l_is_explorer"]
        small_inputs = {
            "prompt_ids": batch["prompt_ids"],
            "prompt_mask": batch["prompt_mask"],
            "completion_ids": batch["completion_ids"],
            "completion_mask": batch["completion_mask"] * is_small.unsqueeze(1).to(batch["completion_mask"].dtype),
            "advantages": batch["codistill_small_advantages"],
            "num_items_in_batch": batch["codistill_small_num_items"],
        }
        if "codistill_small_old_logps" in batch:
            small_inputs["old_per_token_logps"] = batch["codistill_small_old_logps"]
        # TRL's loss, on the small model, with its metrics kept apart under `small/`.
        kept, self._metrics = self._metrics, {"train": defaultdict(list), "eval": defaultdict(list)}
        sync = self.accelerator.sync_gradients
        context = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.small_model_wrapped)
        try:
            with context:
                self.small_model_wrapped.train()
                with self.compute_loss_context_manager():
                    loss = GRPOTrainer._compute_loss(self, self.small_model_wrapped, small_inputs)
                # The scaling Transformers' `training_step` applies to the large model's loss.
                if (
                    not self.model_accepts_loss_kwargs or num_items_in_batch is None
                ) and self.compute_loss_func is None:
                    loss = loss / self.current_gradient_accumulation_steps
                self.accelerator.backward(loss)
        finally:
            small_metrics, self._metrics = self._metrics, kept
        for mode, values in small_metrics.items():
            for name, v in values.items():
                kept[mode][f"small/{name}"].extend(v)
        self._small_loss_window += loss.detach().item()

    def _small_optimizer_step(self) -> None:
        a = self.args
        max_norm = a.max_grad_norm if a.small_max_grad_norm is None else a.small_max_grad_norm
        params = [p for p in self.small_model.parameters() if p.requires_grad]
        if max_norm and max_norm > 0:
            grad_norm = self.accelerator.clip_grad_norm_(params, max_norm)
        else:
            grad_norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        metrics = self._metrics["train"]
        metrics["small/learning_rate"].append(self.small_lr_scheduler.get_last_lr()[0])
        self.small_optimizer.step()
        self.small_lr_scheduler.step()
        self.small_optimizer.zero_grad(set_to_none=True)
        self.small_optimizer_steps += 1
        loss = torch.tensor([self._small_loss_window], device=self.accelerator.device)
        metrics["small/loss"].append(self.accelerator.gather(loss).mean().item())
        metrics["small/grad_norm"].append(float(grad_norm.item() if torch.is_tensor(grad_norm) else grad_norm))
        self._small_loss_window = 0.0

    # ------------------------------------------------------------------ checkpoints, saving, model cards
    def _save_checkpoint(self, model, trial):
        """The small model, its optimizer and scheduler go into `checkpoint-N/small_model/` *before* Transformers
        writes the rest (its `trainer_state.json`, written last, marks a checkpoint complete)."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self._save_small(os.path.join(folder, SMALL_MODEL_DIR), with_optimizer=True)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Transformers calls this when resuming, after both optimizers exist: CoDistill also restores the small
        model's weights, optimizer and scheduler from `small_model/`."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        folder = os.path.join(checkpoint, SMALL_MODEL_DIR)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{checkpoint} has no {SMALL_MODEL_DIR}/ folder: it was not written by CoDistillTrainer, so the small "
                "model cannot be resumed."
            )
        _load_weights(self.small_model, folder)
        self.small_optimizer.load_state_dict(
            torch.load(
                os.path.join(folder, SMALL_OPTIMIZER_NAME), map_location=self.accelerator.device, weights_only=False
            )
        )
        self.small_lr_scheduler.load_state_dict(
            torch.load(os.path.join(folder, SMALL_SCHEDULER_NAME), weights_only=False)
        )

    def _save_small(self, folder: str, with_optimizer: bool) -> None:
        if not self.args.should_save:
            return
        os.makedirs(folder, exist_ok=True)
        model = self.accelerator.unwrap_model(self.small_model_wrapped)
        state = self.accelerator.get_state_dict(self.small_model_wrapped)
        model.save_pretrained(
            folder,
            state_dict=state,
            safe_serialization=self.args.save_safetensors if hasattr(self.args, "save_safetensors") else True,
        )
        self.processing_class.save_pretrained(folder)
        if with_optimizer and self.small_optimizer is not None:
            torch.save(self.small_optimizer.state_dict(), os.path.join(folder, SMALL_OPTIMIZER_NAME))
            torch.save(self.small_lr_scheduler.state_dict(), os.path.join(folder, SMALL_SCHEDULER_NAME))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Checkpoints (`_internal_call`) keep the large model at their root, where Transformers resumes it from.
        A final save writes `large_model/` and `small_model/`, each a loadable model folder with its model card."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        output_dir = output_dir or self.args.output_dir
        super().save_model(os.path.join(output_dir, LARGE_MODEL_DIR), _internal_call=True)
        self._save_small(os.path.join(output_dir, SMALL_MODEL_DIR), with_optimizer=False)
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
            with open(os.path.join(small_dir, "README.md"), "w", encoding="utf-8") as f:
                f.write(small_model_card(self.args, getattr(self.small_model.config, "_name_or_path", None)))


def _sharding_requested(args: CoDistillConfig) -> str | None:
    """DeepSpeed / FSDP asked for by the config or by `accelerate launch` (its environment), else None."""
    from accelerate.utils import parse_flag_from_env

    if args.deepspeed or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    if args.fsdp or parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return "FSDP"
    return None


def codistill_card_section(args: CoDistillConfig, role: str) -> str:
    other = "small" if role == "large" else "large"
    return "\n".join(
        [
            "## CoDistill-GRPO provenance",
            "",
            f"This is the **{role}** model of a CoDistill-GRPO run (trained together with the {other} model).",
            "",
            f"- small model: `{args.small_model}`",
            f"- small model's share of each group: schedule `{args.mix_schedule}`, alpha start "
            f"{args.mix_alpha_start}, end {args.mix_alpha_end}, T_mix {args.mix_steps}",
            f"- large model's importance weights pi_large / pi_small: `{args.explorer_importance_sampling}` "
            f"(bounds {args.explorer_importance_sampling_clip_min}, {args.explorer_importance_sampling_clip_max})",
            f"- small model's KD reward: `kd_mode={args.kd_mode}`, `kd_coef={args.kd_coef}`, `kd_clip={args.kd_clip}`",
            f"- G = {args.num_generations}; small model LR {args.small_lr}, schedule `{args.small_scheduler}`",
        ]
    )


def small_model_card(args: CoDistillConfig, base_model: str | None) -> str:
    """The small model's card: front matter, what it is, and the run's CoDistill settings."""
    front = ["---", "library_name: transformers", "tags:", "- trl", "- grpo", "- codistill"]
    if base_model and not os.path.isdir(base_model):
        front.append(f"base_model: {base_model}")
    front.append("---")
    body = [
        "",
        "# Small model of a CoDistill-GRPO run",
        "",
        "Trained with GRPO on its own rollouts, with reward = verifiable reward + kd_coef x KD reward from the large "
        "model (`s2l_trl.codistill.CoDistillTrainer`).",
        "",
        codistill_card_section(args, role="small"),
        "",
    ]
    return "\n".join(front + body)


def _load_weights(model, folder: str) -> None:
    """Load the weights `save_pretrained` wrote into `folder` into `model` (full model or PEFT adapter)."""
    from safetensors.torch import load_file

    adapter = os.path.join(folder, "adapter_model.safetensors")
    if os.path.exists(adapter):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"No weights (*.safetensors) in {folder}.")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(os.path.join(folder, name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"Unexpected keys in {folder}: {unexpected[:5]}")
    if missing:
        logger.warning("Keys missing from %s (tied weights?): %s", folder, missing[:5])
