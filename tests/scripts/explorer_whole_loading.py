"""Run by tests/test_explorer_local.py in a process of its own (one process, gloo group of world size 1): the local
explorer is loaded whole whatever sharded loading a training config switched on.

    explorer_whole_loading.py TINY_DIR OUT_JSON

* DeepSpeed ZeRO-3: a live `HfDeepSpeedConfig` of stage 3 (what `TrainingArguments(deepspeed=...)` keeps) makes
  Transformers build every model inside `deepspeed.zero.Init`, which partitions it (parameters of shape (0,));
* FSDP with cpu-RAM-efficient loading (`ACCELERATE_USE_FSDP`, `FSDP_CPU_RAM_EFFICIENT_LOADING`, what the recipes'
  `fsdp_cpu_ram_efficient_loading: true` sets): every process but local rank 0 gets zeros, for FSDP to broadcast.

The script writes, per case, whether the explorer's weights equal the checkpoint's, and whether the switches were
left as they were; and what the explorer passes to `generate` for `synced_gpus`, and its refusal of a partitioned
model object.
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM

from s2l_trl.devtools.vllm_server import free_port
from s2l_trl.explorers import LocalExplorer, SamplingSettings


def same_weights(model, reference) -> bool:
    ours, theirs = model.state_dict(), reference.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def main(tiny_dir: str, out_path: str) -> None:
    path = os.path.join(tiny_dir, "explorer")
    reference = AutoModelForCausalLM.from_pretrained(path)  # before any sharded loading is switched on
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    out = {}

    # FSDP, cpu-RAM-efficient loading, on a process that is not local rank 0.
    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true", LOCAL_RANK="1")
    zero_filled = AutoModelForCausalLM.from_pretrained(path)
    out["fsdp_plain_load_zero"] = all(bool((p == 0).all()) for p in zero_filled.parameters())
    explorer = LocalExplorer(path, sampling=SamplingSettings(max_tokens=3, seed=0))
    out["fsdp_whole"] = same_weights(explorer.model, reference)
    out["fsdp_env_kept"] = os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    os.environ.update(ACCELERATE_USE_FSDP="false", LOCAL_RANK="0")

    # DeepSpeed ZeRO-3.
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    ds_config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    partitioned = AutoModelForCausalLM.from_pretrained(path)
    out["zero3_plain_load_partitioned"] = next(partitioned.parameters()).numel() == 0
    explorer = LocalExplorer(path, sampling=SamplingSettings(max_tokens=3, seed=0))
    out["zero3_whole"] = same_weights(explorer.model, reference)
    out["zero3_config_kept"] = is_deepspeed_zero3_enabled()

    # What `generate` is asked for: never collective (Transformers' default under ZeRO-3 with more than one process).
    seen = []
    generate = explorer.model.generate
    explorer.model.generate = lambda *a, **k: seen.append(k.get("synced_gpus")) or generate(*a, **k)
    explorer.generate([[1, 5, 6]], 2)
    out["synced_gpus"] = seen

    try:
        LocalExplorer(partitioned, tokenizer=explorer.tokenizer)
        out["partitioned_object"] = "accepted"
    except ValueError as exc:
        out["partitioned_object"] = str(exc)
    del ds_config
    torch.distributed.destroy_process_group()
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
