"""Tables and plots of the CoDistill experiment (:mod:`.codistill_experiment`): held-out curves of each model per
run, the large model's time per optimizer step against plain GRPO, ``codistill.json`` / ``codistill.md`` /
``codistill.png``."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..jsonl import write_json_atomic
from . import figures
from .settings import CODISTILL_METHODS, CODISTILL_RUNS, GRPO_RUNS, CoDistillSettings

# CoDistill's per-step timings as the trainer logs them (seconds, mean over the step's micro-steps or rounds).
TIMING_METRICS = {
    "large_rollout_s": "codistill/large/rollout_time_s",
    "small_rollout_s": "codistill/small/rollout_time_s",
    "large_logp_s": "codistill/large/logp_time_s",
    "small_logp_s": "codistill/small/logp_time_s",
    "large_update_s": "codistill/large/update_time_s",
    "small_update_s": "codistill/small/update_time_s",
}
# Other logged per-step figures kept in run.json.
LOGGED_PER_STEP = {
    "kd_reward": "codistill/kd_reward",
    "kd_kl": "codistill/kd_kl",
    "is_weight_mean": "codistill/is_weight/mean",
    "is_weight_raw_max": "codistill/is_weight_raw/max",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "small_reward": "codistill/reward/small",
}


def _step_value(step: dict, key: str) -> float | None:
    """A per-step figure; ``large_work_s`` is the large model's own work in a CoDistill step (its log-prob forward
    and its update: it samples nothing)."""
    if key == "large_work_s":
        if step.get("large_update_s") is None:
            return None
        return step["large_logp_s"] + step["large_update_s"]
    return step.get(key)


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
    fig, axes = figures.subplots(1, 3, figsize=(14, 3.8))
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
    names = [n for n in CODISTILL_RUNS if n in summary and "median_step_cpu_s" in summary[n]]
    ax = axes[2]
    ax.bar(names, [1000 * summary[n]["median_step_cpu_s"] for n in names], color="tab:blue", alpha=0.7, label="CPU")
    ax.plot(names, [1000 * summary[n]["median_step_wall_s"] for n in names], "ko", label="wall")
    ax.set_ylabel("median time per optimizer step (ms)")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(fontsize="x-small")
    ax.grid(True, axis="y", alpha=0.3)
    return figures.save(fig, output)


def _pct(pair: list[float]) -> str:
    return f"{100 * pair[0]:.1f} ± {100 * pair[1]:.1f}"


def _start(settings: dict, role: str) -> str:
    """Where a role's model starts: the band that picked it (it overrides the SFT step), else the SFT step."""
    band = settings.get(f"{role}_band")
    if band:
        return f"first checkpoint with held-out {band} (greedy, %)"
    return f"SFT step {settings[f'{role}_sft_step'] or 'final'}"


def render_markdown(report: dict) -> str:
    s, summary = report["settings"], report["runs"]
    lines = [
        f"Small model {s['small']} ({_start(s, 'small')}), large model {s['large']} ({_start(s, 'large')}); "
        f"{s['steps']} optimizer steps, G = {s['num_generations']}, "
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


def build_report(results: list[dict], settings: CoDistillSettings) -> dict:
    summary = summarize(results)
    return {
        "settings": asdict(settings),
        "runs": summary,
        "step_time_ratios": step_time_ratios(summary),
        "device": "CPU only (2 cores, torch with 1 thread); no GPU was lent to this task",
    }


def write_report(report: dict, out_dir: str | Path) -> None:
    """``codistill.json``, ``codistill.png`` and ``codistill.md`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "codistill.json", report)
    plot(report["runs"], out_dir / "codistill.png")
    (out_dir / "codistill.md").write_text(render_markdown(report))
