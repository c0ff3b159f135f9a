"""`CoDistillModule`: the large and the small model as one trainable `nn.Module`, so that one engine trains both.

TRL's PPO trainer wraps its policy and value models in one module for the same reason: accelerate then prepares one
model and one optimizer, and DDP, DeepSpeed ZeRO-2/3 and FSDP2 shard, all-reduce, clip, scale (fp16) and
checkpoint both models along their standard path. Two separately prepared models cannot do that (one accelerator
builds one DeepSpeed engine, and a second optimizer shares the first one's fp16 scaler).

The module is the *large* model to TRL and Transformers (its `forward`, `generate` and `config` are the large model's)
until a caller routes it to the small one:

    with module.routed("small"):
        model(**inputs)  # through DDP / DeepSpeed / FSDP2: the small model's forward, hooks and collectives included

Routing by an attribute instead of an argument lets TRL's own code (`_get_per_token_logps_and_entropies`,
`_compute_loss`, generation) run on either model unchanged; every call runs in the trainer's thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .full_kl import Teacher, head_values, last_hidden_state

LARGE, SMALL = "large", "small"
ROLES = (LARGE, SMALL)


class CoDistillModule(nn.Module):
    """The large model (`.large`) and the small model (`.small`) of a CoDistill run as one module.

    `forward` and `generate` run the model selected by `routed(role)` (the large one by default). Gradient
    checkpointing, weight tying and dropout switches apply to both. `_no_split_modules` lists both models' layer
    classes *and* the two model classes, so that FSDP2's transformer-based wrapping makes each model a unit of its
    own: its parameters are then gathered only when that model runs (generation included).
    """

    def __init__(self, large: nn.Module, small: nn.Module):
        super().__init__()
        self.large = large
        self.small = small
        self._role = LARGE
        self.forward_seconds: dict[str, float] = {}  # each model's share of the last two-model forward
        # Transformers and TRL read the trained model's config (model card, special tokens): the large model's.
        self.config = large.config
        names = {type(large).__name__, type(small).__name__}
        for model in (large, small):
            names.update(getattr(model, "_no_split_modules", None) or [])
        self._no_split_modules = sorted(names)

    # ------------------------------------------------------------------ routing
    @property
    def role(self) -> str:
        return self._role

    @contextlib.contextmanager
    def routed(self, role: str) -> Iterator[nn.Module]:
        """Run `forward` / `generate` on the `role` model (`"large"` or `"small"`) inside the block."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}.")
        previous, self._role = self._role, role
        try:
            yield self.submodule(role)
        finally:
            self._role = previous

    def submodule(self, role: str) -> nn.Module:
        return self.small if role == SMALL else self.large

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        return list(self.submodule(role).parameters())

    def forward(
        self, *args: Any, codistill_calls: dict[str, dict] | None = None, kd_kl: str | None = None, **kwargs: Any
    ) -> Any:
        """The routed model's forward; with `codistill_calls={"large": kwargs, "small": kwargs}`, both models' in
        one call, returned as a dict by role (one forward per micro-step for DDP's reducer and ZeRO / FSDP hooks).

        `kd_kl="loss"` / `"metric"` (both calls given): the small model's output also holds `kd_kl`, the exact
        per-position KL(small || large) over the vocabulary (`full_kl.py`), with gradient to the small model / without
        any. The large model then runs first and hands the small one its last hidden states and LM head."""
        if codistill_calls is None:
            return self.submodule(self._role)(*args, **kwargs)
        outputs, self.forward_seconds = {}, {}
        teacher = None
        for role in sorted(codistill_calls, key=ROLES.index):
            call = codistill_calls[role]
            start = time.perf_counter()  # host time: on GPUs the kernels may still run (the split is indicative)
            if kd_kl and role == LARGE:
                with last_hidden_state(self.large) as hidden:
                    outputs[role] = self.large(**call)
                teacher = Teacher(hidden[-1].detach(), head_values(self.large), train_small=kd_kl == "loss")
            elif kd_kl and role == SMALL:
                outputs[role] = self.small(**call, codistill_teacher=teacher)
            else:
                outputs[role] = self.submodule(role)(**call)
            self.forward_seconds[role] = time.perf_counter() - start
        return outputs

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The routed model's `generate`. Under FSDP2 Transformers registers this method with FSDP, so the root's
        hooks run first and only the generating model's units gather their parameters; since every decoding step is
        then collective, processes keep decoding until all are done (`synced_gpus`, which transformers turns on by
        itself only for ZeRO-3 and its own FSDP2 set-up, not accelerate's)."""
        if "synced_gpus" not in kwargs and self._fsdp_sharded():
            kwargs["synced_gpus"] = True
        return self.submodule(self._role).generate(*args, **kwargs)

    def _fsdp_sharded(self) -> bool:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return False
        if torch.distributed.get_world_size() < 2:
            return False
        from torch.distributed.fsdp import FSDPModule

        return any(isinstance(m, FSDPModule) for m in self.modules())

    # ------------------------------------------------------------------ what Transformers / TRL / accelerate call
    @property
    def generation_config(self):
        return getattr(self.large, "generation_config", None)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "is_gradient_checkpointing", False) for m in (self.large, self.small))

    @property
    def supports_gradient_checkpointing(self) -> bool:
        return all(getattr(m, "supports_gradient_checkpointing", False) for m in (self.large, self.small))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        for model in (self.large, self.small):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        for model in (self.large, self.small):
            model.gradient_checkpointing_disable()

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        # accelerate's FSDP2 loading moves the module to `meta` and back, and re-ties weights through this method.
        for model in (self.large, self.small):
            if hasattr(model, "tie_weights"):
                model.tie_weights(*args, **kwargs)

    def role_state_dict(self, state_dict: dict[str, torch.Tensor], role: str) -> dict[str, torch.Tensor]:
        """The `role` model's entries of a state dict of this module, with the `large.` / `small.` prefix removed."""
        prefix = f"{role}."
        return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ calling the module from TRL's loss
def forward_call(
    inputs: dict[str, Any],
    completion_mask: torch.Tensor,
    aux_loss: bool = False,
    rows: int | None = None,
    tokens: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments TRL's `_get_per_token_logps_and_entropies` passes to the model for this batch
    (`rows` / `tokens`: only the first rows and completion tokens, for a zero-weight run of a model)."""
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
    if aux_loss:
        call["output_router_logits"] = True
    return call


class Replay:
    """Stands in for the model in TRL's `_compute_loss`: returns the output of the module's one forward of this
    micro-step (TRL's loss calls its model once per micro-batch, with the inputs checked here)."""

    def __init__(self, output: Any, input_ids: torch.Tensor):
        self.output = output
        self.shape = tuple(input_ids.shape)

    def __call__(self, **kwargs: Any) -> Any:
        if tuple(kwargs["input_ids"].shape) != self.shape:
            raise RuntimeError(
                f"CoDistill's forward ran on inputs of shape {self.shape}, TRL's loss asks for "
                f"{tuple(kwargs['input_ids'].shape)}: the installed TRL builds its loss inputs differently."
            )
        return self.output


__all__ = ["LARGE", "ROLES", "SMALL", "CoDistillModule", "Replay", "forward_call"]
