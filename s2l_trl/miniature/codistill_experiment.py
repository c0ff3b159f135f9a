"""CoDistill-GRPO in miniature: the small model trained by CoDistill vs by plain GRPO, the large model trained by
CoDistill (from the small model's rollouts only) vs by plain GRPO, and the large model's time per optimizer step.

Runs (each from the same starting weights, same prompts in the same order per seed):

* ``grpo_small``: plain GRPO on the small model;
* ``grpo_large``: plain GRPO on the large model (it samples its own rollouts);
* ``codistill``: one CoDistill run trains both (dense per-token KD reward, the default);
* ``codistill_sequence``: the same with the sequence-level KD reward (an ablation of ``kd_mode``).

Every run writes ``<out>/runs/<name>-seed<k>/run.json`` (held-out evaluations of each trained model, per-step wall
and process-CPU seconds, tokens generated per model) and ``trainer_state.json`` (TRL's ``log_history``). A run whose
``run.json`` exists is skipped, so an interrupted experiment resumes. ``codistill.json``, ``codistill.md`` and
``codistill.png`` summarise them (:mod:`.codistill_report`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from ..jsonl import write_json_atomic
from . import codistill_report, regime, task
from .codistill_report import LOGGED_PER_STEP, TIMING_METRICS
from .family import Family, heldout_rows
from .numerics import environment_record
from .rl_experiment import family_record, run_one
from .runs import StepClock, evaluate, train_rows_for_rl, trainer_kwargs, weights_checksum
from .settings import CODISTILL_METHODS, CODISTILL_RUNS, GRPO_RUNS, CoDistillSettings


def validate(settings: CoDistillSettings, family: Family, runs: list[str]) -> None:
    """Bad settings fail here, before any run starts or anything is written."""
    unknown = sorted(set(runs) - set(CODISTILL_RUNS))
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; known: {list(CODISTILL_RUNS)}.")
    for role in ("small", "large"):
        path = settings.model_path(family, role)  # a band that no checkpoint meets fails here (RegimeError)
        if not path.is_dir():
            raise ValueError(
                f"{role}={getattr(settings, role)!r} at SFT step {getattr(settings, f'{role}_sft_step')} is not in "
                f"the family at {family.root} (sizes {family.spec.sizes}, saved steps {family.spec.saved_steps} and "
                "the final one)."
            )
    if settings.steps < 1 or settings.eval_every < 1 or not settings.seeds:
        raise ValueError(
            f"steps ({settings.steps}) and eval_every ({settings.eval_every}) must be >= 1 and seeds "
            f"({settings.seeds}) non-empty."
        )


def run_codistill(family: Family, settings: CoDistillSettings, method: str, seed: int, out_dir: Path) -> dict:
    """One CoDistill run; returns (and writes) its run.json. Skipped when run.json exists."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from ..codistill import CoDistillConfig, CoDistillTrainer

    run_dir = Path(out_dir) / "runs" / f"{method}-seed{seed}"
    if (run_dir / "run.json").exists():
        return json.loads((run_dir / "run.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    small_path = settings.model_path(family, "small")
    large_path = settings.model_path(family, "large")
    tokenizer = AutoTokenizer.from_pretrained(large_path)
    eval_rows = heldout_rows(family.spec, settings.eval_problems)
    rows = train_rows_for_rl(family, settings.grpo("small"))
    dataset = Dataset.from_list([{"prompt": r["prompt"], "solution": r["solution"]} for r in rows])
    config = dict(
        **trainer_kwargs(
            run_dir,
            seed,
            learning_rate=settings.learning_rate,
            num_generations=settings.num_generations,
            prompts_per_step=settings.prompts_per_step,
            max_completion_length=settings.max_completion_length,
            steps=settings.steps,
            temperature=settings.temperature,
        ),
        small_model=str(small_path),
        # CoDistill's defaults otherwise: the small model samples every row of every step (alpha = 1, whole run).
        small_learning_rate=settings.small_learning_rate,
        kd_coef=settings.kd_coef,
    )
    config.update(CODISTILL_METHODS[method].overrides)  # a method's own kd_coef / IS policy wins
    args = CoDistillConfig(**config)
    large = AutoModelForCausalLM.from_pretrained(large_path, dtype="float32")
    small = AutoModelForCausalLM.from_pretrained(small_path, dtype="float32")
    checksums = {"small": weights_checksum(small), "large": weights_checksum(large)}
    trainer = CoDistillTrainer(large, [task.accuracy_reward], args=args, train_dataset=dataset, small_model=small)
    models = {"small": trainer.small_model, "large": trainer.large_model}
    evals: dict[str, list[dict]] = {"small": [], "large": []}
    per_step: list[dict] = []

    def evaluate_both(step: int) -> None:
        for role, model in models.items():
            evals[role].append({"step": step, **evaluate(model, tokenizer, eval_rows, settings.eval_samples, seed)})

    class Probe(TrainerCallback):
        """Per-step wall / CPU time and held-out evaluation of both models (excluded from the step's time)."""

        def __init__(self):
            self.clock = StepClock()

        def on_train_begin(self, args_, state, control, **kwargs):
            evaluate_both(0)

        def on_step_begin(self, args_, state, control, **kwargs):
            self.clock.start()

        def on_step_end(self, args_, state, control, **kwargs):
            wall, cpu = self.clock.stop()
            per_step.append({"step": state.global_step, "step_wall_s": round(wall, 4), "step_cpu_s": round(cpu, 4)})
            if state.global_step % settings.eval_every == 0 or state.global_step == settings.steps:
                evaluate_both(state.global_step)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Probe())
    start = time.perf_counter()
    trainer.train()
    _attach_logged_timings(per_step, trainer.state.log_history)
    result = {
        "run": method,
        "seed": seed,
        "settings": asdict(settings),
        "small": str(small_path),
        "large": str(large_path),
        "family": family_record(family),
        "starts": {
            "small": regime.selection_of(small_path, family, settings.small),
            "large": regime.selection_of(large_path, family, settings.large),
        },
        "environment": environment_record(),
        "initial_weights_sha256": checksums,
        "evals": evals,
        "per_step": per_step,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(run_dir / "trainer_state.json", {"log_history": trainer.state.log_history})
    write_json_atomic(run_dir / "run.json", result)
    return result


def _attach_logged_timings(per_step: list[dict], log_history: list[dict]) -> None:
    """Copies CoDistill's logged per-step timings, the large model's generated rows, the KD reward and the importance
    weights into ``per_step`` (matched by step), so that run.json holds what the report reads."""
    logged = {h["step"]: h for h in log_history if "step" in h and "loss" in h}
    for s in per_step:
        h = logged.get(s["step"], {})
        for key, metric in TIMING_METRICS.items():
            s[key] = round(h.get(metric, 0.0), 4)
        s["large_rows_generated"] = h.get("s2l/learner_rows_generated")
        for key, metric in LOGGED_PER_STEP.items():
            s[key] = h.get(metric)


def _grpo_run(family: Family, settings: CoDistillSettings, name: str, seed: int, out_dir: Path) -> dict:
    """Plain GRPO on one of the two models (``rl.run_one`` at alpha = 0), in this experiment's shape."""
    role = name.removeprefix("grpo_")
    r = run_one(family, settings.grpo(role), "grpo", seed, out_dir, name=name)
    weights = r["initial_weights_sha256"]
    return {**r, "run": name, "evals": {role: r["evals"]}, "initial_weights_sha256": {role: weights}}


def run_codistill_experiment(
    family: Family, settings: CoDistillSettings, out_dir: str | Path, runs: list[str] | None = None
) -> dict:
    """Runs every (run, seed), then writes ``codistill.json``, ``codistill.md`` and ``codistill.png``."""
    from tqdm import tqdm

    runs = list(runs or CODISTILL_RUNS)
    validate(settings, family, runs)
    out_dir = Path(out_dir)
    # Interleaved by seed, so that a slow spell of a shared machine hits every run alike.
    jobs = [(name, seed) for seed in settings.seeds for name in runs]
    results = []
    for name, seed in tqdm(jobs, desc="codistill runs"):
        if name in GRPO_RUNS:
            results.append(_grpo_run(family, settings, name, seed, out_dir))
        else:
            results.append(run_codistill(family, settings, name, seed, out_dir))
    report = codistill_report.build_report(results, settings)
    codistill_report.write_report(report, out_dir)
    return report
