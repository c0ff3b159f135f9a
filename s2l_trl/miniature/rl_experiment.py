"""Experiments 2-4: GRPO vs S2L-PO vs GRPO at a higher temperature (and ablations) from the same learner weights,
over seeds, with held-out accuracy against steps, rollout compute, wall-time split and rollout diversity per source;
and the README's main job (``demo``). Tables and plots: :mod:`.rl_report`.

Every run writes ``<out>/runs/<method>-seed<k>/``: ``run.json`` (evaluations, per-step compute, initial-weights
checksum, how the explorer sampled), ``trainer_state.json`` (TRL's ``log_history``, for ``python -m
s2l_trl.miniature curves``) and ``rollouts.jsonl`` (every rollout group's texts by source, appended and flushed). A run
whose ``run.json`` exists is skipped, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..explorers.base import SamplingSettings
from ..explorers.factory import build_explorer
from ..jsonl import write_json_atomic
from ..schedule import mix_alpha, split_group
from . import regime, rl_report, task
from .family import Family, heldout_rows
from .numerics import environment_record
from .runs import (
    RecordingExplorer,
    RolloutRecorder,
    StepClock,
    evaluate,
    explorer_sampling,
    train_rows_for_rl,
    trainer_class,
    trainer_kwargs,
    weights_checksum,
)
from .settings import MAIN_METHODS, PasskSettings, RLSettings, method


def run_one(
    family: Family,
    settings: RLSettings,
    method_name: str,
    seed: int,
    out_dir: Path,
    echo: bool = False,
    name: str | None = None,
    explorer_factory: Callable[[str, Any, SamplingSettings], Any] | None = None,
    save_model_to: Path | None = None,
) -> dict:
    """One training run; returns (and writes) its run.json. Skipped when run.json exists. ``echo``: print each
    held-out evaluation as it happens (the README's main job). ``name``: the run folder's name instead of ``method``
    (``runs/<name>-seed<k>``). ``explorer_factory``: builds the explorer from (model path, tokenizer, sampling
    settings) instead of the ``explorer_backend`` (the race experiment's explorer of the time of the race).
    ``save_model_to``: save the trained learner (and its tokenizer) there, e.g. for pass@k after RL."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from ..config import S2LConfig

    spec = method(method_name)  # unknown names fail here, before anything is written
    run_dir = Path(out_dir) / "runs" / f"{name or spec.name}-seed{seed}"
    if (run_dir / "run.json").exists():
        return json.loads((run_dir / "run.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    learner_path = settings.learner_model(family)
    tokenizer = AutoTokenizer.from_pretrained(learner_path)
    eval_rows = heldout_rows(family.spec, settings.eval_problems)
    rows = train_rows_for_rl(family, settings)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "solution": r["solution"]} for r in rows])
    G = settings.num_generations
    temperature = spec.temperature(settings)
    args = S2LConfig(
        **trainer_kwargs(
            run_dir,
            seed,
            learning_rate=settings.learning_rate,
            num_generations=G,
            prompts_per_step=settings.prompts_per_step,
            max_completion_length=settings.max_completion_length,
            steps=settings.steps,
            temperature=temperature,
        ),
        explorer_mode="local",
        explorer_model=str(settings.explorer_model(family)),
        explorer_temperature=settings.explorer_temperature,
        explorer_top_p=1.0,
        explorer_max_tokens=settings.max_completion_length,
        explorer_prefetch=False,  # keeps the wall-time split readable: no explorer work hidden under training
        **spec.mix_config(settings.mix_steps),
    )
    recorder = RolloutRecorder(run_dir / "rollouts.jsonl", tokenizer)
    (run_dir / "rollouts.jsonl").write_text("")
    explorer = None
    if spec.explorer:
        if settings.explorer_backend not in ("local", "server"):
            raise ValueError(f"explorer_backend must be 'local' or 'server', got {settings.explorer_backend!r}.")
        # Seeded with the run's seed: the local explorer draws each call from a generator of its own seeded from it,
        # a server explorer gives every prompt a seed derived from it, so that a run repeats.
        sampling = SamplingSettings(
            temperature=settings.explorer_temperature,
            top_p=1.0,
            max_tokens=settings.max_completion_length,
            seed=seed,
        )
        explorer_path = str(settings.explorer_model(family))
        if explorer_factory is not None:
            inner = explorer_factory(explorer_path, tokenizer, sampling)
        else:
            inner = build_explorer(
                settings.explorer_backend,
                model=explorer_path,
                server_base_url=settings.explorer_server_base_url,
                sampling=sampling,
                tokenizer=tokenizer,
                batch_size=256,
            )
        explorer = RecordingExplorer(inner, recorder)
    model = AutoModelForCausalLM.from_pretrained(learner_path, dtype="float32")
    checksum = weights_checksum(model)
    trainer_cls = trainer_class()
    trainer = trainer_cls(model, [task.accuracy_reward], args=args, train_dataset=dataset, explorer=explorer)
    trainer.mini_recorder = recorder
    trainer.mini_learner_source = spec.learner_source
    per_step: list[dict] = []
    evals: list[dict] = []

    def fresh_stats() -> dict[str, float]:
        return dict.fromkeys(["learner_gen_s", "learner_tokens", "learner_rows", "generation_s", "scoring_s"], 0.0)

    trainer.mini_stats = fresh_stats()

    class Probe(TrainerCallback):
        """Per-step compute accounting and held-out evaluation (its time is excluded from the step's wall)."""

        def __init__(self):
            self.clock = StepClock()
            self.explorer_s = 0.0
            self.explorer_tokens = 0

        def on_train_begin(self, args_, state, control, **kwargs):
            evals.append({"step": 0, **evaluate(trainer.model, tokenizer, eval_rows, settings.eval_samples, seed)})

        def on_step_begin(self, args_, state, control, **kwargs):
            self.clock.start()

        def on_step_end(self, args_, state, control, **kwargs):
            wall, cpu = self.clock.stop()
            stats = trainer.mini_stats
            e_s = explorer.seconds - self.explorer_s if explorer else 0.0
            e_tok = explorer.tokens - self.explorer_tokens if explorer else 0
            if explorer:
                self.explorer_s, self.explorer_tokens = explorer.seconds, explorer.tokens
            step = state.global_step
            per_step.append(
                {
                    "step": step,
                    "learner_tokens": int(stats["learner_tokens"]),
                    "learner_rows": int(stats["learner_rows"]),
                    "explorer_tokens": int(e_tok),
                    "explorer_gen_s": round(e_s, 4),
                    "learner_gen_s": round(stats["learner_gen_s"], 4),
                    "scoring_s": round(stats["scoring_s"], 4),
                    # Explorer and learner generation run concurrently (S2L overlaps them); "other generation" is
                    # the generation wall not covered by the learner's own generation (waiting for the explorer).
                    "generation_wall_s": round(stats["generation_s"], 4),
                    "training_s": round(max(0.0, wall - stats["generation_s"] - stats["scoring_s"]), 4),
                    "step_wall_s": round(wall, 4),
                    "step_cpu_s": round(cpu, 4),
                }
            )
            trainer.mini_stats = fresh_stats()
            recorder.flush(step)
            if step % settings.eval_every == 0 or step == settings.steps:
                ends_only = settings.pass_at_1_at_ends_only and step != settings.steps
                samples = 0 if ends_only else settings.eval_samples
                evals.append({"step": step, **evaluate(trainer.model, tokenizer, eval_rows, samples, seed)})
                if echo:
                    alpha = _alpha(args, step)
                    print(
                        f"[{spec.name}] step {step:4d} | alpha {alpha:.2f} | explorer rows/group "
                        f"{split_group(alpha, G)[0]} | held-out greedy {100 * evals[-1]['greedy_accuracy']:5.1f}% "
                        f"| pass@1 {100 * evals[-1]['pass@1']:5.1f}%",
                        flush=True,
                    )

    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the per-step dicts would drown the progress bar; they are in log_history
    trainer.add_callback(Probe())
    start = time.perf_counter()
    trainer.train()
    result = {
        "method": spec.name,
        "seed": seed,
        "settings": asdict(settings),
        "learner": str(learner_path),
        "explorer": str(settings.explorer_model(family)) if spec.explorer else None,
        # Which family build, which checkpoints (step, held-out accuracy measured at build time, checksum) and which
        # machine: what a result is conditional on.
        "family": family_record(family),
        "learner_start": regime.selection_of(learner_path, family, settings.learner),
        "explorer_start": regime.selection_of(settings.explorer_model(family), family, settings.explorer),
        "environment": environment_record(),
        "temperature": temperature,
        # Which sampling mode produced this run's numbers (README: only a foreground / seeded explorer repeats).
        "explorer_sampling": explorer_sampling(explorer, settings.explorer_backend),
        "initial_weights_sha256": checksum,
        "evals": evals,
        "per_step": per_step,
        "schedule_learner_rows": [
            settings.prompts_per_step * split_group(_alpha(args, s), G)[1] for s in range(1, settings.steps + 1)
        ],
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    if save_model_to is not None:
        trainer.model.save_pretrained(save_model_to)
        tokenizer.save_pretrained(save_model_to)
        result["saved_model"] = {"path": str(save_model_to), "weights_sha256": weights_checksum(trainer.model)}
    if settings.final_passk_n:
        result["final_passk"] = _final_passk(trainer.model, tokenizer, eval_rows, settings, seed, run_dir)
    write_json_atomic(run_dir / "trainer_state.json", {"log_history": trainer.state.log_history})
    write_json_atomic(run_dir / "run.json", result)
    return result


def family_record(family: Family) -> dict:
    """The family build a run used: folder, family seed, numerics, its largest size's final checksum."""
    return {
        "root": str(family.root),
        "family_seed": family.spec.family_seed,
        "numerics": family.spec.numerics,
        "label": family.label,
        "built_on": family.manifest.get("environment", {}).get("processor"),
    }


def _passk_settings(settings: RLSettings, seed: int) -> PasskSettings:
    return PasskSettings(
        n=settings.final_passk_n,
        num_problems=settings.eval_problems,
        temperature=settings.temperature,
        max_tokens=settings.max_completion_length,
        seed=seed,
    )


def _final_passk(model, tokenizer, rows: list[dict], settings: RLSettings, seed: int, run_dir: Path) -> dict:
    """pass@k (answers and coherent derivations, k = 1..n) of the trained learner on the held-out problems, sampled
    by the same engine as the reference models' (:func:`start_passk`); the full result goes to ``passk_final.json``,
    run.json keeps the curves and the per-problem counts (what paired differences need)."""
    import tempfile

    from .passk_experiment import score_model

    with tempfile.TemporaryDirectory(prefix="mini-final-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        scored = score_model(
            Path(tmp), rows, _passk_settings(settings, seed), sum(p.numel() for p in model.parameters())
        )
    scored["model"] = "trained learner"
    write_json_atomic(run_dir / "passk_final.json", scored)
    return {
        "n": settings.final_passk_n,
        "seed": seed,
        "sampling_seconds": scored["sampling_seconds"],
        **{judge: {k: scored[judge][k] for k in ("pass@k", "correct_counts")} for judge in ("math_verify", "coherent")},
    }


def start_passk(family: Family, settings: RLSettings, out_dir: Path) -> dict:
    """pass@k of the starting learner and of the explorer on the runs' held-out problems (the reference curves of the
    trained learners'), under ``out_dir/passk_start`` (cached like every pass@k result)."""
    from .passk_experiment import passk_of_models

    models = {
        f"{settings.learner} (start)": settings.learner_model(family),
        settings.explorer: settings.explorer_model(family),
    }
    return passk_of_models(
        models,
        heldout_rows(family.spec, settings.eval_problems),
        _passk_settings(settings, 0),
        Path(out_dir) / "passk_start",
        title="starting learner and explorer on the RL runs' held-out problems",
    )


def _alpha(args, step: int) -> float:
    return mix_alpha(step, args.mix_schedule, args.mix_steps, args.mix_alpha_start, args.mix_alpha_end)


def run_experiment(
    family: Family, settings: RLSettings, out_dir: str | Path, methods: list[str], ablation_seeds: list[int]
) -> dict:
    """Runs every (method, seed), then writes ``rl.json``, ``rl.md``, ``rl.png`` (and ``rl_paired.png``, and with
    ``final_passk_n`` ``rl_passk.png`` and the reference ``passk_start/``) under ``out_dir``."""
    from tqdm import tqdm

    settings.learner_model(family), settings.explorer_model(family)  # a band no checkpoint meets fails here, first
    out_dir = Path(out_dir)
    main = {m.name for m in MAIN_METHODS}
    jobs = [(m, s) for m in methods for s in (settings.seeds if m in main else ablation_seeds)]
    runs = []
    for name, seed in tqdm(jobs, desc="runs"):
        runs.append(run_one(family, settings, name, seed, out_dir))
    # The reference curves (starting learner, explorer) only where the trained learners' pass@k is measured.
    start = start_passk(family, settings, out_dir) if settings.final_passk_n else None
    report = rl_report.build_report(runs, settings, out_dir, start_passk=start)
    rl_report.write_report(report, out_dir)
    return report


def start_line(family: Family, settings: RLSettings) -> str:
    """Which family build and which checkpoints a run starts from, with their held-out accuracy (measured when the
    family was built) and checksums: the regime the run is in."""
    learner = regime.selection_of(settings.learner_model(family), family, settings.learner)
    explorer = regime.selection_of(settings.explorer_model(family), family, settings.explorer)
    how = f"first checkpoint with held-out {settings.learner_band}" if settings.learner_band else "as asked"
    parts = [f"[start] family {family.label} at {family.root}"]
    if learner:
        parts.append(
            f"learner {settings.learner} at SFT step {learner['step']} ({how}: greedy "
            f"{100 * learner['greedy_accuracy']:.1f}%, pass@1 {100 * learner['pass@1']:.1f}%, weights "
            f"{learner['weights_sha256']})"
        )
    if explorer:
        how = f"first checkpoint with held-out {settings.explorer_band}" if settings.explorer_band else "final"
        parts.append(
            f"explorer {settings.explorer} at SFT step {explorer['step']} ({how}: pass@1 "
            f"{100 * explorer['pass@1']:.1f}%)"
        )
    return "; ".join(parts)


def demo(family: Family, settings: RLSettings, out_dir: str | Path) -> tuple[str, dict]:
    """The README's main job: one S2L-PO run and one GRPO run from the same learner weights, a table of held-out
    greedy accuracy against steps, a curves PNG, and the end-of-run check of what the main job claims
    (:func:`.rl_report.demo_verdict`). Previous demo runs in ``out_dir`` are replaced (a demo trains). Returns the
    printed text and the verdict."""
    import shutil

    out_dir = Path(out_dir)
    start = start_line(family, settings)  # a learner band no checkpoint meets fails here, first
    print(start, flush=True)
    if (out_dir / "runs").exists():
        shutil.rmtree(out_dir / "runs")
    seed = settings.seeds[0]
    runs = {m: run_one(family, settings, m, seed, out_dir, echo=True) for m in ("s2l_po", "grpo")}
    if runs["s2l_po"]["initial_weights_sha256"] != runs["grpo"]["initial_weights_sha256"]:
        raise RuntimeError("the two demo runs did not start from the same weights.")
    text = start + "\n\n" + rl_report.demo_table(runs, settings, out_dir / "curves.png")
    verdict = rl_report.demo_verdict(runs)
    text += verdict["line"] + "\n"
    (out_dir / "demo.md").write_text(text)
    write_json_atomic(out_dir / "demo_verdict.json", verdict)
    return text, verdict


def run_over_families(
    families: Callable[[int], Family],
    family_seeds: list[int],
    settings: RLSettings,
    out_dir: str | Path,
    methods: list[str],
    title: str = "",
) -> str:
    """The RL experiment on several family builds (``families(k)`` builds or reuses build ``k``): per build the usual
    report under ``out_dir/family<k>``, then the comparison over builds (:mod:`.families_report`) under ``out_dir``.
    Every run is cached, so an interrupted experiment resumes where it stopped."""
    from . import families_report

    out_dir = Path(out_dir)
    unavailable = {}
    for k in family_seeds:
        try:
            run_experiment(families(k), settings, out_dir / f"family{k}", methods, [])
        except regime.RegimeError as exc:  # this build has no checkpoint in a band: the regime does not exist there
            unavailable[k] = str(exc)
    built = [k for k in family_seeds if k not in unavailable]
    runs = families_report.load_runs(out_dir, built, methods, settings.seeds)
    report = families_report.build_report(runs, unavailable=unavailable)
    return families_report.write_report(report, out_dir, title)
