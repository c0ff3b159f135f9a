"""Run by tests/test_codistill_distributed.py under `accelerate launch` with 2 CPU processes.

    codistill_two_process.py WORKDIR ddp|fsdp2|zero3

Each rank trains CoDistill for two steps and writes its world size, the engine accelerate prepared, how many rows
its small model sampled in each round, fingerprints of both models before and after training (full
weights: gathered under FSDP2 and ZeRO-3), and what it logged. With `fsdp2` / `zero3`, a test-only CPU shim
(fsdp2_cpu_shim.py / deepspeed_cpu_shim.py) lets accelerate's own FSDP2 / DeepSpeed path shard the one CoDistill
module over gloo; the rank also reports its share of each model's parameter elements and saves the final
`large_model/` and `small_model/` folders.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

ENGINE = sys.argv[2] if len(sys.argv) > 2 else "ddp"
if ENGINE == "fsdp2":
    from fsdp2_cpu_shim import install

    install()
elif ENGINE == "zero3":
    from deepspeed_cpu_shim import install

    install()

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from fsdp2_cpu_shim import sharding_report  # noqa: E402
from trainer_utils import digit_reward, tiny_dataset  # noqa: E402

from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer  # noqa: E402
from s2l_trl.devtools.tiny import build_tiny_setup, tiny_training_kwargs  # noqa: E402


def fingerprint(state_dict, prefix: str) -> list[float]:
    return [float(v.double().sum()) for k, v in sorted(state_dict.items()) if k.startswith(prefix)]


def main(workdir: str) -> None:
    state = PartialState(cpu=True)  # without cpu=True it is not distributed on a GPU-less machine: no barrier
    work = Path(workdir)
    if state.is_main_process:
        build_tiny_setup(work / "tiny")
    state.wait_for_everyone()
    tiny = build_tiny_setup(work / "tiny")
    extra = {}
    if ENGINE == "fsdp2":
        extra = dict(fsdp="full_shard", fsdp_config={"fsdp_version": 2, "reshard_after_forward": True})
    elif ENGINE == "zero3":
        zero3 = {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}
        extra = dict(
            deepspeed={
                "zero_optimization": zero3,
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
            }
        )
    # G = 4 and 6 rows per process: one group straddles the two processes, whose explorer slots both processes hold.
    args = CoDistillConfig(
        small_model=str(tiny["explorer"]),
        **tiny_training_kwargs(
            output_dir=str(work / "out"),
            max_steps=2,
            per_device_train_batch_size=6,
            max_completion_length=8,
            # Clipping on, each model by its own norm (both models' gradients are larger): every engine, DeepSpeed
            # included, must clip them as DDP does and end where DDP ends.
            max_grad_norm=0.5,
            small_max_grad_norm=0.2,
            **extra,
        ),
    )
    trainer = CoDistillTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    sampled: list[int] = []
    generate = trainer._small_sampler.generate

    def counting(prompt_ids, n, inputs=None):
        out = generate(prompt_ids, n, inputs=inputs)
        sampled.append(len(out.completion_ids))
        return out

    trainer._small_sampler.generate = counting
    start = trainer.codistill.state_dict()
    before = {"large": fingerprint(start, "large."), "small": fingerprint(start, "small.")}
    trainer.train()
    if ENGINE == "fsdp2":
        end = trainer.accelerator.get_state_dict(trainer.model)
    elif ENGINE == "zero3":
        end = trainer.accelerator.get_state_dict(trainer.model_wrapped) or {}  # gathered onto the main process
    else:
        end = trainer.codistill.state_dict()
    out = {
        "world_size": state.num_processes,
        "rank": state.process_index,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
        "sampled_rows": sampled,
        "before": before,
        "after": {"large": fingerprint(end, "large."), "small": fingerprint(end, "small.")},
        "kd_reward": [h["codistill/kd_reward"] for h in trainer.state.log_history if "codistill/kd_reward" in h],
        "learner_rows": [
            h["s2l/learner_rows_generated"] for h in trainer.state.log_history if "s2l/learner_rows_generated" in h
        ],
        "small_loss": [h["small/loss"] for h in trainer.state.log_history if "small/loss" in h],
        "small_steps": trainer.small_optimizer_steps,
    }
    if ENGINE == "zero3":
        from deepspeed_cpu_shim import zero3_report

        out["sharding"] = {
            "large": zero3_report(trainer.codistill.large),
            "small": zero3_report(trainer.codistill.small),
        }
        trainer.save_model()
    if ENGINE == "fsdp2":
        out["sharding"] = {
            "large": sharding_report(trainer.codistill.large),
            "small": sharding_report(trainer.codistill.small),
        }
        trainer.save_model()
    assert torch.distributed.is_initialized()
    (work / f"rank{state.process_index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
