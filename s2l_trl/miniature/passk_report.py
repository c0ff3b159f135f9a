"""Tables and plots of pass@k experiments (:mod:`.passk_experiment`): the crossover point of each smaller / larger
pair, ``passk.json``, ``passk.md`` and ``passk.png`` (correct answers and coherent derivations)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..evaluation.passk import pass_at_k
from ..jsonl import write_json_atomic
from . import figures
from .settings import PasskSettings
from .stats import mean_ci

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


def paired_difference(a: dict, b: dict, k: int, judge: str = "math_verify") -> dict[str, float]:
    """pass@k of model ``a`` minus model ``b`` on the same problems: mean of the per-problem differences of the
    unbiased pass@k estimates, with a 95% Student-t interval over problems (problems are the unit that varies).
    ``judge``: ``math_verify`` (correct answer) or ``coherent`` (correct derivation)."""
    n = a[judge]["num_samples"]
    diffs = [
        pass_at_k(n, ca, k) - pass_at_k(n, cb, k)
        for ca, cb in zip(a[judge]["correct_counts"], b[judge]["correct_counts"])
    ]
    return mean_ci(diffs)


def summarize_models(results: dict[str, dict], settings: PasskSettings, title: str, extra: dict) -> dict:
    """``passk.json``: per model its parameter count and pass@k curve (answers and coherent derivations), and the
    crossover k of every (smaller, larger) pair."""
    labels = list(results)
    curves = {m: results[m]["math_verify"]["pass@k"] for m in labels}
    by_params = sorted(labels, key=lambda m: results[m]["parameters"])
    pairs = [(a, b) for i, a in enumerate(by_params) for b in by_params[i + 1 :]]
    cross = {f"{a}<{b}": crossover_k(curves, a, b) for a, b in pairs}
    # The larger model minus the smaller at k = 1 and k = n, per problem: is a crossover more than a few problems?
    n = settings.n
    ks = sorted({1, min(16, n), n})
    differences = {
        f"{b}-{a}": {
            f"{label}pass@{k}": paired_difference(results[b], results[a], k, judge)
            for judge, label in (("math_verify", ""), ("coherent", "coherent "))
            for k in ks
        }
        for a, b in pairs
    }
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
        "larger_minus_smaller": differences,
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
        "Larger minus smaller, mean over problems of the per-problem difference (points) and 95% interval: "
        + "; ".join(
            f"{pair}: "
            + ", ".join(
                f"{key} {100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" for key, d in v.items()
            )
            for pair, v in summary.get("larger_minus_smaller", {}).items()
        ),
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
    plot(summary, output_dir / "passk.png")


def plot(summary: dict, output: Path) -> Path:
    """pass@k against k (log2 axis) of every model: correct answers, and fully coherent derivations. (The per-model
    folders are `s2l-eval` results too: ``s2l-eval plot <folders>`` draws the first panel.)"""
    sizes = summary["sizes"]
    fig, axes = figures.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in zip(axes, ("pass@k", "coherent_pass@k"), ("correct answer", "coherent derivation")):
        for m in sorted(sizes, key=lambda m: sizes[m]["parameters"]):
            ks = sorted(int(k) for k in sizes[m][key])
            marks = [i for i, k in enumerate(ks) if k & (k - 1) == 0]  # markers at powers of two
            label = f"{m} ({sizes[m]['parameters'] / 1e3:.0f}k)"
            ax.plot(ks, [100 * sizes[m][key][str(k)] for k in ks], marker="o", ms=3, markevery=marks, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples)")
        ax.set_ylabel(f"pass@k (%), {title}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle(summary["title"], fontsize="small")
    return figures.save(fig, output)
