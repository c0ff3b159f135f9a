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
``codistill.png`` summarise them.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import task
from .family import Family, heldout_rows
from .passk_exp import write_json
from .rl import RLSettings, StepClock, evaluate, run_one, train_rows_for_rl, trainer_kwargs, weights_checksum

# name -> CoDistillConfig overrides of the KD reward.
CODISTILL_METHODS: dict[str, dict[str, Any]] = {
    "codistill": {"kd_mode": "token"},
    "codistill_sequence": {"kd_mode": "sequence"},
}
GRPO_RUNS = ("grpo_small", "grpo_large")
RUNS = GRPO_RUNS + tuple(CODISTILL_METHODS)

# CoDistill's per-step timings as the trainer logs them (seconds, mean over the step's micro-steps or rounds).
TIMING_METRICS = {
    "large_rollout_s": "codistill/large/rollout_time_s",
    "small_rollout_s": "codistill/small/rollout_time_s",
    "large_logp_s": "codistill/large/logp_time_s",
    "large_update_s": "codistill/large/update_time_s",
    "small_update_s": "codistill/small/update_time_s",
}
# Other logged per-step figures kept in run.json.
LOGGED_PER_STEP = {
    "kd_reward": "codistill/kd_reward",
    "is_weight_mean": "codistill/is_weight/mean",
    "is_weight_raw_max": "codistill/is_weight_raw/max",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "small_reward": "codistill/reward/small",
}


@dataclass
class CoDistillSettings:
    """One experiment's settings (recorded in every run.json). Sizes and SFT steps name members of the family."""

    small: str = "M"
    small_sft_step: int | None = 500
    large: str = "L"
    large_sft_step: int | None = 1000
    steps: int = 120
    num_generations: int = 8
    prompts_per_step: int = 4
    learning_rate: float = 5e-5  # the large model's, and GRPO's on either model
    small_learning_rate: float = 5e-5
    kd_coef: float = 0.1
    temperature: float = 1.0
    max_completion_length: int = 40
    eval_every: int = 20
    eval_problems: int = 128
    eval_samples: int = 4
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def grpo(self, role: str) -> RLSettings:
        """The RLSettings of plain GRPO on the ``role`` ("small" / "large") model, with the same budget."""
        shared = {f.name: getattr(self, f.name) for f in fields(RLSettings) if hasattr(self, f.name)}
        shared["learning_rate"] = self.small_learning_rate if role == "small" else self.learning_rate
        return RLSettings(
            **shared,
            learner=getattr(self, role),
            learner_sft_step=getattr(self, f"{role}_sft_step"),
        )


def validate(settings: CoDistillSettings, family: Family, runs: list[str]) -> None:
    """Bad settings fail here, before any run starts or anything is written."""
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; known: {list(RUNS)}.")
    for role in ("small", "large"):
        size, step = getattr(settings, role), getattr(settings, f"{role}_sft_step")
        if not family.path(size, step).is_dir():
            raise ValueError(
                f"{role}={size!r} at SFT step {step} is not in the family at {family.root} (sizes "
                f"{family.spec.sizes}, checkpoints {family.spec.checkpoints} and the final one)."
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
    small_path = family.path(settings.small, settings.small_sft_step)
    large_path = family.path(settings.large, settings.large_sft_step)
    tokenizer = AutoTokenizer.from_pretrained(large_path)
    eval_rows = heldout_rows(family.spec, settings.eval_problems)
    rows = train_rows_for_rl(family, settings.grpo("small"))
    dataset = Dataset.from_list([{"prompt": r["prompt"], "solution": r["solution"]} for r in rows])
    args = CoDistillConfig(
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
        **CODISTILL_METHODS[method],
    )
    large = AutoModelForCausalLM.from_pretrained(large_path, dtype="float32")
    small = AutoModelForCausalLM.from_pretrained(small_path, dtype="float32")
    checksums = {"small": weights_checksum(small), "large": weights_checksum(large)}
    trainer = CoDistillTrainer(large, [task.accuracy_reward], args=args, train_dataset=dataset, small_model=small)
    models = {"small": trainer.small_model, "large": trainer.model}
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
        "initial_weights_sha256": checksums,
        "evals": evals,
        "per_step": per_step,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(run_dir / "trainer_state.json", {"log_history": trainer.state.log_history})
    write_json(run_dir / "run.json", result)
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


def _step_value(step: dict, key: str) -> float | None:
    """A per-step figure; ``large_work_s`` is the large model's own work in a CoDistill step (its log-prob forward
    and its update: it samples nothing)."""
    if key == "large_work_s":
        if step.get("large_update_s") is None:
            return None
        return step["large_logp_s"] + step["large_update_s"]
    return step.get(key)


def _grpo_run(family: Family, settings: CoDistillSettings, name: str, seed: int, out_dir: Path) -> dict:
    """Plain GRPO on one of the two models (``rl.run_one`` at alpha = 0), in this experiment's shape."""
    role = name.removeprefix("grpo_")
    r = run_one(family, settings.grpo(role), "grpo", seed, out_dir, name=name)
    weights = r["initial_weights_sha256"]
    return {**r, "run": name, "evals": {role: r["evals"]}, "initial_weights_sha256": {role: weights}}


def _mean_sd(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarize(runs: list[dict]) -> dict:
    """Per (run, model): held-out curves (mean, sd over seeds) and final values; per run: step time statistics."""
    by_run: dict[str, list[dict]] = {}
    for r in runs:
        by_run.setdefault(r["run"], []).append(r)
    out: dict[str, Any] = {}
    for name, rs in by_run.items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "models": {}}
        for role in rs[0]["evals"]:
            steps = [e["step"] for e in rs[0]["evals"][role]]
            model: dict[str, Any] = {"steps": steps, "curve": {}}
            for key in ("greedy_accuracy", "pass@1"):
                per_eval = [[r["evals"][role][i][key] for r in rs] for i in range(len(steps))]
                stats = [_mean_sd(v) for v in per_eval]
                model["curve"][key] = {"mean": [m for m, _ in stats], "sd": [sd for _, sd in stats]}
                model[f"start_{key}"] = _mean_sd([r["evals"][role][0][key] for r in rs])
                model[f"final_{key}"] = _mean_sd([r["evals"][role][-1][key] for r in rs])
                model[f"final_{key}_per_seed"] = [r["evals"][role][-1][key] for r in rs]
            model["initial_weights_sha256"] = sorted({r["initial_weights_sha256"][role] for r in rs})
            entry["models"][role] = model
        # Step 1 pays one-off costs (first forward, optimizer state); the median of the rest is the steady state.
        for key in ("step_wall_s", "step_cpu_s", *TIMING_METRICS, "learner_gen_s", "training_s", "large_work_s"):
            values = [_step_value(s, key) for r in rs for s in r["per_step"][1:]]
            values = [v for v in values if v is not None]
            if values:
                entry[f"median_{key}"] = statistics.median(values)
        if name != "grpo_small":
            entry["large_rows_generated"] = statistics.fmean(
                sum(s["learner_rows"] if name == "grpo_large" else s["large_rows_generated"] for s in r["per_step"])
                for r in rs
            )
        out[name] = entry
    return out


def step_time_ratios(summary: dict) -> dict[str, float]:
    """Time per optimizer step under CoDistill over plain GRPO on each model (whole steps: CoDistill's trains both
    models), and the large model's own share of a CoDistill step over a GRPO step on it."""
    ratios = {}
    for run in CODISTILL_METHODS:
        if run not in summary:
            continue
        for base in GRPO_RUNS:
            if base not in summary:
                continue
            for key in ("step_wall_s", "step_cpu_s"):
                ratios[f"{run}/{base}:{key}"] = summary[run][f"median_{key}"] / summary[base][f"median_{key}"]
        if "grpo_large" in summary and "median_large_work_s" in summary[run]:
            # The large model's own share of a CoDistill step (wall, as the trainer times it) over a whole GRPO step
            # on it: what the large model costs when the small model's rollouts and update are someone else's bill.
            ratios[f"{run}/grpo_large:large_model_share_wall"] = (
                summary[run]["median_large_work_s"] / summary["grpo_large"]["median_step_wall_s"]
            )
    return ratios


def plot(summary: dict, output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, role in zip(axes[:2], ("small", "large")):
        for name, s in summary.items():
            m = s["models"].get(role)
            if m is None:
                continue
            mean, sd = m["curve"]["greedy_accuracy"]["mean"], m["curve"]["greedy_accuracy"]["sd"]
            ax.plot(m["steps"], [100 * x for x in mean], marker="o", ms=3, label=f"{name} (n={len(s['seeds'])})")
            low, high = [100 * (x - d) for x, d in zip(mean, sd)], [100 * (x + d) for x, d in zip(mean, sd)]
            ax.fill_between(m["steps"], low, high, alpha=0.15)
        ax.set_title(f"{role} model")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("held-out greedy accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    names = [n for n in RUNS if n in summary and "median_step_cpu_s" in summary[n]]
    ax = axes[2]
    ax.bar(names, [1000 * summary[n]["median_step_cpu_s"] for n in names], color="tab:blue", alpha=0.7, label="CPU")
    ax.plot(names, [1000 * summary[n]["median_step_wall_s"] for n in names], "ko", label="wall")
    ax.set_ylabel("median time per optimizer step (ms)")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(fontsize="x-small")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def _pct(pair: list[float]) -> str:
    return f"{100 * pair[0]:.1f} ± {100 * pair[1]:.1f}"


def render_markdown(report: dict) -> str:
    s, summary = report["settings"], report["runs"]
    lines = [
        f"Small model {s['small']} (SFT step {s['small_sft_step'] or 'final'}), large model {s['large']} (SFT step "
        f"{s['large_sft_step'] or 'final'}); {s['steps']} optimizer steps, G = {s['num_generations']}, "
        f"{s['prompts_per_step']} prompts/step, lr {s['learning_rate']} (large) / {s['small_learning_rate']} (small), "
        f"kd_coef {s['kd_coef']}, temperature {s['temperature']}. Held-out: {s['eval_problems']} problems, greedy "
        f"accuracy and pass@1 over {s['eval_samples']} samples. Mean ± sd over seeds {s['seeds']}.",
        "",
        "| run | model | seeds | start greedy (%) | final greedy (%) | final greedy per seed (%) | start pass@1 (%) "
        "| final pass@1 (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary.items():
        for role, m in r["models"].items():
            per_seed = ", ".join(f"{100 * v:.1f}" for v in m["final_greedy_accuracy_per_seed"])
            lines.append(
                f"| {name} | {role} | {len(r['seeds'])} | {_pct(m['start_greedy_accuracy'])} | "
                f"{_pct(m['final_greedy_accuracy'])} | {per_seed} | {_pct(m['start_pass@1'])} | "
                f"{_pct(m['final_pass@1'])} |"
            )
    lines += [
        "",
        "Median time per optimizer step (steps 2..N of every seed; ms). CPU = this process's CPU time, the figure to "
        "compare on a shared machine; wall in parentheses.",
        "",
        "| run | step CPU (wall) | large rollout | large log-prob forward | large update | small rollout "
        "| small update | rows the large model generated (per run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary.items():
        role = name.removeprefix("grpo_") if name in GRPO_RUNS else None

        def ms(key: str | None, r=r) -> str:
            v = r.get(f"median_{key}") if key else None
            return "-" if v is None else f"{1000 * v:.1f}"

        # A GRPO run's generation / training is its one model's rollout / update.
        columns = {
            "large_rollout": "learner_gen_s" if role == "large" else ("large_rollout_s" if role is None else None),
            "large_logp": "large_logp_s" if role is None else None,
            "large_update": "training_s" if role == "large" else ("large_update_s" if role is None else None),
            "small_rollout": "learner_gen_s" if role == "small" else ("small_rollout_s" if role is None else None),
            "small_update": "training_s" if role == "small" else ("small_update_s" if role is None else None),
        }
        cells = " | ".join(ms(key) for key in columns.values())
        lines.append(
            f"| {name} | {ms('step_cpu_s')} ({ms('step_wall_s')}) | {cells} | {r.get('large_rows_generated', '-')} |"
        )
    lines += ["", "Ratios of median step time:", ""]
    lines += [f"- `{k}`: {v:.2f}" for k, v in report["step_time_ratios"].items()]
    return "\n".join(lines) + "\n"


def run_codistill_experiment(
    family: Family, settings: CoDistillSettings, out_dir: str | Path, runs: list[str] | None = None
) -> dict:
    """Runs every (run, seed), then writes ``codistill.json``, ``codistill.md`` and ``codistill.png``."""
    from tqdm import tqdm

    runs = list(runs or RUNS)
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
    summary = summarize(results)
    report = {
        "settings": asdict(settings),
        "runs": summary,
        "step_time_ratios": step_time_ratios(summary),
        "device": "CPU only (2 cores, torch with 1 thread); no GPU was lent to this task",
    }
    write_json(out_dir / "codistill.json", report)
    plot(summary, out_dir / "codistill.png")
    (out_dir / "codistill.md").write_text(render_markdown(report))
    return report


__all__ = ["CODISTILL_METHODS", "RUNS", "CoDistillSettings", "run_codistill", "run_codistill_experiment"]
