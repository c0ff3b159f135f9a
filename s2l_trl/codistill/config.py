"""`CoDistillConfig`: `S2LConfig` plus the trainable small model, its optimizer and the KD reward."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..config import S2LConfig, field_help, parameter_docs
from ..mixing import EXPLORER_IS_MODES
from ..preflight import InputError
from ..schedule import SCHEDULES
from .objectives import KD_BASELINES, KD_MODES

logger = logging.getLogger(__name__)

# `mix_steps` of a run whose length is set in epochs (max_steps <= 0): larger than any run.
WHOLE_RUN_STEPS = 2**31 - 1

# S2L-PO's explorer fields CoDistill uses. Every other `explorer_*` field configures how S2L-PO reaches a *frozen*
# explorer (server, offline rollouts, an engine of its own), which CoDistill never builds: a value other than
# S2L-PO's default is refused instead of being silently ignored.
_USED_EXPLORER_FIELDS = {
    "explorer_model",
    "explorer_importance_sampling",
    "explorer_importance_sampling_clip_min",
    "explorer_importance_sampling_clip_max",
    "explorer_off_policy_mask",
    "explorer_prefetch",  # the small model samples in the trainer's thread, never ahead: both values mean the same
}
# The small model samples with TRL's settings (its GRPO loss assumes them): these must agree or stay unset.
_SAMPLING_FIELDS = {
    "explorer_temperature": "temperature",
    "explorer_top_p": "top_p",
    "explorer_top_k": "top_k",
    "explorer_max_tokens": "max_completion_length",
}

_SECTIONS = {
    "small_model": "Parameters that control the small model and its optimizer",
    "small_use_vllm": "Parameters that control how the small model samples",
    "kd_coef": "Parameters that control the small model's KD term",
    "mix_schedule": "S2L-PO parameters whose CoDistill defaults differ (the large model's side)",
}


@dataclass
class CoDistillConfig(S2LConfig):
    r"""
    Configuration class for the [`CoDistillTrainer`]: CoDistill-GRPO, a large and a small model trained in one run.

    The small model samples the rollouts (all of them by default: `alpha = 1`, constant). It learns by GRPO on its
    own rollouts with reward = verifiable reward + `kd_coef` x KD reward from the large model. The large model learns
    by GRPO on those rollouts, as S2L-PO's learner does on its explorer's, with per-token importance weights
    `pi_large / pi_small` (S2L-PO's `explorer_importance_sampling` field, truncated at 2 by default).

    Every [`S2LConfig`] / [`~trl.GRPOConfig`] parameter keeps its meaning for the large model (`model`,
    `learning_rate`, ...); the small model's optimizer settings default to the large model's. Both models are one
    module trained by one optimizer (a parameter group per model), so DDP, DeepSpeed ZeRO-2/3 and FSDP2 apply to
    both. The small model samples with TRL's sampling settings (`temperature`, `top_p`, `top_k`,
    `max_completion_length`), since it is trained on its own samples: S2L-PO's `explorer_temperature`,
    `explorer_top_p`, `explorer_top_k`, `explorer_max_tokens` must stay unset (or agree), and its frozen-explorer
    transport settings (`explorer_mode`, `explorer_server_*`, `explorer_rollouts`, `explorer_vllm_*`, ...) are
    refused when set.

    No reference code exists and the exact formulas are unpublished: every default marked *assumption* is ours.

    The parameter list below is generated from each field's `help` text, the one source of every description.
    """

    small_model: str | None = field(
        default=None,
        metadata=field_help(
            """Model id or path of the small model, trained alongside the large one (`CoDistillTrainer` also takes a
            model object through its `small_model` argument, which wins). It must share the large model's tokenizer:
            the KD reward and the importance weights compare the two models token by token."""
        ),
    )
    small_model_init_kwargs: dict | str | None = field(
        default=None,
        metadata=field_help(
            """Keyword arguments of `AutoModelForCausalLM.from_pretrained` for the small model (a dict, or a JSON
            string on the command line). Defaults to `model_init_kwargs`."""
        ),
    )
    small_learning_rate: float | None = field(
        default=None,
        metadata=field_help(
            """Peak learning rate of the small model's own optimizer (same optimizer type, betas, epsilon and warm-up
            as the large model's). Defaults to `learning_rate`."""
        ),
    )
    small_lr_scheduler_type: str | None = field(
        default=None,
        metadata=field_help(
            """Learning-rate schedule of the small model (a `transformers.SchedulerType` name). Defaults to
            `lr_scheduler_type`."""
        ),
    )
    small_weight_decay: float | None = field(
        default=None,
        metadata=field_help("""Weight decay of the small model's optimizer. Defaults to `weight_decay`."""),
    )
    small_max_grad_norm: float | None = field(
        default=None,
        metadata=field_help("""Gradient-norm clip of the small model (0 turns it off). Defaults to `max_grad_norm`."""),
    )
    small_use_vllm: bool = field(
        default=False,
        metadata=field_help(
            """Sample the small model's rollouts with vLLM instead of transformers in-process. The engine is TRL's
            `VLLMGeneration` bound to the *small* model and configured by TRL's `vllm_*` fields (`vllm_mode`
            `"colocate"` or `"server"`, `vllm_server_base_url` / `vllm_server_host` / `vllm_server_port`,
            `vllm_group_port`, `vllm_server_timeout`, `vllm_gpu_memory_utilization`, `vllm_max_model_length`,
            `vllm_enable_sleep_mode`, `vllm_model_impl`, ...), which drive nothing else in CoDistill (`use_vllm`,
            vLLM for the large model, is refused); it samples with TRL's `temperature`, `top_p`, `top_k`, `min_p`,
            `repetition_penalty` and `max_completion_length`. The small model's weights are pushed into the engine
            before the first generation after each of its optimizer steps (and before the first generation of a
            run), by every process (TRL's push gathers ZeRO-3 / FSDP2 parameters collectively). The log-probs used
            by the KD reward and the importance weights come from the small model's own forward (the training
            convention); the mean gap to vLLM's is logged as `codistill/small/vllm_logp_gap`. `"colocate"`: every
            process samples its own rows with its own engine. `"server"` (`trl vllm-serve --model <small model>`):
            the main process sends every process's prompts in one request per round and hands each its rows; the
            weights go over NCCL and need CUDA."""
        ),
    )
    kd_coef: float = field(
        default=0.1,
        metadata=field_help(
            """Weight of the KD term in the small model's update: reward = verifiable reward + `kd_coef` x KD reward
            (with `kd_mode="full_kl"`: loss = GRPO loss + `kd_coef` x the mean exact KL per small-model token). 0 makes
            the small model's update plain GRPO on its own rollouts. *Assumption*: 0.1 keeps the dense term (a
            log-ratio, typically within a few nats) below a unit of the normalised verifiable advantage."""
        ),
    )
    kd_mode: str = field(
        default="token",
        metadata=field_help(
            f"""How the large model's knowledge enters the small model's update, one of {KD_MODES}. `"token"`
            (*assumption*, default, the paper's KD reward): dense, the per-token log-ratio `log pi_large(y_t) - log
            pi_small(y_t)` of the sampled token is added to each token's advantage after the group normalisation of
            the verifiable reward. `"sequence"`: its mean over the completion is added to the verifiable reward before
            the group normalisation. `"full_kl"` (an option beside the paper's reward): no KD reward; `kd_coef` times
            the *exact* reverse KL `KL(pi_small(.|x, y_<t) || pi_large(.|x, y_<t))`, summed over the vocabulary at
            every completion position of the small model's rows and averaged over the optimizer step's small-model
            tokens, is added to the small model's loss, the large model detached (it is the teacher of this term only):
            on-policy distillation as in GKD. Its gradient reaches every vocabulary entry, not only the sampled token,
            so it is low-variance and distilled 2-6x faster than the sampled-token reward in both regimes measured,
            far apart and close (docs/codistill.md). Cost: no extra forward (both models' last hidden states come
            from the micro-step's one forward); TRL's chunked divergence kernel projects both LM heads over the small
            rows' positions in float32 tiles of 4,096 positions x 32,768 vocabulary entries (bounded memory whatever
            the batch: never the full `(tokens, vocabulary)` logits), about two extra LM-head projections per
            small-model token in the forward and four in the backward (about 8 percent of the update's compute for a
            1.5B / 7B pair), plus under FSDP2 / ZeRO-3 a gathered copy of the large model's LM head per process during
            the micro-step (152,064 x 3,584 in bf16 for a Qwen2.5-7B head: 1.1 GB). The KL runs over the heads'
            shared rows (`min` of the two vocabulary sizes). Use it when the small model should distil fast (far apart
            at the start, or a short run); keep `"token"` to reproduce the paper."""
        ),
    )
    kd_baseline: str = field(
        default="mean",
        metadata=field_help(
            f"""Baseline subtracted from the dense KD reward in `kd_mode="token"`, one of {KD_BASELINES}. `"mean"`
            (default, chosen by measurement, docs/codistill.md): the mean KD reward of the round's small-model tokens
            over every process. It leaves the expected gradient unchanged; without it (`"none"`) a small model far
            from the large one, whose every token earns a strongly negative reward, mostly pushes down whatever it
            sampled and distils far more slowly (or drifts away)."""
        ),
    )
    kd_clip: float | None = field(
        default=None,
        metadata=field_help(
            """When set, each token's KD log-ratio is clamped to `[-kd_clip, kd_clip]` before use (a guard against
            tokens the large model finds nearly impossible). `kd_mode="token"` / `"sequence"` only."""
        ),
    )
    log_kd_kl: bool = field(
        default=True,
        metadata=field_help(
            """Log `codistill/kd_kl`: the exact `KL(pi_small || pi_large)` per token over the vocabulary, averaged over
            the optimizer step's small-model tokens (on-policy: on the small model's own rollouts), the distance the
            KD term closes. Free with `kd_mode="full_kl"` (its loss term); in the other modes it is computed without
            gradient in the micro-step's forward, at the cost of about two LM-head projections per small-model token
            (a few percent of a step at paper scale). Set False to save that."""
        ),
    )
    # S2L-PO fields whose CoDistill defaults differ: the small model fills every row, importance weights on.
    mix_schedule: str = field(
        default="constant",
        metadata=field_help(
            f"""Schedule of the small model's share of each rollout group, as in S2L-PO: one of {SCHEDULES}. CoDistill
            default: `"constant"` with `mix_alpha_start=1.0`, so the large model generates nothing; rows the large
            model generates (alpha < 1) train the large model only."""
        ),
    )
    mix_steps: int | None = field(
        default=None,
        metadata=field_help(
            """`T_mix`: the number of optimizer steps during which the small model samples (S2L-PO's field). CoDistill
            default `None`: the whole run (`max_steps`). The small model learns only from its own rows, so with a
            schedule that ends before the run, it stops sampling *and training* after `mix_steps` (warned at
            start-up)."""
        ),
    )
    mix_alpha_start: float = field(
        default=1.0,
        metadata=field_help(
            """Share of each group sampled by the small model at the first step (CoDistill default 1)."""
        ),
    )
    explorer_importance_sampling: str = field(
        default="token_truncate",
        metadata=field_help(
            f"""Importance weights `pi_large / pi_small` of the small model's tokens in the large model's update, one
            of {EXPLORER_IS_MODES} (S2L-PO's field; the large model's log-probs are its own at rollout time).
            CoDistill default `"token_truncate"`: per token, clamped at `explorer_importance_sampling_clip_max`;
            `"token_mask"` zeroes tokens outside the bounds instead."""
        ),
    )
    explorer_importance_sampling_clip_max: float | None = field(
        default=2.0,
        metadata=field_help(
            """Upper bound of the importance weight (CoDistill default 2.0; truncate: clamp, mask: zero)."""
        ),
    )

    large_row_weight_bounds: list[float] | None = field(
        default=None,
        metadata=field_help(
            """`[low, high]`: bounds on each small-model row's geometric-mean importance weight `exp(mean_t log
            pi_large(y_t) / pi_small(y_t))`. Rows outside them do not train the large model (they still train the
            small one); `codistill/large_rows_kept` logs the share kept. `None` (default): every row trains the large
            model, its tokens weighted by `explorer_importance_sampling`. Keeps the large model from learning on rows
            it finds implausible, such as a weak small model's wrong answers (*assumption*, measured in
            results/miniature/codistill)."""
        ),
    )
    large_skip_zero_gradient: bool = field(
        default=False,
        metadata=field_help(
            """Skip the large model's optimizer step when its gradient is exactly zero (every large-model gradient
            absent or all zeros on every process, decided after the gradients' reduction; e.g. a step whose every
            group has equal rewards and no large-model rows pass `large_row_weight_bounds`): its weights and its
            optimizer state (Adam's moments and step count, momentum) are left exactly as they were, as the small
            model's are in a step without small rows; the small model steps as usual. Why: an optimizer steps a zero
            gradient too. AdamW's decoupled weight decay shrinks the weights at every step; its momentum carries the
            last update on for ~1/(1 - beta1) = 10 more steps; and its second moment decays during zero steps, so a
            rare weak gradient after many zero ones is divided by a small sqrt(v) and still moves every coordinate by
            ~lr. With this option a large model that receives a gradient only now and then moves only when it does.
            Skipped steps still advance `global_step` and the learning-rate schedule; `codistill/large_steps_skipped`
            logs the running count. Not available under DeepSpeed (its engine steps inside the backward, where the
            small model's mechanism keeps weights but not the optimizer state). Default False: TRL's behaviour,
            every step taken."""
        ),
    )
    # S2L-PO's explorer sampling fields: the small model samples with TRL's settings, so CoDistill leaves them unset.
    explorer_temperature: float | None = field(
        default=None,
        metadata=field_help(
            """Unused by CoDistill: the small model samples at `temperature` (its GRPO loss and the KD reward assume
            the sampling distribution). Leave unset; a value other than `temperature` is refused."""
        ),
    )
    explorer_top_p: float | None = field(
        default=None,
        metadata=field_help(
            """Unused by CoDistill (the small model samples with `top_p`); a different value is refused."""
        ),
    )
    explorer_top_k: int | None = field(
        default=None,
        metadata=field_help(
            """Unused by CoDistill (the small model samples with `top_k`); a different value is refused."""
        ),
    )
    explorer_max_tokens: int | None = field(
        default=None,
        metadata=field_help(
            """Unused by CoDistill (the small model samples up to `max_completion_length`); a different value is
            refused."""
        ),
    )

    def __post_init__(self):
        if isinstance(self.small_model_init_kwargs, str):
            try:
                self.small_model_init_kwargs = json.loads(self.small_model_init_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"small_model_init_kwargs must be a dict or a JSON object, got {self.small_model_init_kwargs!r}."
                ) from exc
        self._refuse_ignored_settings()
        if self.small_model is not None:
            self.explorer_model = self.small_model  # S2L-PO's tokenizer check then compares the two tokenizers
        # The small model is trained on its own samples: it samples with the learner's settings.
        self.explorer_temperature = self.temperature
        self.explorer_top_p = self.top_p
        self.explorer_top_k = self.top_k if self.top_k not in (0, -1, None) else None
        self.explorer_max_tokens = self.max_completion_length
        if self.mix_steps is None:
            self.mix_steps = self.max_steps if self.max_steps > 0 else WHOLE_RUN_STEPS
            if self.mix_steps == WHOLE_RUN_STEPS and self.mix_schedule != "constant":
                logger.warning(
                    "mix_schedule=%r with a run length in epochs (max_steps=%d) and mix_steps=None: the schedule is "
                    "spread over %d steps, so it barely moves; set mix_steps to the run's number of steps.",
                    self.mix_schedule,
                    self.max_steps,
                    WHOLE_RUN_STEPS,
                )
        elif isinstance(self.mix_steps, int) and 0 < self.max_steps and self.mix_steps < self.max_steps:
            logger.warning(
                "mix_steps=%d < max_steps=%d: the small model samples no rows after step %d, so it stops training "
                "there (CoDistill's default mix_steps=None keeps it sampling for the whole run).",
                self.mix_steps,
                self.max_steps,
                self.mix_steps,
            )
        super().__post_init__()
        if self.kd_mode not in KD_MODES:
            raise ValueError(f"kd_mode must be one of {KD_MODES}, got {self.kd_mode!r}.")
        if self.kd_baseline not in KD_BASELINES:
            raise ValueError(f"kd_baseline must be one of {KD_BASELINES}, got {self.kd_baseline!r}.")
        if not math.isfinite(self.kd_coef) or self.kd_coef < 0:
            raise ValueError(f"kd_coef must be a finite number >= 0, got {self.kd_coef!r}.")
        bounds = self.large_row_weight_bounds
        if bounds is not None and (len(bounds) != 2 or not math.isfinite(bounds[0]) or not 0 <= bounds[0] < bounds[1]):
            raise ValueError(
                f"large_row_weight_bounds must be [low, high] with 0 <= low < high (high may be inf), got {bounds!r}."
            )
        if self.kd_clip is not None and not self.kd_clip > 0:
            raise ValueError(f"kd_clip must be > 0 or None, got {self.kd_clip!r}.")
        if self.kd_clip is not None and self.kd_mode == "full_kl":
            raise ValueError(
                f"kd_clip={self.kd_clip!r} does nothing with kd_mode='full_kl' (the exact KL has no sampled-token "
                "log-ratio to clamp): remove kd_clip, or use kd_mode='token'."
            )
        if self.small_learning_rate is not None and not self.small_learning_rate > 0:
            raise ValueError(f"small_learning_rate must be > 0, got {self.small_learning_rate!r}.")
        for name in ("small_weight_decay", "small_max_grad_norm"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        if self.small_lr_scheduler_type is not None:
            self._check_small_scheduler()
        for name, why in (
            ("cast_lm_head_to_fp32", "the small model's LM head is not cast"),
            ("use_liger_kernel", "Liger patches the large model's forward only"),
            ("use_transformers_paged", "the small model samples with transformers' generate"),
            ("use_transformers_continuous_batching", "the small model samples with transformers' generate"),
            ("use_adaptive_entropy", "its controller would see both models' entropies"),
        ):
            if getattr(self, name, False):
                raise ValueError(f"CoDistill does not support {name}=True ({why}); set it to False.")
        if self.beta != 0.0:
            raise ValueError(
                f"CoDistill supports beta=0.0 only (no reference model for the small model), got beta={self.beta!r}."
            )
        if self.small_use_vllm:
            self._check_small_vllm()

    def _check_small_vllm(self) -> None:
        """Refuse `vllm_*` settings the small model's engine cannot run with, before any model is loaded."""
        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(
                f"vllm_mode must be 'colocate' or 'server' with small_use_vllm=True, got {self.vllm_mode!r}."
            )
        if self.vllm_mode == "server":
            url = self.vllm_server_base_url
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"vllm_server_base_url must start with http:// or https:// (small_use_vllm, server mode), got "
                    f"{url!r}."
                )
            if url is None and not self.vllm_server_host:
                raise ValueError(
                    "small_use_vllm with vllm_mode='server' needs the server's address: set vllm_server_base_url or "
                    f"vllm_server_host (got vllm_server_host={self.vllm_server_host!r})."
                )
            for name in ("vllm_group_port",) if url is not None else ("vllm_server_port", "vllm_group_port"):
                port = getattr(self, name)
                if not isinstance(port, int) or not 0 < port < 65536:
                    raise ValueError(f"{name} must be a TCP port (1-65535), got {port!r}.")
            if not self.vllm_server_timeout > 0:
                raise ValueError(f"vllm_server_timeout must be > 0, got {self.vllm_server_timeout!r}.")
        else:
            # TRL's tensor-parallel colocate engines gather equal row counts from each rank of a group, while S2L-PO's
            # placement gives processes unequal numbers of explorer rows whenever alpha < 1.
            if self.vllm_tensor_parallel_size != 1:
                raise ValueError(
                    "small_use_vllm with vllm_mode='colocate' supports vllm_tensor_parallel_size=1 only (each process "
                    f"samples its own rows with its own engine), got {self.vllm_tensor_parallel_size!r}."
                )
            if not 0 < self.vllm_gpu_memory_utilization <= 1:
                raise ValueError(
                    f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization!r}."
                )
        if self.vllm_max_model_length is not None and self.vllm_max_model_length <= self.max_completion_length:
            raise ValueError(
                f"vllm_max_model_length ({self.vllm_max_model_length}) must exceed max_completion_length "
                f"({self.max_completion_length}): it holds the prompt and the completion."
            )

    def _refuse_ignored_settings(self) -> None:
        """S2L-PO settings CoDistill never reads, refused when set (a silently ignored setting is a wrong run)."""
        defaults = {f.name: f for f in fields(S2LConfig)}
        for name, f in defaults.items():
            if not name.startswith("explorer_") or name in _USED_EXPLORER_FIELDS or name in _SAMPLING_FIELDS:
                continue
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            value = getattr(self, name)
            if value != default:
                raise ValueError(
                    f"{name}={value!r} is ignored by CoDistill-GRPO: the small model is trained in this process and "
                    f"samples its own rows, so S2L-PO's frozen-explorer settings do not apply. Remove {name} (its "
                    f"default is {default!r})."
                )
        for name, trl_name in _SAMPLING_FIELDS.items():
            value, used = getattr(self, name), getattr(self, trl_name)
            if name == "explorer_top_k" and value in (-1, 0) and used in (-1, 0, None):
                continue
            if value is not None and value != used:
                raise ValueError(
                    f"{name}={value!r} differs from {trl_name}={used!r}: CoDistill's small model samples with "
                    f"{trl_name} (its GRPO loss and KD reward assume that distribution). Set {trl_name} instead and "
                    f"leave {name} unset."
                )
        if self.explorer_model and self.small_model and self.explorer_model != self.small_model:
            raise ValueError(
                f"explorer_model={self.explorer_model!r} differs from small_model={self.small_model!r}: in CoDistill "
                "the explorer is the small model. Leave explorer_model unset."
            )

    def _check_small_scheduler(self) -> None:
        from transformers import SchedulerType

        try:
            name = SchedulerType(self.small_lr_scheduler_type).value
        except ValueError as exc:
            raise ValueError(
                f"small_lr_scheduler_type must be a transformers SchedulerType, got {self.small_lr_scheduler_type!r}."
            ) from exc
        # Two schedules in one optimizer run as one LambdaLR with a multiplier per parameter group.
        if name != str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)) and name in (
            "reduce_lr_on_plateau",
            "greedy",
        ):
            raise ValueError(
                f"small_lr_scheduler_type={name!r} cannot run beside the large model's {self.lr_scheduler_type!r} "
                "schedule in one optimizer (it is not a per-step multiplier); use the same schedule for both or a "
                "step-based one (constant, linear, cosine, ...)."
            )

    # Effective small-model optimizer settings (the large model's where unset).
    @property
    def small_lr(self) -> float:
        return self.learning_rate if self.small_learning_rate is None else self.small_learning_rate

    @property
    def small_decay(self) -> float:
        return self.weight_decay if self.small_weight_decay is None else self.small_weight_decay

    @property
    def small_clip(self) -> float:
        return self.max_grad_norm if self.small_max_grad_norm is None else self.small_max_grad_norm

    @property
    def small_scheduler(self) -> str:
        name = self.lr_scheduler_type if self.small_lr_scheduler_type is None else self.small_lr_scheduler_type
        return str(getattr(name, "value", name))


CoDistillConfig.__doc__ = (CoDistillConfig.__doc__ or "") + parameter_docs(CoDistillConfig, _SECTIONS)


def parameter_count(model: Any) -> int | None:
    """Parameters of a model object, or of a model id / path read from its config alone (built on the meta device:
    no weights are read); ``None`` when the config cannot be read here."""
    import torch

    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    if not isinstance(model, str):
        return None
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model)
        with torch.device("meta"):
            shell = AutoModelForCausalLM.from_config(config)
    except Exception:  # no config here (a Hub id offline, a custom architecture): the load itself will tell
        return None
    return sum(p.numel() for p in shell.parameters())


def check_model_sizes(model: Any, small_model: Any) -> None:
    """The small model must be the smaller one, checked from the two configs before any weights are loaded.

    Larger is refused: CoDistill's roles (the small model samples and distils from the large one, the large one
    learns from the small one's rows with importance weights) would be reversed, almost surely two swapped arguments.
    Equal is warned about, not refused: two models of one size co-trained (e.g. two copies of a checkpoint) is a
    legitimate ablation, but the small model then saves nothing.
    """
    large_n, small_n = parameter_count(model), parameter_count(small_model)
    if large_n is None or small_n is None or small_n < large_n:
        return
    if small_n > large_n:
        raise InputError(
            f"small_model={_name(small_model)!r} has {small_n:,} parameters, more than model={_name(model)!r} "
            f"({large_n:,}): CoDistill's small model samples the rollouts and distils from the large one. Swap the "
            "two (model is the large one, small_model the small one)."
        )
    logger.warning(
        "small_model=%r has as many parameters as model=%r (%s): both are co-trained, but the small model saves "
        "nothing over sampling with the large one. Use a smaller model of the same family unless this is meant.",
        _name(small_model),
        _name(model),
        f"{large_n:,}",
    )


def _name(model: Any) -> str:
    return model if isinstance(model, str) else str(getattr(getattr(model, "config", None), "_name_or_path", model))
