"""Plumbing of the exact per-position KL(small || large) (`kd_mode="full_kl"` and the `codistill/kd_kl` metric).

The KL needs both models' last hidden states and LM heads at the small model's completion positions. Both come from
the module's one forward of the micro-step, so no extra forward runs:

* the large model runs first; a forward hook on its backbone keeps its last hidden states (detached), and its LM head
  is read as plain values (gathered under FSDP2 / ZeRO-3: the large model is the teacher of this term, no gradient);
* the small model's forward (patched by `add_full_kl_output`, over TRL's fused LM head) computes the KL *inside* the
  small model's own forward, where FSDP2 holds its parameters unsharded and ZeRO-3's hooks are armed, so the gradient
  of its LM head and backbone reaches the engine's reduction like any other; the KL per position is returned in the
  output as `kd_kl`, `(B, T - 1)` like TRL's `log_probs` (zero outside the labelled positions).

The arithmetic is `objectives.reverse_kl_per_token` (TRL's chunked divergence kernel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from trl.trainer.utils import FusedCausalLMOutput

from ..preflight import InputError
from .objectives import LMHead, reverse_kl_per_token

logger = logging.getLogger(__name__)


@dataclass
class KDOutput(FusedCausalLMOutput):
    """TRL's fused-head output plus `kd_kl`, the exact per-position KL (`(B, T - 1)`, 0 outside the labels). A field
    of its own, not an extra key: FSDP2 hooks its pre-backward (the re-gathering of the model's parameters) only on
    the dataclass fields of a module's output, and the KL's backward reads the small model's LM head."""

    kd_kl: torch.Tensor | None = None


@dataclass
class Teacher:
    """What the small model's forward needs from the large one: its last hidden states `(B, T, H_large)` on the same
    inputs and its LM head (detached values). `train_small=False`: the KL is computed for the metric only, without
    gradient."""

    hidden: torch.Tensor
    head: LMHead
    train_small: bool


def _unwrapped(model: nn.Module) -> nn.Module:
    from accelerate.utils import is_peft_model

    return model.get_base_model() if is_peft_model(model) else model


def logit_transform(config: Any) -> tuple[float, float | None]:
    """`(logit_scale, final_logit_softcapping)` of a model family, read from its config as TRL's fused LM head reads
    them (`trl.trainer.utils.add_fused_lm_head`), so the KL sees the distributions the two models' losses see."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(text, "logit_scale", None)
    if scale is None:
        scale = getattr(text, "output_multiplier", None)
    if scale is None:
        scale = getattr(text, "lm_head_multiplier", None)
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = text.logits_scaling if text.model_type == "hyperclovax" else 1 / text.logits_scaling
    return (1.0 if scale is None else scale), getattr(text, "final_logit_softcapping", None)


def head_rows(model: nn.Module) -> int:
    """Vocabulary rows of a model's LM head (ZeRO-3 keeps the full shape in `ds_shape`)."""
    return LMHead(_unwrapped(model).get_output_embeddings().weight).rows


def _head(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> LMHead:
    scale, softcap = logit_transform(model.config)
    return LMHead(weight=weight, bias=bias, logit_scale=scale, softcap=softcap)


@torch.no_grad()
def head_values(model: nn.Module) -> LMHead:
    """The model's LM head as plain detached tensors, whatever the engine: FSDP2's sharded DTensor gathered with
    `full_tensor()`, a ZeRO-3 partitioned parameter gathered and copied (collectives: every process calls this), a
    plain parameter detached (no copy). The copies cost one LM head (V x H) per process until the backward is done."""
    head = _unwrapped(model).get_output_embeddings()
    weight, bias = head.weight, head.bias
    if hasattr(weight, "ds_id"):  # DeepSpeed ZeRO-3
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        # TRL's gather skips a head ZeRO-3 keeps available (a persistent parameter, or tied embeddings still active
        # in the embedding module), which a plain `GatheredParameters` would try to partition again on exit.
        with maybe_gather_lm_head_ctx(weight, bias):
            weight, bias = (None if p is None else p.detach().clone() for p in (weight, bias))
        for copy in (weight, bias):
            if copy is not None:
                # TRL's kernel gathers any head it is given under ZeRO-3 (`maybe_gather_lm_head_ctx` reads
                # `ds_status`): these copies are whole already.
                copy.ds_status = ZeroParamStatus.AVAILABLE
        return _head(model, weight, bias)
    from torch.distributed.tensor import DTensor

    weight, bias = (p.full_tensor() if isinstance(p, DTensor) else p for p in (weight, bias))
    return _head(model, weight.detach(), None if bias is None else bias.detach())


@contextlib.contextmanager
def last_hidden_state(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, the model's backbone output (`last_hidden_state`, after the final norm: what the LM head
    projects) of its forward is appended to the yielded list."""
    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = _unwrapped(model).base_model.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def add_full_kl_output(model: nn.Module, temperature: float) -> None:
    """Patch a model that has TRL's fused LM head (`add_fused_lm_head`, applied first) so that
    `model(..., fused_lm_head=True, codistill_teacher=Teacher(...))` also returns `kd_kl`: the exact per-position
    KL(model || teacher) at every labelled position, computed inside this forward. Without `codistill_teacher` the
    forward is TRL's."""
    target = _unwrapped(model)
    fused_forward = target.forward

    @functools.wraps(type(target).forward)
    def forward(self, *args, codistill_teacher: Teacher | None = None, **kwargs):
        if codistill_teacher is None:
            return fused_forward(*args, **kwargs)
        with last_hidden_state(self) as captured:
            output = fused_forward(*args, **kwargs)
        mask = output.label_mask
        hidden = captured[-1][:, :-1]
        head = self.get_output_embeddings()
        weight, bias = head.weight, head.bias
        from torch.distributed.tensor import DTensor

        if isinstance(weight, DTensor):  # as TRL's fused head: a head FSDP2 left sharded is gathered once
            weight = weight.full_tensor()
            bias = bias.full_tensor() if bias is not None else None
        teacher = codistill_teacher
        with torch.set_grad_enabled(teacher.train_small and torch.is_grad_enabled()):
            kl = reverse_kl_per_token(
                hidden[mask] if teacher.train_small else hidden[mask].detach(),
                _head(self, weight, bias),
                teacher.hidden[:, :-1][mask],
                teacher.head,
                temperature,
            )
        fields = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
        return KDOutput(**fields, kd_kl=kl.new_zeros(mask.shape).masked_scatter(mask, kl))

    target.forward = types.MethodType(forward, target)


def kd_kl_use(large: nn.Module, small: nn.Module, kd_mode: str, log_kd_kl: bool) -> str | None:
    """How each micro-step computes the exact KL: `"loss"` (`kd_mode="full_kl"`), `"metric"` (`log_kd_kl`) or None.

    Heads of different sizes share their first rows; only a small model whose head has more rows than the large
    model's and is partitioned by ZeRO-3 (it cannot be cut before the kernel gathers it) has no exact KL."""
    large_rows, small_rows = head_rows(large), head_rows(small)
    partitioned = hasattr(_unwrapped(small).get_output_embeddings().weight, "ds_shape")
    if small_rows > large_rows and partitioned:
        reason = (
            f"the small model's LM head has more vocabulary rows ({small_rows}) than the large model's ({large_rows}) "
            "and ZeRO-3 partitions it, so it cannot be cut to the shared rows"
        )
        if kd_mode == "full_kl":
            raise InputError(
                f"kd_mode='full_kl' cannot run here: {reason}. Use kd_mode='token', or launch under DDP, ZeRO-2 or "
                "FSDP2."
            )
        if log_kd_kl:
            logger.warning("codistill/kd_kl is not logged: %s (log_kd_kl=False silences this).", reason)
        return None
    if kd_mode == "full_kl":
        return "loss"
    return "metric" if log_kd_kl else None


__all__ = [
    "KDOutput",
    "Teacher",
    "add_full_kl_output",
    "head_rows",
    "head_values",
    "kd_kl_use",
    "last_hidden_state",
    "logit_transform",
]
