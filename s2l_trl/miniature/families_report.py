"""The RL comparison over several family builds: every method's runs per family build and seed, paired by seed within
a build (same starting weights and prompt order), with intervals that count both sources of variation (seeds within
a build, builds within the construction: :func:`.stats.two_level_interval`). Reads only run files
(``<out>/family<k>/runs/<method>-seed<s>/run.json``); writes ``families.json``, ``families.md``, ``families.png``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..jsonl import write_json_atomic
from . import figures
from .rl_report import PAIRED_METRICS, _label
from .stats import mean_ci, two_level_interval

TOKENS = "learner_tokens"
# The main job runs the first DEMO_STEP steps of the early-learner experiment (recipes/tiny/miniature/demo_cpu.args):
# its claims (rl_report.DEMO_CLAIMS) are calibrated on these experiments' evaluations at that step.
DEMO_STEP = 80


# Paired against the baseline: not the gain (paired, it equals the difference at that step: one start per build).
PAIRED_KEYS = ("final_greedy", "mean_greedy", "final_pass@1", "greedy_at_demo_end")


def _greedy_at(run: dict, step: int) -> float:
    return next((e["greedy_accuracy"] for e in run["evals"] if e["step"] == step), float("nan"))


METRICS = {
    **PAIRED_METRICS,
    "greedy_at_demo_end": (
        f"greedy accuracy at step {DEMO_STEP} (the main job's end)",
        lambda r: _greedy_at(r, DEMO_STEP),
    ),
    "gain_at_demo_end": (
        f"greedy accuracy gained by step {DEMO_STEP}",
        lambda r: _greedy_at(r, DEMO_STEP) - r["evals"][0]["greedy_accuracy"],
    ),
}


def load_runs(out_dir: Path, family_seeds: list[int], methods: list[str], seeds: list[int]) -> dict:
    """``{family_seed: {method: {seed: run.json}}}`` of the runs that exist."""
    found: dict = {}
    for k in family_seeds:
        for m in methods:
            for s in seeds:
                path = Path(out_dir) / f"family{k}" / "runs" / f"{m}-seed{s}" / "run.json"
                if path.exists():
                    found.setdefault(k, {}).setdefault(m, {})[s] = json.loads(path.read_text())
    return found


def _value(run: dict, key: str) -> float:
    if key == TOKENS:
        return float(sum(x["learner_tokens"] for x in run["per_step"]))
    return METRICS[key][1](run)


def build_report(runs: dict, baseline: str = "grpo", unavailable: dict[int, str] | None = None) -> dict:
    """Per family build: its starting checkpoints and each method's mean over seeds; per method: the paired
    differences against ``baseline`` per build and pooled over builds (two-level interval), for every quantity of
    :data:`METRICS` (:data:`.rl_report.PAIRED_METRICS` and the greedy accuracy at the main job's end) and the
    learner's generated tokens (as a ratio to the baseline's).
    ``unavailable``: builds without a checkpoint in a band of the regime (why), listed as such."""
    families = {}
    for k, by_method in sorted(runs.items()):
        any_run = next(iter(next(iter(by_method.values())).values()))
        families[k] = {
            "label": (any_run.get("family") or {}).get("label"),
            "learner_start": any_run.get("learner_start"),
            "explorer_start": any_run.get("explorer_start"),
            "built_on": (any_run.get("family") or {}).get("built_on"),
            "start_greedy_accuracy": any_run["evals"][0]["greedy_accuracy"],
            "methods": {
                m: {
                    "seeds": sorted(per_seed),
                    **{key: mean_sd([_value(r, key) for r in per_seed.values()]) for key in (*METRICS, TOKENS)},
                }
                for m, per_seed in by_method.items()
            },
        }
    paired: dict = {}
    methods = sorted({m for by_method in runs.values() for m in by_method} - {baseline})
    for m in methods:
        paired[m] = {}
        for key in PAIRED_KEYS:
            by_family = {}
            for k, by_method in runs.items():
                if m in by_method and baseline in by_method:
                    common = sorted(set(by_method[m]) & set(by_method[baseline]))
                    by_family[k] = [_value(by_method[m][s], key) - _value(by_method[baseline][s], key) for s in common]
            paired[m][key] = _pooled(by_family)
        ratios = {}
        for k, by_method in runs.items():
            if m in by_method and baseline in by_method:
                common = sorted(set(by_method[m]) & set(by_method[baseline]))
                ratios[k] = [_value(by_method[m][s], TOKENS) / _value(by_method[baseline][s], TOKENS) for s in common]
        paired[m][TOKENS + "_ratio"] = _pooled(ratios)
    return {"baseline": baseline, "families": families, "paired": paired, "unavailable": dict(unavailable or {})}


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _pooled(by_family: dict) -> dict:
    """Per build: the seed differences and their mean [t interval]; pooled: the two-level interval (>= 2 builds)."""
    per_family = {
        k: {"differences": v, **(mean_ci(v) if len(v) > 1 else {"mean": v[0] if v else float("nan")})}
        for k, v in by_family.items()
    }
    pooled = two_level_interval(by_family) if sum(1 for v in by_family.values() if v) >= 2 else None
    return {"per_family": per_family, "pooled": pooled}


def _interval(p: dict | None, scale: float = 100.0, sign: bool = True) -> str:
    if not p or "low" not in p:
        return "-" if not p else f"{scale * p['mean']:+.1f}"
    fmt = "+.1f" if sign else ".2f"
    return f"{scale * p['mean']:{fmt}} [{scale * p['low']:{fmt}}, {scale * p['high']:{fmt}}]"


def render_markdown(report: dict, title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines += [
        "Starting checkpoints per family build (held-out accuracy measured when the family was built):",
        "",
        "| family build | learner start (step, greedy, pass@1) | explorer (step, pass@1) | built on |",
        "|---|---|---|---|",
    ]
    for k, f in report["families"].items():
        ls, es = f["learner_start"] or {}, f["explorer_start"] or {}
        learner = f"step {ls.get('step')}, {100 * ls.get('greedy_accuracy', float('nan')):.1f}%, "
        learner += f"{100 * ls.get('pass@1', float('nan')):.1f}%"
        explorer = f"step {es.get('step')}, {100 * es.get('pass@1', float('nan')):.1f}%" if es else "-"
        lines.append(f"| {f['label'] or k} | {learner} | {explorer} | {f['built_on']} |")
    for k, why in report.get("unavailable", {}).items():
        lines.append(f"| family_seed {k} | regime not available in this build: {why} | - | - |")
    methods = sorted({m for f in report["families"].values() for m in f["methods"]})
    keys = list(METRICS)
    lines += [
        "",
        "Mean ± sd over seeds, per family build:",
        "",
        "| family build | method | seeds | " + " | ".join(METRICS[k][0] + " (%)" for k in keys) + " | learner tokens |",
        "|---|---|---|" + "---|" * (len(keys) + 1),
    ]
    for k, f in report["families"].items():
        for m in methods:
            if m not in f["methods"]:
                continue
            r = f["methods"][m]
            cells = " | ".join(f"{100 * r[key]['mean']:.1f} ± {100 * r[key]['sd']:.1f}" for key in keys)
            lines.append(f"| {k} | {_label(m)} | {len(r['seeds'])} | {cells} | {r[TOKENS]['mean']:,.0f} |")
    base = _label(report["baseline"])
    lines += [
        "",
        f"Method minus {base}, paired by seed within each family build (points): per build the mean and its 95% t "
        "interval over seeds; pooled, the mean over every (build, seed) with a 95% interval over the builds' means "
        "(both sources of variation; t with builds - 1 degrees of freedom), and the sd between builds / within one:",
        "",
        "| method | quantity | " + " | ".join(f"build {k}" for k in report["families"]) + " | pooled | sd between "
        "builds / within |",
        "|---|---|" + "---|" * (len(report["families"]) + 2),
    ]
    for m, per_key in report["paired"].items():
        for key in (*PAIRED_KEYS, TOKENS + "_ratio"):
            entry = per_key[key]
            ratio = key.endswith("_ratio")
            scale, sign = (1.0, False) if ratio else (100.0, True)
            cells = " | ".join(_interval(entry["per_family"].get(k), scale, sign) for k in report["families"])
            pooled = entry["pooled"]
            spread = "-"
            if pooled:
                spread = f"{scale * pooled['sd_between_groups']:.{2 if ratio else 1}f} / "
                spread += f"{scale * pooled['sd_within_group']:.{2 if ratio else 1}f}"
            name = "learner tokens, ratio" if ratio else METRICS[key][0]
            lines.append(f"| {_label(m)} | {name} | {cells} | {_interval(pooled, scale, sign)} | {spread} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, output: Path) -> Path:
    """Paired differences against the baseline: per family build (mean and seed interval, one colour per build) and
    pooled (black, two-level interval), one panel per quantity."""
    keys = list(PAIRED_KEYS)
    methods = list(report["paired"])
    fig, axes = figures.subplots(1, len(keys), figsize=(4 * len(keys), 0.9 * len(methods) + 1.6))
    families = list(report["families"])
    for ax, key in zip(axes, keys):
        for y, m in enumerate(methods):
            entry = report["paired"][m][key]
            for i, k in enumerate(families):
                p = entry["per_family"].get(k)
                if not p:
                    continue
                yy = y - 0.25 + 0.5 * i / max(1, len(families) - 1)
                if "low" in p:
                    ax.errorbar(
                        100 * p["mean"],
                        yy,
                        xerr=[[100 * (p["mean"] - p["low"])], [100 * (p["high"] - p["mean"])]],
                        fmt="o",
                        ms=3,
                        color=f"C{i}",
                        capsize=2,
                        label=f"build {k}" if y == 0 else None,
                    )
                ax.scatter([100 * d for d in p["differences"]], [yy] * len(p["differences"]), s=5, color="grey")
            pooled = entry["pooled"]
            if pooled:
                ax.errorbar(
                    100 * pooled["mean"],
                    y + 0.4,
                    xerr=[[100 * (pooled["mean"] - pooled["low"])], [100 * (pooled["high"] - pooled["mean"])]],
                    fmt="s",
                    color="black",
                    capsize=3,
                    label="pooled" if y == 0 else None,
                )
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels([f"{_label(m)} - {_label(report['baseline'])}" for m in methods] if key == keys[0] else [])
        ax.invert_yaxis()
        ax.set_xlabel(f"{METRICS[key][0]}\n(points)", fontsize="small")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize="xx-small")
    return figures.save(fig, output)


def write_report(report: dict, out_dir: str | Path, title: str = "") -> str:
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "families.json", report)
    plot(report, out_dir / "families.png")
    text = render_markdown(report, title)
    (out_dir / "families.md").write_text(text)
    return text
