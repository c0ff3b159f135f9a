"""`CoDistillConfig`: `S2LConfig` plus the trainable small model, its optimizer and the KD reward."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..config import S2LConfig, field_help, parameter_docs
from ..mixing import EXPLORER_IS_MODES
from .objectives import KD_MODES

_SECTIONS = {
    "small_model": "Parameters that control the small model and its optimizer",
    "kd_coef": "Parameters that control the small model's KD reward",
    "mix_schedule": "S2L-PO parameters whose CoDistill defaults differ (the large model's side)",
}


@dataclass
class CoDistillConfig(S2LConfig):
    r"""
    Configuration class for the [`CoDistillTrainer`]: CoDistill-GRPO, a large and a small model trained in one run.

    The small model samples the rollouts (all of them by default: `alpha = 1`, constant). It learns by GRPO on its
    own rollouts with reward = verifiable reward + `kd_coef` x KD reward from the large model. The large model is the
    S2L-PO learner with a *trainable* explorer (the small model): it learns by GRPO on those rollouts with per-token
    importance weights `pi_large / pi_small` (S2L-PO's `explorer_importance_sampling`, truncated at 2 by default).

    Every [`S2LConfig`] / [`~trl.GRPOConfig`] parameter keeps its meaning for the large model (`model`,
    `learning_rate`, ...). The small model samples with TRL's sampling settings (`temperature`, `top_p`, `top_k`,
    `max_completion_length`): it is trained on its own samples, so `explorer_temperature` / `explorer_top_p` /
    `explorer_top_k` are set from them, and `explorer_mode` / `explorer_server_*` / `explorer_rollouts` are unused.

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
    kd_coef: float = field(
        default=0.1,
        metadata=field_help(
            """Weight of the KD reward in the small model's reward: reward = verifiable reward + `kd_coef` x KD
            reward. 0 makes the small model's update plain GRPO on its own rollouts. *Assumption*: 0.1 keeps the
            dense term (a log-ratio, typically within a few nats) below a unit of the normalised verifiable
            advantage."""
        ),
    )
    kd_mode: str = field(
        default="token",
        metadata=field_help(
            f"""How the KD reward enters the small model's update, one of {KD_MODES}. `"token"` (*assumption*,
            default): dense, the per-token log-ratio `log pi_large(y_t) - log pi_small(y_t)` is added to each token's
            advantage after the group normalisation of the verifiable reward. `"sequence"`: its mean over the
            completion is added to the verifiable reward before the group normalisation."""
        ),
    )
    kd_clip: float | None = field(
        default=None,
        metadata=field_help(
            """When set, each token's KD log-ratio is clamped to `[-kd_clip, kd_clip]` before use (a guard against
            tokens the large model finds nearly impossible)."""
        ),
    )
    # S2L-PO fields whose CoDistill defaults differ: the small model fills every row, importance weights on.
    mix_schedule: str = field(
        default="constant",
        metadata=field_help(
            """Schedule of the small model's share of each rollout group, as in S2L-PO (`"linear"`, `"cosine"`,
            `"constant"`, `"step"`). CoDistill default: `"constant"` with `mix_alpha_start=1.0`, so the large model
            generates nothing; rows the large model generates (alpha < 1) train the large model only."""
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

    def __post_init__(self):
        if isinstance(self.small_model_init_kwargs, str):
            try:
                self.small_model_init_kwargs = json.loads(self.small_model_init_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"small_model_init_kwargs must be a dict or a JSON object, got {self.small_model_init_kwargs!r}."
                ) from exc
        if self.small_model is not None and not self.explorer_model:
            self.explorer_model = self.small_model  # S2L-PO's tokenizer check then compares the two tokenizers
        super().__post_init__()
        # The small model is trained on its own samples: it samples with the learner's settings.
        self.explorer_temperature = self.temperature
        self.explorer_top_p = self.top_p
        self.explorer_top_k = self.top_k if self.top_k not in (0, -1) else None
        self.explorer_max_tokens = self.max_completion_length
        if self.kd_mode not in KD_MODES:
            raise ValueError(f"kd_mode must be one of {KD_MODES}, got {self.kd_mode!r}.")
        if not math.isfinite(self.kd_coef) or self.kd_coef < 0:
            raise ValueError(f"kd_coef must be a finite number >= 0, got {self.kd_coef!r}.")
        if self.kd_clip is not None and not self.kd_clip > 0:
            raise ValueError(f"kd_clip must be > 0 or None, got {self.kd_clip!r}.")
        if self.small_learning_rate is not None and not self.small_learning_rate > 0:
            raise ValueError(f"small_learning_rate must be > 0, got {self.small_learning_rate!r}.")
        for name in ("small_weight_decay", "small_max_grad_norm"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        if self.small_lr_scheduler_type is not None:
            from transformers import SchedulerType

            try:
                SchedulerType(self.small_lr_scheduler_type)
            except ValueError as exc:
                raise ValueError(
                    f"small_lr_scheduler_type must be a transformers SchedulerType, got "
                    f"{self.small_lr_scheduler_type!r}."
                ) from exc
        if self.beta != 0.0:
            raise ValueError(
                f"CoDistill supports beta=0.0 only (no reference model for the small model), got beta={self.beta!r}."
            )

    # Effective small-model optimizer settings (the large model's where unset).
    @property
    def small_lr(self) -> float:
        return self.learning_rate if self.small_learning_rate is None else self.small_learning_rate

    @property
    def small_scheduler(self) -> str:
        name = self.lr_scheduler_type if self.small_lr_scheduler_type is None else self.small_lr_scheduler_type
        return str(getattr(name, "value", name))


CoDistillConfig.__doc__ = (CoDistillConfig.__doc__ or "") + parameter_docs(CoDistillConfig, _SECTIONS)
