"""Builders shared by the trainer tests: configs on the tiny models and oracle explorer rollouts."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import load_dataset
from transformers import AutoTokenizer

from s2l_trl import S2LConfig
from s2l_trl.devtools.tiny import tiny_training_kwargs


def tiny_dataset(tiny):
    return load_dataset("json", data_files=str(tiny["dataset"]), split="train")


def write_oracle_rollouts(tiny, path: Path, per_prompt: int = 4, logprob: float | None = None) -> Path:
    """Explorer rollouts that always answer correctly, in the authors' offline schema (one line per sample)."""
    tok = AutoTokenizer.from_pretrained(tiny["learner"])
    with open(path, "w") as f:
        for row in tiny_dataset(tiny):
            text = f"\\boxed{{{row['solution']}}}"
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for _ in range(per_prompt):
                f.write(
                    json.dumps(
                        {
                            "prompt_id": row["prompt_id"],
                            "prompt": row["prompt"],
                            "prompt_ids": [],
                            "response": text,
                            "response_ids": ids,
                            "small_model_log_probs": None if logprob is None else [logprob] * len(ids),
                            "reward": 0.0,
                            "is_correct": False,  # deliberately wrong: stored rewards must be ignored
                            "data_source": "tiny-addition",
                            "ground_truth": row["solution"],
                        }
                    )
                    + "\n"
                )
    return path


def digit_reward(completions, **kwargs):
    """A dense reward that varies between completions of random models, so that losses are non-zero."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def s2l_args(tmp_path, rollouts: Path | None = None, **overrides) -> S2LConfig:
    kwargs = tiny_training_kwargs(output_dir=str(tmp_path / "out"), max_steps=5, mix_steps=4, dataloader_num_workers=0)
    if rollouts is not None:
        kwargs.update(explorer_mode="offline", explorer_rollouts=str(rollouts))
    kwargs.update(overrides)
    return S2LConfig(**kwargs)


def logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def launch_two_cpu_processes(*program: str, config_file: str | None = None, cwd=None, timeout: float = 600):
    """Run ``program`` (a script path and its arguments, or ``-m module ...``) under `accelerate launch` with two real
    CPU processes, and return the finished process.

    `accelerate launch --cpu --num_processes 2` silently runs ONE process; `--multi_gpu` with `use_cpu=True` in the
    trainer config really starts two ranks and DDP runs over gloo. Callers assert the world size they ran with.
    """
    import os
    import subprocess
    import sys

    from s2l_trl.devtools.vllm_server import free_port

    # One thread per rank: two ranks (and maybe a vLLM server) share the machine's cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    for attempt in range(2):  # a free port can be taken by another process before the ranks bind it: retry once
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if config_file is not None:
            cmd += ["--config_file", config_file]
        cmd += ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
        cmd += ["--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
        proc = subprocess.run([*cmd, *program], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        if proc.returncode == 0 or "Address already in use" not in proc.stdout + proc.stderr or attempt:
            return proc
    return proc
