"""Test-only: let accelerate's DeepSpeed path run on CPU processes (DeepSpeed's CPU accelerator, gloo).

accelerate decides the distributed type from the device: with `cpu=True` (what `use_cpu=True` asks for) it never
picks DeepSpeed (`ACCELERATE_USE_DEEPSPEED ... and not cpu`), so a `deepspeed` config trains as plain DDP. DeepSpeed
itself runs ZeRO-3 on CPU tensors (its CPU accelerator falls back to gloo without oneCCL). This shim changes only
that decision: when a DeepSpeed plugin is given and the state came out `MULTI_CPU`, it becomes `DEEPSPEED`, exactly as
accelerate's own branch for accelerator devices sets it up. Everything after that is accelerate's, Transformers'
and DeepSpeed's own code. Never ship this.
"""

from __future__ import annotations


def install() -> None:
    import accelerate.state as state_module
    from accelerate.utils import DistributedType

    cls = state_module.AcceleratorState
    if getattr(cls, "_s2l_deepspeed_cpu_shim", False):
        return
    original = cls.__init__

    def __init__(self, mixed_precision=None, cpu=False, dynamo_plugin=None, deepspeed_plugin=None, *args, **kwargs):
        fresh = not self.initialized if hasattr(self, "_shared_state") else True
        original(self, mixed_precision, cpu, dynamo_plugin, deepspeed_plugin, *args, **kwargs)
        if fresh and deepspeed_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            # Later `AcceleratorState()` calls copy the partial state's type back in (accelerate does the same).
            state_module.PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED

    cls.__init__ = __init__
    cls._s2l_deepspeed_cpu_shim = True


def zero3_report(module) -> dict:
    """This rank's elements of ZeRO-3 partitioned parameters against their full sizes."""
    local = full = partitioned = params = 0
    for p in module.parameters():
        params += 1
        if hasattr(p, "ds_tensor"):
            partitioned += 1
            local += p.ds_tensor.numel()
            full += p.ds_numel
        else:
            local += p.numel()
            full += p.numel()
    return {"local_numel": local, "full_numel": full, "partitioned_params": partitioned, "params": params}
