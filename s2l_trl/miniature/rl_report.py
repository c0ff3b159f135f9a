"""Tables and plots of the RL experiment (:mod:`.rl_experiment`): per-method summaries over seeds (curves, steps to a
threshold, final values, compute), per-seed paired differences against GRPO with their 95% interval, rollout diversity
per source, ``rl.json`` / ``rl.md`` / ``rl.png``, and the README main job's table."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path

from ..jsonl import write_json_atomic
from ..schedule import mix_alpha, split_group
from . import diversity
from .curves import plot_run_curves
from .settings import METHODS, RLSettings
from .stats import paired_differences


def steps_to(evals: list[dict], key: str, threshold: float) -> int | None:
    """First evaluated step whose ``key`` reaches ``threshold`` (None: never within the run)."""
    for e in evals:
        if e[key] >= threshold:
            return e["step"]
    return None


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_runs(runs: list[dict], threshold: float) -> dict:
    """Per method: accuracy curves (mean, sd over seeds), steps to threshold, final values, compute, diversity."""
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    out = {}
    for method, rs in by_method.items():
        steps = [e["step"] for e in rs[0]["evals"]]
        curve = {}
        for key in ("greedy_accuracy", "pass@1", "greedy_coherent"):
            per_step = [[r["evals"][i][key] for r in rs] for i in range(len(steps))]
            curve[key] = {"mean": [_mean_sd(v)[0] for v in per_step], "sd": [_mean_sd(v)[1] for v in per_step]}
        reach = [steps_to(r["evals"], "greedy_accuracy", threshold) for r in rs]
        finals = [r["evals"][-1]["greedy_accuracy"] for r in rs]
        final_p1 = [r["evals"][-1]["pass@1"] for r in rs]
        bests = [max(e["greedy_accuracy"] for e in r["evals"]) for r in rs]
        compute = {
            key: _mean_sd([sum(s[key] for s in r["per_step"]) for r in rs])[0]
            for key in (
                "learner_tokens",
                "explorer_tokens",
                "learner_rows",
                "explorer_gen_s",
                "learner_gen_s",
                "scoring_s",
                "training_s",
                "generation_wall_s",
                "step_wall_s",
            )
        }
        out[method] = {
            "seeds": [r["seed"] for r in rs],
            "steps": steps,
            "curve": curve,
            "steps_to_threshold": reach,
            "final_greedy_accuracy": _mean_sd(finals),
            "final_greedy_accuracy_per_seed": finals,
            "final_pass@1": _mean_sd(final_p1),
            "best_greedy_accuracy": _mean_sd(bests),
            "compute_totals_mean": compute,
            "initial_weights_sha256": sorted({r["initial_weights_sha256"] for r in rs}),
        }
    return out


def rollout_diversity(run_dirs: list[Path], size: int, max_step: int | None = None) -> dict[str, dict[str, float]]:
    """Mean group diversity per source over the rollouts of ``run_dirs`` (groups truncated to ``size`` rows, so
    sources are compared at equal group size; groups smaller than ``size`` are skipped)."""
    groups: dict[str, list[list[str]]] = {}
    for d in run_dirs:
        for line in (d / "rollouts.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if max_step is not None and rec["step"] > max_step:
                continue
            groups.setdefault(rec["source"], []).append(rec["texts"])
    return {src: diversity.mean_diversity(g, size=size) for src, g in sorted(groups.items())}


def plot_curves(summary: dict, output: Path, threshold: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("greedy_accuracy", "pass@1")):
        for method, s in summary.items():
            mean, sd = s["curve"][key]["mean"], s["curve"][key]["sd"]
            ax.plot(s["steps"], [100 * m for m in mean], marker="o", ms=3, label=f"{method} (n={len(s['seeds'])})")
            ax.fill_between(
                s["steps"],
                [100 * (m - d) for m, d in zip(mean, sd)],
                [100 * (m + d) for m, d in zip(mean, sd)],
                alpha=0.15,
            )
        if key == "greedy_accuracy":
            ax.axhline(100 * threshold, color="grey", ls="--", lw=0.8, label="threshold")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"held-out {key} (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def _fmt(pair: tuple[float, float], scale: float = 100.0) -> str:
    m, s = pair
    return "-" if math.isnan(m) else f"{scale * m:.1f} ± {scale * s:.1f}"


def _label(name: str) -> str:
    return METHODS[name].label if name in METHODS else name


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"Learner {s['learner']} (SFT step {s['learner_sft_step'] or 'final'}), explorer {s['explorer']}, "
        f"{s['steps']} steps, G = {s['num_generations']}, {s['prompts_per_step']} prompts/step, lr "
        f"{s['learning_rate']}, T_mix = {s['mix_steps']}, temperature {s['temperature']} (high: "
        f"{s['high_temperature']}). Held-out greedy accuracy at step 0: {100 * report['start_greedy_accuracy']:.1f}%; "
        f"threshold {100 * report['threshold_greedy_accuracy']:.1f}%. Mean ± sd over seeds.",
        "",
        "| method | seeds | steps to threshold (per seed) | final greedy acc (%) | best greedy acc (%) "
        "| final pass@1 (%) | learner tokens | explorer tokens "
        "| learner gen s | explorer gen s | scoring s | training s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in report["methods"].items():
        c = r["compute_totals_mean"]
        reach = ", ".join("never" if x is None else str(x) for x in r["steps_to_threshold"])
        lines.append(
            f"| {m} | {len(r['seeds'])} | {reach} | {_fmt(r['final_greedy_accuracy'])} | "
            f"{_fmt(r['best_greedy_accuracy'])} | {_fmt(r['final_pass@1'])} | {c['learner_tokens']:.0f} | "
            f"{c['explorer_tokens']:.0f} | {c['learner_gen_s']:.1f} | {c['explorer_gen_s']:.1f} | "
            f"{c['scoring_s']:.1f} | {c['training_s']:.1f} |"
        )
    paired = report.get("paired_final_greedy_minus_grpo", {})
    if paired:
        lines += [
            "",
            "Final greedy accuracy, method minus GRPO seed by seed (same seed: same starting weights and prompts), "
            "mean and 95% Student-t interval:",
            "",
            "| method | seeds | per-seed difference (points) | mean (points) | 95% interval (points) |",
            "|---|---|---|---|---|",
        ]
        for m, p in paired.items():
            per_seed = ", ".join(f"{100 * d:+.1f}" for d in p["differences"])
            lines.append(
                f"| {_label(m)} | {len(p['seeds'])} | {per_seed} | {100 * p['mean']:+.1f} | "
                f"[{100 * p['low']:+.1f}, {100 * p['high']:+.1f}] |"
            )
    lines += [
        "",
        f"Rollout diversity per source (groups of {report['diversity_group_size']} rows, steps "
        f"{report['diversity_steps']}, mean over groups):",
        "",
        "| run | source | groups | distinct answers | distinct paths | mean pairwise edit distance |",
        "|---|---|---|---|---|---|",
    ]
    for m, per in report["diversity"].items():
        for src, d in per.items():
            if d.get("groups", 0) == 0:
                continue
            lines.append(
                f"| {m} | {src} | {d['groups']:.0f} | {d['distinct_answers']:.2f} | {d['distinct_paths']:.2f} | "
                f"{d['mean_pairwise_edit']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def paired_against(summary: dict, baseline: str = "grpo", key: str = "final_greedy_accuracy_per_seed") -> dict:
    """Per method: ``method - baseline`` of ``key`` seed by seed (same seed: same starting weights and prompt order),
    with the mean difference and its 95% Student-t interval; methods sharing fewer than 2 seeds with the baseline are
    left out."""
    if baseline not in summary:
        return {}
    base = dict(zip(summary[baseline]["seeds"], summary[baseline][key]))
    out = {}
    for name, s in summary.items():
        mine = dict(zip(s["seeds"], s[key]))
        if name != baseline and len(set(mine) & set(base)) >= 2:
            out[name] = paired_differences(mine, base)
    return out


def build_report(runs: list[dict], settings: RLSettings, out_dir: Path) -> dict:
    """The experiment's report (``rl.json``) from its runs' ``run.json`` and their rollouts under ``out_dir``."""
    start_acc = runs[0]["evals"][0]["greedy_accuracy"]
    # A fixed share of the headroom above the common start, set before any run: an absolute gain would be unreachable
    # for a learner that starts near 100%.
    threshold = round(start_acc + settings.threshold_gain * (1.0 - start_acc), 4)
    summary = summarize_runs(runs, threshold)
    size = settings.num_generations // 2  # every source has >= G/2 rows in a group for half of the mixing phase
    div = {}
    for m in ("s2l_po", "grpo", "grpo_high_temp"):
        dirs = [d for s in settings.seeds if (d := Path(out_dir) / "runs" / f"{m}-seed{s}").exists()]
        if dirs:
            div[m] = rollout_diversity(dirs, size=size, max_step=settings.mix_steps)
    return {
        "settings": asdict(settings),
        "threshold_greedy_accuracy": threshold,
        "start_greedy_accuracy": start_acc,
        "methods": summary,
        "paired_final_greedy_minus_grpo": paired_against(summary),
        "explorer_sampling": {r["method"]: r.get("explorer_sampling") for r in runs},
        "diversity_group_size": size,
        "diversity_steps": f"1..{settings.mix_steps}",
        "diversity": div,
        "device": "CPU only (2 cores); no GPU was lent to this task",
    }


def write_report(report: dict, out_dir: str | Path) -> None:
    """``rl.json``, ``rl.png`` and ``rl.md`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "rl.json", report)
    plot_curves(report["methods"], out_dir / "rl.png", report["threshold_greedy_accuracy"])
    (out_dir / "rl.md").write_text(render_markdown(report))


def demo_table(runs: dict[str, dict], settings: RLSettings, curves_png: Path) -> str:
    """The README main job's output: held-out accuracy of GRPO and S2L-PO against steps, tokens, the curves PNG."""
    G = settings.num_generations
    rows = [
        "| step | alpha | explorer rows / group | GRPO greedy acc (%) | S2L-PO greedy acc (%) | GRPO pass@1 (%) "
        "| S2L-PO pass@1 (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for g, s in zip(runs["grpo"]["evals"], runs["s2l_po"]["evals"]):
        step = g["step"]
        alpha = mix_alpha(max(step, 1), "linear", settings.mix_steps)
        mix = f"{alpha:.2f} | {split_group(alpha, G)[0]}" if step else "- (start) | -"
        rows.append(
            f"| {step} | {mix} | {100 * g['greedy_accuracy']:.1f} | "
            f"{100 * s['greedy_accuracy']:.1f} | {100 * g['pass@1']:.1f} | {100 * s['pass@1']:.1f} |"
        )
    learner_tokens = {m: sum(x["learner_tokens"] for x in r["per_step"]) for m, r in runs.items()}
    rows += [
        "",
        f"learner-generated tokens: GRPO {learner_tokens['grpo']}, S2L-PO {learner_tokens['s2l_po']} "
        f"(+ {sum(x['explorer_tokens'] for x in runs['s2l_po']['per_step'])} explorer tokens)",
    ]
    run_dirs = [curves_png.parent / "runs" / f"{m}-seed{settings.seeds[0]}" for m in ("grpo", "s2l_po")]
    rows.append(f"curves: {plot_run_curves(run_dirs, curves_png, ['GRPO', 'S2L-PO'])}")
    return "\n".join(rows) + "\n"
