"""pass@k-vs-k curves from `s2l-eval` result folders: the paper's motivating figure (a smaller sibling overtaking a
larger one as k grows)."""

from __future__ import annotations

import json
from pathlib import Path

from ..preflight import InputError, MissingPathError


def load_results(result_dir: str | Path) -> dict[str, dict]:
    """``{benchmark: result}`` of every ``<bench>.json`` in a result folder (``summary.json`` excluded)."""
    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        raise MissingPathError(f"Result folder {str(result_dir)!r} does not exist.")
    results = {}
    for path in sorted(result_dir.glob("*.json")):
        if path.name == "summary.json":
            continue
        data = json.loads(path.read_text())
        if "math_verify" not in data:
            raise InputError(f"{path} is not an s2l-eval benchmark result (no 'math_verify' entry).")
        results[data.get("benchmark", path.stem)] = data
    if not results:
        raise InputError(f"{result_dir} holds no benchmark results (<bench>.json).")
    return results


def plot_passk(
    result_dirs: list[str | Path],
    output: str | Path,
    labels: list[str] | None = None,
    benchmarks: list[str] | None = None,
    judge: str = "math_verify",
) -> Path:
    """Draw pass@k against k (log2 axis): one panel per benchmark, one line per result folder.

    Args:
        result_dirs: `result/<model>_<timestamp>` folders written by `s2l-eval`.
        output: PNG path.
        labels: legend entries, one per folder (default: the folder names).
        benchmarks: panels to draw (default: every benchmark found in any folder, sorted).
        judge: ``"math_verify"`` or ``"official_compat"``.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training nodes
    import matplotlib.pyplot as plt

    if judge not in ("math_verify", "official_compat"):
        raise ValueError(f"judge must be 'math_verify' or 'official_compat', got {judge!r}.")
    if labels is not None and len(labels) != len(result_dirs):
        raise InputError(f"Got {len(labels)} labels for {len(result_dirs)} result folders.")
    runs = [load_results(d) for d in result_dirs]
    labels = labels or [Path(d).name for d in result_dirs]
    benchmarks = benchmarks or sorted({b for run in runs for b in run})
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(4.5 * len(benchmarks), 3.8), squeeze=False)
    for ax, bench in zip(axes[0], benchmarks):
        for label, run in zip(labels, runs):
            if bench not in run:
                continue
            passk = run[bench][judge]["pass@k"]
            ks = sorted(int(k) for k in passk)
            ax.plot(ks, [100 * passk[str(k)] for k in ks], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples)")
        ax.set_ylabel(f"pass@k (%, {judge})")
        ax.set_title(bench)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
