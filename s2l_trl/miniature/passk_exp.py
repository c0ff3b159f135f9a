"""Experiment 1: pass@k (k = 1..n) of each size of a family on held-out problems, sampled with the project's
sampling engine (`s2l_trl.sampling.engine`, in-process transformers backend) and scored with `s2l-eval`'s unbiased
pass@k (`s2l_trl.evaluation.passk`). Writes one `s2l-eval`-style result folder per size (so `s2l-eval plot` draws
them), plus ``passk.json``, ``passk.md`` and ``passk.png`` for the whole family."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..evaluation.passk import pass_at_k, summarize
from ..evaluation.plot import plot_passk
from ..explorers.base import SamplingSettings
from ..sampling.engine import EngineArguments
from . import diversity, task
from .family import Family, heldout_rows


def write_json(path: Path, data) -> None:
    """Atomic write: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def sample_size(
    model_dir: Path, rows: list[dict], n: int, temperature: float, seed: int, batch_size: int = 1024
) -> list[list[str]]:
    """``n`` completions per row (grouped per row), at ``temperature`` with top-p 1."""
    from tqdm import tqdm

    settings = SamplingSettings(temperature=temperature, top_p=1.0, max_tokens=40, seed=seed)
    engine = EngineArguments(backend="local", batch_size=batch_size).build_engine(str(model_dir), settings)
    ids = engine.encode_batch([r["prompt"] for r in rows])
    per_request = max(1, batch_size // n)
    groups: list[list[str]] = []
    with tqdm(total=len(rows), desc=f"sample {model_dir.name}", mininterval=5) as bar:
        for _, completions in engine.stream(rows, ids, n, batch_prompts=per_request, progress=bar):
            groups.append([c.text for c in completions])
    engine.close()
    return groups


def crossover_k(curves: dict[str, dict[str, float]], small: str, large: str) -> int | None:
    """Smallest k at which ``small``'s pass@k exceeds ``large``'s, given ``large`` wins pass@1; None otherwise."""
    ks = sorted(int(k) for k in curves[small])
    if curves[small]["1"] >= curves[large]["1"]:
        return None
    for k in ks:
        if curves[small][str(k)] > curves[large][str(k)]:
            return k
    return None


def run_passk(
    family: Family,
    output_dir: str | Path,
    n: int = 256,
    num_problems: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    step: int | None = None,
) -> dict:
    """Sample, score and plot; a size whose result file exists is not sampled again (resumable)."""
    output_dir = Path(output_dir)
    rows = heldout_rows(family.spec, num_problems)
    ks = list(range(1, n + 1))
    sizes = family.spec.sizes
    results = {}
    for size in sizes:
        out = output_dir / size / "miniature.json"
        if out.exists():
            results[size] = json.loads(out.read_text())
            continue
        start = time.perf_counter()
        groups = sample_size(family.path(size, step), rows, n, temperature, seed)
        correct = [sum(task.is_correct(t, r["solution"]) for t in g) for g, r in zip(groups, rows)]
        coherent = [sum(task.is_coherent(t, r["operands"]) for t in g) for g, r in zip(groups, rows)]
        result = {
            "benchmark": "miniature",
            "model": str(family.path(size, step)),
            "parameters": family.manifest["models"][size]["parameters"],
            "temperature": temperature,
            "math_verify": summarize(correct, n, ks),
            "coherent": summarize(coherent, n, ks),
            "diversity_at_8": diversity.mean_diversity(groups, size=8),
            "sampling_seconds": round(time.perf_counter() - start, 1),
            "examples": [g[:4] for g in groups[:3]],
        }
        write_json(out, result)
        results[size] = result
    curves = {s: results[s]["math_verify"]["pass@k"] for s in sizes}
    by_params = sorted(sizes, key=lambda s: results[s]["parameters"])
    cross = {f"{a}<{b}": crossover_k(curves, a, b) for i, a in enumerate(by_params) for b in by_params[i + 1 :]}
    summary = {
        "family": str(family.root),
        "construction": family.spec.construction,
        "sft_step": step or family.spec.sft_steps,
        "n": n,
        "num_problems": num_problems,
        "temperature": temperature,
        "sizes": {s: {"parameters": results[s]["parameters"], "pass@k": curves[s]} for s in sizes},
        "crossover_k": cross,
    }
    write_json(output_dir / "passk.json", summary)
    show = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
    lines = [
        f"pass@k (%) on {num_problems} held-out problems, n = {n} samples each, temperature {temperature}, "
        f"family `{family.spec.construction}` at SFT step {step or family.spec.sft_steps}",
        "",
        "| size | parameters | " + " | ".join(f"pass@{k}" for k in show) + " |",
        "|---|---|" + "---|" * len(show),
    ]
    for s in by_params:
        vals = " | ".join(f"{100 * curves[s][str(k)]:.1f}" for k in show)
        lines.append(f"| {s} | {results[s]['parameters']:,} | {vals} |")
    lines += [
        "",
        "Crossover (smallest k where the smaller size's pass@k exceeds the larger's, given the larger wins "
        "pass@1; `none` = no crossover): " + ", ".join(f"{pair}: {k or 'none'}" for pair, k in cross.items()),
    ]
    (output_dir / "passk.md").write_text("\n".join(lines) + "\n")
    plot_passk(
        [output_dir / s for s in by_params],
        output_dir / "passk.png",
        labels=[f"{s} ({results[s]['parameters'] / 1e3:.0f}k)" for s in by_params],
    )
    return summary


__all__ = ["crossover_k", "pass_at_k", "run_passk", "sample_size", "write_json"]
