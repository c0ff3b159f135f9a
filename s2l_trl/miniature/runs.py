"""What every miniature training run shares: the trainer (S2LTrainer with timing and rollout recording), the
explorer wrapper that records the explorer's rows, held-out evaluation, the GRPOConfig fields every run uses, the
training prompts, a step clock and a checksum of the starting weights."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ..explorers.base import ExplorerOutput
from . import task
from .family import Family, heldout_rows
from .settings import RLSettings


class RecordingExplorer:
    """Wraps an explorer: times each call, counts its tokens and records its groups for the diversity analysis.

    It runs where the wrapped explorer runs (``runs_in_background`` is the inner one's): forcing a thread onto an
    in-process explorer that samples with torch's global generator made it race the learner for that generator, and
    the same seed gave different runs (``python -m s2l_trl.miniature race``).
    """

    def __init__(self, inner, recorder: RolloutRecorder):
        self.inner = inner
        self.recorder = recorder
        self.seconds = 0.0
        self.tokens = 0

    def generate(self, prompt_ids, n, inputs=None) -> ExplorerOutput:
        start = time.perf_counter()
        out = self.inner.generate(prompt_ids, n, inputs=inputs)
        self.seconds += time.perf_counter() - start
        self.tokens += sum(len(c) for c in out.completion_ids)
        for i, ids in enumerate(prompt_ids):
            self.recorder.add("explorer", ids, out.completion_ids[i * n : (i + 1) * n])
        return out

    @property
    def runs_in_background(self) -> bool:
        # The trainer's own default (True) for an explorer that does not say.
        return getattr(self.inner, "runs_in_background", True)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class RolloutRecorder:
    """Collects the rows of the current step per (source, prompt) and appends them to a JSONL file at step end."""

    def __init__(self, path: Path, tokenizer):
        self.path = path
        self.tokenizer = tokenizer
        self.pending: dict[tuple[str, tuple[int, ...]], list[list[int]]] = {}

    def add(self, source: str, prompt_ids, completions) -> None:
        self.pending.setdefault((source, tuple(prompt_ids)), []).extend(list(c) for c in completions)

    def flush(self, step: int) -> None:
        with self.path.open("a") as f:
            # Sorted: explorer rows arrive from the trainer's explorer thread, so the order of arrival varies.
            for (source, prompt), rows in sorted(self.pending.items()):
                texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
                prompt_text = self.tokenizer.decode(list(prompt), skip_special_tokens=True)
                f.write(json.dumps({"step": step, "source": source, "prompt": prompt_text, "texts": texts}) + "\n")
            f.flush()
        self.pending = {}


def trainer_class():
    """Built lazily (TRL import is slow): S2LTrainer with timing around learner generation (the GRPOTrainer call S2L
    makes for the learner's own rows only), the whole generation and the scoring."""
    from trl import GRPOTrainer

    from ..trainer import S2LTrainer

    class _LearnerGeneration(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            start = time.perf_counter()
            ids, logps = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            stats = self.mini_stats
            stats["learner_gen_s"] += time.perf_counter() - start
            stats["learner_tokens"] += sum(len(c) for c in ids)
            stats["learner_rows"] += len(ids)
            for p, c in zip(prompt_ids, ids):
                self.mini_recorder.add(self.mini_learner_source, p, [c])
            return ids, logps

    class MiniatureTrainer(S2LTrainer, _LearnerGeneration):
        mini_stats: dict[str, float]
        mini_recorder: RolloutRecorder
        mini_learner_source: str

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            start = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            self.mini_stats["generation_s"] += time.perf_counter() - start
            return out

        def _calculate_rewards(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._calculate_rewards(*args, **kwargs)
            self.mini_stats["scoring_s"] += time.perf_counter() - start
            return out

    return MiniatureTrainer


def weights_checksum(model) -> str:
    """SHA-256 of every parameter's bytes, in name order: equal checksums mean identical starting weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def evaluate(model, tokenizer, rows: list[dict], samples: int, seed: int) -> dict[str, float]:
    """Held-out greedy accuracy and pass@1 (mean over ``samples`` samples at temperature 1; NaN with ``samples=0``,
    which skips the sampling) of ``model``."""
    import torch

    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    enc = tokenizer.apply_chat_template(
        [r["prompt"] for r in rows],
        add_generation_prompt=True,
        tokenize=True,
        padding=True,
        return_dict=True,
        return_tensors="pt",
    )
    golds = [r["solution"] for r in rows]
    width = enc["input_ids"].shape[1]
    pass_at_1 = float("nan")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        # fork_rng: evaluating must not move the training run's random stream.
        torch.manual_seed(seed)
        greedy = model.generate(**enc, max_new_tokens=40, do_sample=False)
        if samples:
            sampled = model.generate(
                **enc, max_new_tokens=40, do_sample=True, temperature=1.0, top_p=1.0, num_return_sequences=samples
            )
            s_texts = tokenizer.batch_decode(sampled[:, width:], skip_special_tokens=True)
            pass_at_1 = sum(task.is_correct(t, golds[i // samples]) for i, t in enumerate(s_texts)) / len(s_texts)
    g_texts = tokenizer.batch_decode(greedy[:, width:], skip_special_tokens=True)
    if was_training:
        model.train()
    return {
        "greedy_accuracy": sum(task.is_correct(t, g) for t, g in zip(g_texts, golds)) / len(rows),
        "pass@1": pass_at_1,
        "greedy_coherent": sum(task.is_coherent(t, r["operands"]) for t, r in zip(g_texts, rows)) / len(rows),
    }


def train_rows_for_rl(family: Family, settings: RLSettings) -> list[dict]:
    exclude = {tuple(sorted(r["operands"])) for r in heldout_rows(family.spec, settings.eval_problems)}
    n = settings.steps * settings.prompts_per_step
    return task.make_rows(n, seed=settings.train_prompts_seed, num_operands=family.spec.num_operands, exclude=exclude)


def trainer_kwargs(
    run_dir: Path,
    seed: int,
    *,
    learning_rate: float,
    num_generations: int,
    prompts_per_step: int,
    max_completion_length: int,
    steps: int,
    temperature: float,
) -> dict[str, Any]:
    """The GRPOConfig fields every miniature run shares (one optimizer step per generation round, constant LR, no KL,
    CPU, a log entry per step, no checkpoints)."""
    return {
        "output_dir": str(run_dir / "trainer"),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "learning_rate": learning_rate,
        "lr_scheduler_type": "constant",
        "beta": 0.0,
        "num_generations": num_generations,
        "per_device_train_batch_size": num_generations * prompts_per_step,
        "gradient_accumulation_steps": 1,
        "max_completion_length": max_completion_length,
        "max_steps": steps,
        "temperature": temperature,
        "top_p": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": seed,
        "data_seed": seed,
        "disable_tqdm": True,
        "use_vllm": False,
        "gradient_checkpointing": False,
    }


class StepClock:
    """Wall and process-CPU seconds of one optimizer step. CPU time is the figure to compare across runs on a shared
    machine: other jobs stretch a step's wall time but not the CPU time this process spends on it."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def explorer_sampling(explorer: RecordingExplorer | None, backend: str) -> dict | None:
    """How a run's explorer rows were sampled (None: no explorer): the backend, the explorer's class, whether the
    trainer ran it in a thread, and its random state (base seed and calls made) where it has one."""
    if explorer is None:
        return None
    state = getattr(explorer.inner, "state_dict", None)
    return {
        "backend": backend,
        "explorer_class": type(explorer.inner).__name__,
        "in_background": bool(explorer.runs_in_background),
        "random_state": state() if callable(state) else None,
    }
