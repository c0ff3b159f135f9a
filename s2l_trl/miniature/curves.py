"""Per-step training curves of any S2L-PO / GRPO run from TRL's ``log_history`` (``trainer_state.json``): reward per
source, alpha, and held-out accuracy where the run logged it (``run.json`` of the miniature runs)."""

from __future__ import annotations

import json
from pathlib import Path

from . import figures


def load_log_history(path: str | Path) -> list[dict]:
    """``log_history`` of a ``trainer_state.json`` (a file, a run folder, or a checkpoint folder holding one)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("**/trainer_state.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"no trainer_state.json under {str(path)!r}.")
        path = found[-1]
    data = json.loads(path.read_text())
    if "log_history" not in data:
        raise ValueError(f"{path} has no 'log_history' (not a transformers trainer_state.json).")
    return data["log_history"]


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of a logged metric (entries without it are skipped)."""
    pts = [(h["step"], h[key]) for h in history if key in h and "step" in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run_curves(run_paths: list[str | Path], output: str | Path, labels: list[str] | None = None) -> Path:
    """One PNG, three panels: reward per source (explorer, learner, all rows), alpha, held-out accuracy."""
    if labels is not None and len(labels) != len(run_paths):
        raise ValueError(f"got {len(labels)} labels for {len(run_paths)} runs.")
    labels = labels or [Path(p).name for p in run_paths]
    fig, axes = figures.subplots(1, 3, figsize=(14, 3.8))
    for label, path in zip(labels, run_paths):
        history = load_log_history(path)
        for key, style in (("s2l/reward/learner", "-"), ("s2l/reward/explorer", "--"), ("reward", ":")):
            steps, values = series(history, key)
            if steps:
                axes[0].plot(steps, values, style, label=f"{label}: {key.split('/')[-1]}")
        steps, values = series(history, "s2l/alpha")
        if steps:
            axes[1].plot(steps, values, label=label)
        run_json = Path(path) / "run.json" if Path(path).is_dir() else Path(path).parent / "run.json"
        if run_json.exists():
            evals = json.loads(run_json.read_text())["evals"]
            axes[2].plot(
                [e["step"] for e in evals],
                [100 * e["greedy_accuracy"] for e in evals],
                marker="o",
                label=f"{label}: greedy",
            )
            axes[2].plot([e["step"] for e in evals], [100 * e["pass@1"] for e in evals], "--", label=f"{label}: pass@1")
    for ax, title in zip(
        axes, ("reward per source (mean over rows)", "alpha (explorer fraction)", "held-out accuracy (%)")
    ):
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    return figures.save(fig, output)
