"""Run by tests/test_trainer_distributed.py under `accelerate launch` with 2 CPU processes: S2LTrainer under FSDP2 or
DeepSpeed ZeRO-3.

    s2l_sharded_two_process.py WORKDIR fsdp2|zero3 [uneven]

With a test-only CPU shim (fsdp2_cpu_shim.py / deepspeed_cpu_shim.py) accelerate's own FSDP2 / DeepSpeed path shards
the learner across the two processes over gloo. Each rank trains S2L-PO for two steps at alpha 0.5 (learner rows
generated through TRL with the sharded learner, explorer rows from oracle rollouts) and writes what the test checks:
the distributed type, its share of the learner's parameter elements, the full weights before / after (gathered), and
what it logged.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

ENGINE = sys.argv[2] if len(sys.argv) > 2 else "fsdp2"
UNEVEN = len(sys.argv) > 3 and sys.argv[3] == "uneven"
if ENGINE == "fsdp2":
    from fsdp2_cpu_shim import install
else:
    from deepspeed_cpu_shim import install
install()
import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from deepspeed_cpu_shim import zero3_report  # noqa: E402
from fsdp2_cpu_shim import sharding_report  # noqa: E402
from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts  # noqa: E402

from s2l_trl import S2LTrainer  # noqa: E402
from s2l_trl.devtools.tiny import build_tiny_setup  # noqa: E402
from s2l_trl.rewards import accuracy_reward  # noqa: E402

ENGINES = {
    "fsdp2": dict(fsdp="full_shard", fsdp_config={"fsdp_version": 2, "reshard_after_forward": True}),
    "zero3": dict(
        deepspeed={
            "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    ),
}


def fingerprint(state_dict) -> list[float]:
    return [float(v.double().sum()) for _, v in sorted(state_dict.items())]


def main(workdir: str) -> None:
    state = PartialState(cpu=True)
    work = Path(workdir)
    if state.is_main_process:
        build_tiny_setup(work / "tiny")
        write_oracle_rollouts(build_tiny_setup(work / "tiny"), work / "oracle.jsonl")
    state.wait_for_everyone()
    tiny = build_tiny_setup(work / "tiny")
    args = s2l_args(
        work,
        work / "oracle.jsonl",
        per_device_train_batch_size=4,
        max_steps=2,
        mix_schedule="constant",
        mix_alpha_start=0.5,
        max_completion_length=8,
        **ENGINES[ENGINE],
    )
    trainer = S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    if UNEVEN and state.is_main_process:
        # This process's learner rows stop after 2 tokens, the other's after 8: as when one process's rows all hit
        # EOS early. A sharded learner all-gathers its parameters in every forward, so both must keep decoding until
        # both are done (synced decoding), or the other waits forever.
        trainer.generation_config.max_new_tokens = 2
    forwards = []
    trainer.model.register_forward_pre_hook(lambda module, args: forwards.append(torch.is_grad_enabled()))
    before = fingerprint(trainer.model.state_dict())
    trainer.train()
    # Gathers the shards onto the main process (FULL_STATE_DICT / ZeRO-3 16-bit state dict).
    full = trainer.accelerator.get_state_dict(trainer.model if ENGINE == "fsdp2" else trainer.model_wrapped) or {}
    out = {
        "world_size": state.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "is_fsdp_enabled": trainer.is_fsdp_enabled,
        "sharding": sharding_report(trainer.model) if ENGINE == "fsdp2" else zero3_report(trainer.model),
        "before": before,
        "after": fingerprint(full),
        "learner_rows": [
            h["s2l/learner_rows_generated"] for h in trainer.state.log_history if "s2l/learner_rows_generated" in h
        ],
        "explorer_rows": [
            h["s2l/explorer_rows_per_group"] for h in trainer.state.log_history if "s2l/explorer_rows_per_group" in h
        ],
        "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "forwards_without_grad": forwards.count(False),
        "learner_length": [h[key] for h in trainer.state.log_history if (key := "s2l/completion_length/learner") in h],
    }
    assert torch.distributed.is_initialized()
    (work / f"rank{state.process_index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
