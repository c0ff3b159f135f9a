"""One optimizer and one schedule over both models of a `CoDistillModule`, each model with its own settings.

A decay and a no-decay parameter group per model carry that model's learning rate and weight decay
(`learning_rate` / `weight_decay` for the large model, `small_learning_rate` / `small_weight_decay` for the small
one); the schedule is one `LambdaLR` with one multiplier per group when the two models' schedules differ
(`small_lr_scheduler_type`). `roles` lists the model of each parameter group, in order.
"""

from __future__ import annotations

from typing import Any

import torch

from ..preflight import InputError
from .config import CoDistillConfig
from .module import LARGE, SMALL, CoDistillModule


def create_optimizer(trainer: Any, module: CoDistillModule) -> tuple[torch.optim.Optimizer, list[str]]:
    """The optimizer of both models, of the configured type (`optim` or `optimizer_cls_and_kwargs`), and the role
    of each of its parameter groups."""
    a: CoDistillConfig = trainer.args
    decay_names = set(trainer.get_decay_parameter_names(module))
    groups, roles = [], []
    for role, lr, decay in ((LARGE, a.learning_rate, a.weight_decay), (SMALL, a.small_lr, a.small_decay)):
        named = [(f"{role}.{n}", p) for n, p in module.submodule(role).named_parameters() if p.requires_grad]
        for decayed in (True, False):
            params = [p for n, p in named if (n in decay_names) == decayed]
            if params:
                groups.append({"params": params, "weight_decay": decay if decayed else 0.0, "lr": lr})
                roles.append(role)
    if trainer.optimizer_cls_and_kwargs is not None:
        optimizer_cls, optimizer_kwargs = trainer.optimizer_cls_and_kwargs
    else:
        optimizer_cls, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(a, module)
    own_groups = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
    if own_groups:
        raise InputError(
            f"optim={a.optim!r} builds its own parameter groups ({sorted(own_groups)}), which would drop the small "
            "model's learning rate and weight decay: CoDistill supports optimizers that take parameter groups "
            "(adamw_torch, adamw_torch_fused, adafactor, sgd, the bitsandbytes Adam variants, ...)."
        )
    return optimizer_cls(groups, **optimizer_kwargs), roles


def same_schedule(args: CoDistillConfig) -> bool:
    """Whether both models follow one schedule (Transformers' own scheduler then serves both)."""
    return args.small_scheduler == _schedule_name(args.lr_scheduler_type)


def create_scheduler(
    args: CoDistillConfig, optimizer: torch.optim.Optimizer, roles: list[str], num_training_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Each parameter group follows its model's schedule (same warm-up), stepped once per optimizer step."""
    lambdas = {
        LARGE: _schedule_lambda(args, _schedule_name(args.lr_scheduler_type), num_training_steps),
        SMALL: _schedule_lambda(args, args.small_scheduler, num_training_steps),
    }
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [lambdas[r] for r in roles])


def role_lr(optimizer: torch.optim.Optimizer, roles: list[str], role: str) -> float:
    """The current learning rate of the `role` model (its first parameter group's)."""
    for group, r in zip(optimizer.param_groups, roles):
        if r == role:
            return float(group["lr"])
    return 0.0


def freeze_role_lr(optimizer: torch.optim.Optimizer, roles: list[str], role: str) -> None:
    """A learning rate of 0 for the `role` model's groups until the scheduler's next step sets it back."""
    for group, r in zip(optimizer.param_groups, roles):
        if r == role:
            group["lr"] = 0.0


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


__all__ = ["create_optimizer", "create_scheduler", "freeze_role_lr", "role_lr", "same_schedule"]
