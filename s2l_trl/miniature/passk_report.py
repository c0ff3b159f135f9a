"""Tables and plots of pass@k experiments (:mod:`.passk_experiment`): the crossover point of each smaller / larger
pair, ``passk.json``, ``passk.md`` and ``passk.png`` (drawn by `s2l-eval plot`'s :func:`plot_passk`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..evaluation.plot import plot_passk
from ..jsonl import write_json_atomic
from .settings import PasskSettings

SHOWN_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def crossover_k(curves: dict[str, dict[str, float]], small: str, large: str) -> int | None:
    """Smallest k at which ``small``'s pass@k exceeds ``large``'s, given ``large`` wins pass@1; None otherwise."""
    ks = sorted(int(k) for k in curves[small])
    if curves[small]["1"] >= curves[large]["1"]:
        return None
    for k in ks:
        if curves[small][str(k)] > curves[large][str(k)]:
            return k
    return None


def summarize_models(results: dict[str, dict], settings: PasskSettings, title: str, extra: dict) -> dict:
    """``passk.json``: per model its parameter count and pass@k curve (answers and coherent derivations), and the
    crossover k of every (smaller, larger) pair."""
    labels = list(results)
    curves = {m: results[m]["math_verify"]["pass@k"] for m in labels}
    by_params = sorted(labels, key=lambda m: results[m]["parameters"])
    cross = {f"{a}<{b}": crossover_k(curves, a, b) for i, a in enumerate(by_params) for b in by_params[i + 1 :]}
    return {
        **extra,
        "title": title,
        **asdict(settings),
        "sizes": {
            m: {
                "parameters": results[m]["parameters"],
                "pass@k": curves[m],
                "coherent_pass@k": results[m]["coherent"]["pass@k"],
            }
            for m in labels
        },
        "crossover_k": cross,
    }


def render_markdown(summary: dict) -> str:
    show = [k for k in SHOWN_KS if k <= summary["n"]]
    sizes = summary["sizes"]
    by_params = sorted(sizes, key=lambda m: sizes[m]["parameters"])
    lines = [
        f"pass@k (%) on {summary['num_problems']} held-out problems, n = {summary['n']} samples each, temperature "
        f"{summary['temperature']}, {summary['title']}",
        "",
        "| model | parameters | " + " | ".join(f"pass@{k}" for k in show) + " |",
        "|---|---|" + "---|" * len(show),
    ]
    for m in by_params:
        vals = " | ".join(f"{100 * sizes[m]['pass@k'][str(k)]:.1f}" for k in show)
        lines.append(f"| {m} | {sizes[m]['parameters']:,} | {vals} |")
    lines += [
        "",
        "Crossover (smallest k where the smaller model's pass@k exceeds the larger's, given the larger wins "
        "pass@1; `none` = no crossover): "
        + ", ".join(f"{pair}: {k or 'none'}" for pair, k in summary["crossover_k"].items()),
    ]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, results: dict[str, dict], output_dir: str | Path) -> None:
    """``passk.json``, ``passk.md`` and ``passk.png`` (pass@k against k, one line per model) under ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "passk.json", summary)
    (output_dir / "passk.md").write_text(render_markdown(summary))
    by_params = sorted(results, key=lambda m: results[m]["parameters"])
    plot_passk(
        [output_dir / m for m in by_params],
        output_dir / "passk.png",
        labels=[f"{m} ({results[m]['parameters'] / 1e3:.0f}k)" for m in by_params],
    )
