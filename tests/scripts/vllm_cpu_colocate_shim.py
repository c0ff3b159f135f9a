"""TEST-ONLY shim that lets TRL's colocate weight sync (`VLLMGeneration.sync_weights`) run on vLLM-CPU.

vLLM-CPU hands each linear layer's weight to a packed oneDNN / AMX kernel after loading and leaves an empty
`Parameter` (without `weight_loader`) behind, so `model.load_weights` fails on the first sync with
`'Parameter' object has no attribute 'weight_loader'`. Replacing `dispatch_cpu_unquantized_gemm` *before the engine
is built* with one that keeps `layer.weight` live and computes with `torch.nn.functional.linear` makes the sync
write into the weights the engine really uses. Never ship this in `s2l_trl/`: GPU engines need no shim, and this
one trades vLLM-CPU's fast kernels for plain PyTorch.
"""

from __future__ import annotations

import torch


def install() -> None:
    """Patch vLLM-CPU's linear dispatch (idempotent); call it before any `vllm.LLM` is built."""
    from vllm.model_executor.layers import utils

    if getattr(utils.dispatch_cpu_unquantized_gemm, "_s2l_test_shim", False):
        return
    original = utils.dispatch_cpu_unquantized_gemm

    def keep_weight_live(layer: torch.nn.Module, remove_weight: bool) -> None:
        # Meta (missing) and non-2D weights (conv / MoE) keep vLLM's own handling.
        if layer.weight.is_meta or layer.weight.ndim != 2:
            return original(layer, remove_weight)
        layer.cpu_linear = torch.nn.functional.linear

    keep_weight_live._s2l_test_shim = True
    # vLLM imports the function from the module at call time (linear.py, vocab_parallel_embedding.py), so replacing
    # the module attribute reaches every layer built afterwards.
    utils.dispatch_cpu_unquantized_gemm = keep_weight_live
