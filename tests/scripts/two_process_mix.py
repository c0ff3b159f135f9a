"""Run by tests/test_trainer_distributed.py under `accelerate launch` with 2 CPU processes.

Each rank writes, per step, its rows' (group, slot, source, reward) and advantages, so the test can check the
composition of every group, including the groups that straddle the two processes, and TRL's completions table.
"""

import json
import sys
from pathlib import Path

from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts  # noqa: E402

from s2l_trl import S2LTrainer  # noqa: E402
from s2l_trl.devtools.tiny import build_tiny_setup  # noqa: E402
from s2l_trl.rewards import accuracy_reward  # noqa: E402


class RecordingTrainer(S2LTrainer):
    records: list[dict] = []

    def _finish_round(self, output, rnd):
        super()._finish_round(output, rnd)
        start = self.accelerator.process_index * len(rnd.placement.is_explorer)
        rewards = rnd.rewards_per_func[start : start + len(rnd.placement.is_explorer), 0].tolist()
        self.records.append(
            {
                "step": rnd.step,
                "g_w": rnd.g_w,
                "advantages": output["advantages"].tolist(),
                "rows": [
                    {"group": g, "slot": s, "explorer": e, "reward": r}
                    for (g, s), e, r in zip(rnd.placement.slots, rnd.placement.is_explorer, rewards)
                ],
            }
        )


def main(workdir: str) -> None:
    state = PartialState(cpu=True)  # without cpu=True it is not distributed on a GPU-less machine: no barrier
    work = Path(workdir)
    tiny = build_tiny_setup(work / "tiny") if state.is_main_process else None
    state.wait_for_everyone()
    tiny = build_tiny_setup(work / "tiny")
    rollouts = work / "oracle.jsonl"
    if state.is_main_process:
        write_oracle_rollouts(tiny, rollouts)
    state.wait_for_everyone()
    # G = 4 and 6 rows per process: 3 groups per step, the middle one split 2 + 2 across the processes.
    args = s2l_args(work, rollouts, per_device_train_batch_size=6, max_steps=4, mix_steps=4, log_completions=True)
    trainer = RecordingTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    trainer.train()
    # G = 4, 2 rows per process, alpha 0.5: process 0 holds only explorer rows, process 1 only learner rows.
    first_records, RecordingTrainer.records = RecordingTrainer.records, []
    split_args = s2l_args(
        work / "split",
        rollouts,
        per_device_train_batch_size=2,
        max_steps=2,
        mix_schedule="constant",
        mix_alpha_start=0.5,
    )
    split = RecordingTrainer(str(tiny["learner"]), [accuracy_reward], args=split_args, train_dataset=tiny_dataset(tiny))
    split.train()
    out = {
        "world_size": state.num_processes,
        "rank": state.process_index,
        "records": first_records,
        "learner_rows_generated": [
            h["s2l/learner_rows_generated"] for h in trainer.state.log_history if "s2l/learner_rows_generated" in h
        ],
        "split_records": RecordingTrainer.records,
        "split_rewards": [h["reward"] for h in split.state.log_history if "reward" in h],
    }
    (work / f"rank{state.process_index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
