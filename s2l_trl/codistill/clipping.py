"""Each model of a `CoDistillModule` clipped by its own gradient norm, under every engine.

Transformers clips the whole trained module by one norm; CoDistill clips the large model by `max_grad_norm` and the
small one by `small_max_grad_norm`, each by its own norm, so that neither model's step is scaled by the other's
gradient. Under DDP / FSDP2 / one process this happens where Transformers clips (`PerModelClipping.clip`). Under
DeepSpeed the engine steps inside the last micro-step's backward, so the engine's own clipping is switched off and
its `step` clips each model first (`PerModelClipping.install_on_deepspeed`), between the gradients' reduction and the
optimizer step. Either way `norms` holds both models' norms before clipping, by role, until the next clip.
"""

from __future__ import annotations

from typing import Any

import torch

from .module import LARGE, ROLES, CoDistillModule


class PerModelClipping:
    """Clips each model of `module` to its `max_norms[role]` (0 or None: no clip) and records the norms."""

    def __init__(self, module: CoDistillModule, accelerator: Any, max_norms: dict[str, float | None]):
        self.module = module
        self.accelerator = accelerator
        self.max_norms = max_norms
        self.norms: dict[str, torch.Tensor] | None = None  # both models' norms at the last clip, by role

    def clip(self) -> torch.Tensor:
        """Clip both models' gradients (DDP, FSDP2, one process); returns the large model's norm."""
        self.accelerator.unscale_gradients()  # once, under fp16: one scaler for the one optimizer
        norms = {}
        for role in ROLES:
            max_norm = self.max_norms[role]
            params = [p for p in self.module.role_parameters(role) if p.grad is not None]
            if not params:
                norms[role] = torch.zeros((), device=self.accelerator.device)
                continue
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if max_norm and max_norm > 0:
                # Takes the parameters (it scales their `.grad`): given the gradients themselves it scales nothing.
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
            norms[role] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.norms = norms
        return norms[LARGE]

    def install_on_deepspeed(self, engine: Any) -> None:
        """Under DeepSpeed: each model clipped by its own norm, as under DDP / FSDP2, in place of the engine's one
        clip of the whole module (which would scale the large model's step by the small model's gradient).

        DeepSpeed steps inside `accelerator.backward` of the last micro-step, so this runs there: the engine's own
        clipping is switched off and its `step` first clips each model, between the gradients' reduction and the
        optimizer step. Installing twice is a no-op."""
        if getattr(engine, "_s2l_per_model_clip", False):
            return
        engine._config.gradient_clipping = 0.0
        if hasattr(engine.optimizer, "clip_grad"):  # ZeRO-1/2/3 and DeepSpeed's fp16 / bf16 optimizers
            engine.optimizer.clip_grad = 0.0
        step = engine.step

        def clipped_step(*args, **kwargs):
            if engine.is_gradient_accumulation_boundary():
                self._clip_deepspeed(engine)
            return step(*args, **kwargs)

        engine.step = clipped_step
        engine._s2l_per_model_clip = True

    def _clip_deepspeed(self, engine: Any) -> None:
        """Both models' gradient norms from this process's share of each gradient inside the engine (one all-reduce
        of two numbers), then each model's share scaled by `min(1, max_norm / norm)`."""
        shards = {role: _deepspeed_grad_shards(engine, self.module.role_parameters(role)) for role in ROLES}
        device = self.accelerator.device
        squares = torch.stack(
            [sum((g.float().square().sum() for g, _ in shards[role]), torch.zeros((), device=device)) for role in ROLES]
        ).to(device)
        if engine.zero_optimization_stage() > 0:  # partitions: each process holds a disjoint share
            torch.distributed.all_reduce(squares)
        # DeepSpeed keeps fp16 gradients multiplied by its loss scale until its own step.
        loss_scale = float(getattr(engine.optimizer, "loss_scale", 1.0) or 1.0)
        norms = dict(zip(ROLES, (squares.sqrt() / loss_scale).unbind()))
        for role in ROLES:
            norm, max_norm = norms[role], self.max_norms[role]
            if max_norm and max_norm > 0 and torch.isfinite(norm) and norm > max_norm:
                coefficient = max_norm / (float(norm) + 1e-6)  # torch's clip_grad_norm_ coefficient
                for grad, write in shards[role]:
                    write(grad * coefficient)
        self.norms = norms


def _deepspeed_grad_shards(engine: Any, params: list[torch.nn.Parameter]) -> list[tuple[torch.Tensor, Any]]:
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


__all__ = ["PerModelClipping"]
