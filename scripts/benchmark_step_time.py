"""Step time of S2LTrainer at alpha = 0 against plain GRPOTrainer on the same tiny CPU config, in one run.

Also reports how many completions the learner generated per step at alpha = 0.5 (it must be G_s per group, never G).

    python scripts/benchmark_step_time.py [--steps 12] [--work /tmp/s2l-bench]

Prints median step times (TRL's own `step_time` metric, first step dropped as warm-up) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer

from s2l_trl import S2LConfig, S2LTrainer
from s2l_trl.devtools.tiny import build_tiny_setup, tiny_training_kwargs
from s2l_trl.explorers import LocalExplorer, SamplingSettings


def digit_reward(completions, **kwargs):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2, help="alternating GRPO / S2L(alpha=0) runs")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="s2l-bench-"))
    tiny = build_tiny_setup(work / "tiny")
    ds = load_dataset("json", data_files=str(tiny["dataset"]), split="train")
    common = tiny_training_kwargs(max_completion_length=32, max_steps=args.steps)

    def step_times(trainer) -> list[float]:
        trainer.train()
        return [h["step_time"] for h in trainer.state.log_history if "step_time" in h][1:]

    explorer = LocalExplorer(str(tiny["explorer"]), sampling=SamplingSettings(max_tokens=32))

    def grpo_run() -> list[float]:
        return step_times(
            GRPOTrainer(
                str(tiny["learner"]),
                [digit_reward],
                train_dataset=ds,
                args=GRPOConfig(output_dir=str(work / "grpo"), **common),
            )
        )

    def s2l_zero_run() -> list[float]:
        return step_times(
            S2LTrainer(
                str(tiny["learner"]),
                [digit_reward],
                train_dataset=ds,
                explorer=explorer,
                args=S2LConfig(
                    output_dir=str(work / "s2l0"),
                    mix_alpha_start=0.0,
                    mix_alpha_end=0.0,
                    explorer_mode="local",
                    explorer_model=str(tiny["explorer"]),
                    **common,
                ),
            )
        )

    # A first run pays one-off costs (imports, kernel warm-up); runs then alternate so drift hits both alike.
    grpo_run()
    grpo, s2l_zero = [], []
    for _ in range(args.rounds):
        grpo += grpo_run()
        s2l_zero += s2l_zero_run()
    half = S2LTrainer(
        str(tiny["learner"]),
        [digit_reward],
        train_dataset=ds,
        explorer=explorer,
        args=S2LConfig(
            output_dir=str(work / "s2l05"),
            mix_schedule="constant",
            mix_alpha_start=0.5,
            mix_steps=args.steps,
            explorer_mode="local",
            explorer_model=str(tiny["explorer"]),
            **common,
        ),
    )
    s2l_half = step_times(half)
    learner_rows = [
        h["s2l/learner_rows_generated"] for h in half.state.log_history if "s2l/learner_rows_generated" in h
    ]
    groups = common["per_device_train_batch_size"] // common["num_generations"]

    g_med, s_med, h_med = (statistics.median(x) for x in (grpo, s2l_zero, s2l_half))
    print(
        f"steps measured per trainer: {len(grpo)} ({args.rounds} alternating runs, first step of each dropped); "
        "G=4, 2 groups per step, CPU"
    )
    print(f"GRPOTrainer            median step time {g_med * 1000:8.1f} ms")
    print(f"S2LTrainer alpha=0     median step time {s_med * 1000:8.1f} ms")
    print(f"S2LTrainer alpha=0.5   median step time {h_med * 1000:8.1f} ms  (local explorer, same process)")
    print(f"ratio S2LTrainer(alpha=0) / GRPOTrainer = {s_med / g_med:.3f}")
    print(
        f"learner completions generated per step at alpha=0.5: {sorted(set(learner_rows))} "
        f"(G_s per group = 2, x {groups} groups = {2 * groups})"
    )


if __name__ == "__main__":
    sys.exit(main())
