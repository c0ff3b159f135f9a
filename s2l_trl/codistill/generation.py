"""Sampling one model of a `CoDistillModule` with transformers, under whatever engine trains the module.

`generation_model(trainer, role)` hands out a model to call `.generate` on, gathering only the parameters of the model
that generates:

* one process / DDP: the routed submodule itself;
* DeepSpeed ZeRO-3 with `ds3_gather_for_generation` (TRL's default): that submodule's parameters gathered at once and
  ZeRO's hooks removed while it decodes (what TRL's `unwrap_model_for_generation` does for the whole model);
* FSDP2, or ZeRO-3 without the gather: generation through the module's root (`CoDistillModule.generate`, which
  Transformers registers with FSDP), each layer gathered as it runs; `synced_gpus` keeps every process decoding
  until all are done, since each step is collective.

Under FSDP2 and ZeRO-3 (gathered or not) generating is collective, so every process generates, a throw-away row
where it holds none (`collective_generation`).

`sample_completions` is the one transformers sampling routine of CoDistill (the small model's rollouts): TRL's
transformers path (left-padded prompts, the trainer's `generation_config`, torch's global generator, rows cut after
their first EOS), so a CoDistill run with `kd_coef = 0` draws what `GRPOTrainer` on the small model draws.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .module import CoDistillModule


def _backend(trainer):
    from trl.distributed import DistributedBackend

    return DistributedBackend(trainer.accelerator)


def is_sharded(trainer) -> bool:
    """Whether the module's parameters are sharded across processes (ZeRO-3 or FSDP)."""
    backend = _backend(trainer)
    return backend.is_zero3 or backend.is_fsdp


def collective_generation(trainer) -> bool:
    """Whether generating is collective, so that every process must generate (a throw-away row where it holds none):
    under FSDP2 each decoding step gathers parameters; under ZeRO-3 so it does without `ds3_gather_for_generation`,
    and with it (TRL's default) the gather before decoding is one, and Transformers decodes with `synced_gpus` (each
    step reports whether the process is done)."""
    backend = _backend(trainer)
    if trainer.accelerator.num_processes < 2:
        return False
    return backend.is_fsdp or backend.is_zero3


def gathers_one_model_for_generation(trainer) -> bool:
    """Whether `generation_model` gathers the generating model's parameters whole before it decodes (ZeRO-3 with
    `ds3_gather_for_generation`), where TRL's own generation path gathers the whole module, both models."""
    return _backend(trainer).is_zero3 and bool(trainer.args.ds3_gather_for_generation)


@contextlib.contextmanager
def generation_model(trainer, role: str) -> Iterator[Any]:
    """A model whose `generate` samples the `role` model of `trainer.codistill`, gradient checkpointing off."""
    module: CoDistillModule = trainer.codistill
    sub = module.submodule(role)
    checkpointing = bool(getattr(sub, "is_gradient_checkpointing", False))
    if checkpointing:  # with checkpointing on, transformers decodes without its KV cache
        sub.gradient_checkpointing_disable()
    backend = _backend(trainer)
    try:
        with module.routed(role):
            if gathers_one_model_for_generation(trainer):
                import deepspeed
                from trl.models.utils import add_hooks, remove_hooks

                with deepspeed.zero.GatheredParameters(list(sub.parameters())):
                    remove_hooks(trainer.model_wrapped)
                    try:
                        yield sub
                    finally:
                        add_hooks(trainer.model_wrapped)
            elif backend.is_fsdp or backend.is_zero3:
                yield module
            else:
                yield sub
    finally:
        if checkpointing:
            sub.gradient_checkpointing_enable(gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)


@torch.no_grad()
def sample_completions(trainer, role: str, rows: list[list[int]]) -> list[list[int]]:
    """One completion per prompt row (token ids, cut after the first EOS), sampled by the `role` model.

    When generating is collective (FSDP2, ZeRO-3), a process without rows still decodes one throw-away row, so that
    the others are not left waiting in a collective (as S2L-PO's learner path does).
    """
    from trl.trainer.utils import pad

    collective = collective_generation(trainer)
    if not rows and not collective:
        return []
    tokenizer = trainer._tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else trainer.eos_token_ids[0]
    prompts = [torch.tensor(r, dtype=torch.long) for r in (rows or [[trainer.eos_token_ids[0]]])]
    device = trainer.accelerator.device
    input_ids = pad(prompts, padding_value=pad_id, padding_side="left", pad_to_multiple_of=trainer.pad_to_multiple_of)
    attention_mask = pad(
        [torch.ones_like(p) for p in prompts],
        padding_value=0,
        padding_side="left",
        pad_to_multiple_of=trainer.pad_to_multiple_of,
    )
    kwargs = {"synced_gpus": True} if collective else {}
    with generation_model(trainer, role) as model:
        sequences = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=trainer.generation_config,
            **kwargs,
        )
    if not rows:
        return []
    completions = sequences[:, input_ids.size(1) :]
    # Keep each row up to and including its first EOS (TRL's cut), vectorised.
    is_eos = torch.isin(completions, torch.tensor(trainer.eos_token_ids, device=completions.device))
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), completions.size(1))
    lengths = (first + is_eos.any(dim=1).long()).clamp(max=completions.size(1)).tolist()
    completions = completions.cpu().tolist()
    return [c[:n] for c, n in zip(completions, lengths)]


__all__ = [
    "collective_generation",
    "gathers_one_model_for_generation",
    "generation_model",
    "is_sharded",
    "sample_completions",
]
