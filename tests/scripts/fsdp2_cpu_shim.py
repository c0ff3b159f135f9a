"""Test-only: let accelerate's FSDP2 path run on CPU processes over gloo.

accelerate decides the distributed type from the device: with `cpu=True` (what `use_cpu=True` asks for) it is
`MULTI_CPU` and an FSDP plugin is dropped, so an `fsdp` config trains as plain DDP, sharding nothing. PyTorch's FSDP2
(`fully_shard`) itself runs on CPU tensors over gloo (all-gather, reduce-scatter, DTensor clipping and state dicts
all work), so the one thing this shim changes is that decision: when a plugin is given and the state came out
`MULTI_CPU`, it becomes `FSDP`. Everything after that is accelerate's and Transformers' own FSDP2 code
(`fsdp2_prepare_model`, auto-wrap, FULL_STATE_DICT saving, `register_fsdp_forward_method`). Never ship this: on GPUs
accelerate picks FSDP by itself.
"""

from __future__ import annotations


def install() -> None:
    import accelerate.state as state_module
    from accelerate.utils import DistributedType

    cls = state_module.AcceleratorState
    if getattr(cls, "_s2l_fsdp_cpu_shim", False):
        return
    original = cls.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # As accelerate does on GPUs: later `AcceleratorState()` calls copy the partial state's type back in.
            state_module.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    cls.__init__ = __init__
    cls._s2l_fsdp_cpu_shim = True


def sharding_report(model) -> dict:
    """Per parameter kind: this rank's local elements and the full tensor's, so a test can assert real sharding."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    local = full = sharded = 0
    for p in model.parameters():
        full += p.numel()
        if isinstance(p, DTensor):
            sharded += 1
            local += p.to_local().numel()
        else:
            local += p.numel()
    return {
        "local_numel": local,
        "full_numel": full,
        "dtensor_params": sharded,
        "params": len(list(model.parameters())),
        # Each unit all-gathers its parameters in its own forward (and reshards after it): more than the root means
        # every decoding step is a collective.
        "fsdp_units": sum(isinstance(m, FSDPModule) for m in model.modules()),
    }
