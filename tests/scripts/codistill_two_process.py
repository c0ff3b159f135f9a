"""Run by tests/test_codistill_distributed.py under `accelerate launch` with 2 CPU processes.

Each rank trains CoDistill for two steps and writes its world size, a fingerprint of both models before and after
training, and what it logged, so the test can check that both models changed identically on both ranks (the small
model's gradients are all-reduced like the large model's).
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_utils import digit_reward, tiny_dataset  # noqa: E402

from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer  # noqa: E402
from s2l_trl.devtools.tiny import build_tiny_setup, tiny_training_kwargs  # noqa: E402


def fingerprint(model) -> list[float]:
    return [float(p.detach().double().sum()) for p in model.parameters()]


def main(workdir: str) -> None:
    state = PartialState(cpu=True)  # without cpu=True it is not distributed on a GPU-less machine: no barrier
    work = Path(workdir)
    if state.is_main_process:
        build_tiny_setup(work / "tiny")
    state.wait_for_everyone()
    tiny = build_tiny_setup(work / "tiny")
    # G = 4 and 6 rows per process: one group straddles the two processes.
    args = CoDistillConfig(
        small_model=str(tiny["explorer"]),
        **tiny_training_kwargs(
            output_dir=str(work / "out"), max_steps=2, per_device_train_batch_size=6, max_completion_length=8
        ),
    )
    trainer = CoDistillTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    before = {"large": fingerprint(trainer.model), "small": fingerprint(trainer.small_model)}
    trainer.train()
    out = {
        "world_size": state.num_processes,
        "rank": state.process_index,
        "small_wrapped": type(trainer.small_model_wrapped).__name__,
        "before": before,
        "after": {"large": fingerprint(trainer.model), "small": fingerprint(trainer.small_model)},
        "kd_reward": [h["codistill/kd_reward"] for h in trainer.state.log_history if "codistill/kd_reward" in h],
        "learner_rows": [
            h["s2l/learner_rows_generated"] for h in trainer.state.log_history if "s2l/learner_rows_generated" in h
        ],
        "small_loss": [h["small/loss"] for h in trainer.state.log_history if "small/loss" in h],
    }
    assert torch.distributed.is_initialized()
    (work / f"rank{state.process_index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
