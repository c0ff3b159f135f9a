"""Miniature CoDistill-GRPO comparison on the tiny addition task (CPU, no Hub). A measurement, not a test.

1. The small model (tiny width-32 model, warm-started on the answer format for a few steps) trained by CoDistill
   (large model: the tiny width-64 model warm-started longer, so that it knows more than the small one) vs plain
   GRPO on the small model, same steps, `--seeds` seeds: held-out accuracy (greedy, fresh addition problems),
   mean and standard deviation over seeds.
2. The large model's wall time per optimizer step under CoDistill (it samples nothing) vs plain GRPO on it (median of
   TRL's `step_time` over steps 2..N; CoDistill's step includes the small model's rollouts and update too).

    python scripts/benchmark_codistill.py --steps 8 --seeds 3 --output codistill.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer  # noqa: E402
from s2l_trl.devtools.tiny import build_tiny_setup, make_addition_rows, tiny_training_kwargs, warm_start  # noqa: E402
from s2l_trl.rewards import accuracy_reward, format_reward  # noqa: E402


@torch.no_grad()
def held_out_accuracy(model, tokenizer, rows, max_new_tokens: int = 16) -> float:
    model.eval()
    correct = 0
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
        out = model.generate(
            input_ids=torch.tensor([ids["input_ids"]]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        text = tokenizer.decode(out[0, len(ids["input_ids"]) :], skip_special_tokens=True)
        correct += accuracy_reward([[{"role": "assistant", "content": text}]], [row["solution"]])[0] == 1.0
    return correct / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--small-warm-steps", type=int, default=20)
    parser.add_argument("--large-warm-steps", type=int, default=150)
    parser.add_argument("--kd-coef", type=float, default=0.1)
    parser.add_argument("--output", type=str, default=None)
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="codistill-bench-"))
    tiny = build_tiny_setup(work / "tiny", num_rows=256)
    small, large = work / "small", work / "large"
    shutil.copytree(tiny["explorer"], small)
    shutil.copytree(tiny["learner"], large)
    warm_start(small, steps=opts.small_warm_steps, seed=0)
    warm_start(large, steps=opts.large_warm_steps, seed=0)
    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    data = load_dataset("json", data_files=str(tiny["dataset"]), split="train")
    held = make_addition_rows(opts.held_out, seed=10_000)
    rewards = [accuracy_reward, format_reward]

    def kwargs(seed: int, out: str) -> dict:
        return tiny_training_kwargs(output_dir=str(work / out), max_steps=opts.steps, seed=seed)

    results: dict = {"settings": vars(opts), "small": {"codistill": [], "grpo": []}}
    base = GRPOTrainer(str(small), rewards, args=GRPOConfig(**kwargs(0, "base")), train_dataset=data)
    results["small"]["base"] = held_out_accuracy(base.model, tok, held)
    results["large_base_accuracy"] = held_out_accuracy(
        GRPOTrainer(str(large), rewards, args=GRPOConfig(**kwargs(0, "lb")), train_dataset=data).model, tok, held
    )
    step_times = {"codistill": [], "grpo_large": []}
    for seed in range(opts.seeds):
        grpo = GRPOTrainer(str(small), rewards, args=GRPOConfig(**kwargs(seed, f"g{seed}")), train_dataset=data)
        grpo.train()
        results["small"]["grpo"].append(held_out_accuracy(grpo.model, tok, held))
        cod = CoDistillTrainer(
            str(large),
            rewards,
            args=CoDistillConfig(small_model=str(small), kd_coef=opts.kd_coef, **kwargs(seed, f"c{seed}")),
            train_dataset=data,
        )
        cod.train()
        results["small"]["codistill"].append(held_out_accuracy(cod.small_model, tok, held))
        step_times["codistill"] += [h["step_time"] for h in cod.state.log_history if "step_time" in h][1:]
        print(
            f"[bench] seed {seed}: small held-out acc grpo {results['small']['grpo'][-1]:.3f} "
            f"codistill {results['small']['codistill'][-1]:.3f}",
            flush=True,
        )
    grpo_large = GRPOTrainer(str(large), rewards, args=GRPOConfig(**kwargs(0, "gl")), train_dataset=data)
    grpo_large.train()
    step_times["grpo_large"] = [h["step_time"] for h in grpo_large.state.log_history if "step_time" in h][1:]
    for name in ("codistill", "grpo"):
        v = results["small"][name]
        results["small"][f"{name}_mean"] = statistics.mean(v)
        results["small"][f"{name}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
    results["step_time_median_s"] = {k: statistics.median(v) for k, v in step_times.items() if v}
    print(json.dumps(results, indent=2))
    if opts.output:
        Path(opts.output).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
