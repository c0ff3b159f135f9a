"""Experiment 1 and the crossover constructions: pass@k (k = 1..n) of several models on the same held-out problems,
sampled with the project's sampling engine (`s2l_trl.sampling.engine`, in-process transformers backend) and scored
with `s2l-eval`'s unbiased pass@k (`s2l_trl.evaluation.passk`). Writes one `s2l-eval`-style result folder per model
(so `s2l-eval plot` draws them); ``passk.json``, ``passk.md`` and ``passk.png`` come from :mod:`.passk_report`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..evaluation.passk import summarize
from ..explorers.base import SamplingSettings
from ..jsonl import write_json_atomic
from ..sampling.engine import EngineArguments
from . import diversity, passk_report, task
from .family import Family, heldout_rows
from .settings import PasskSettings


def sample_groups(
    model_dir: Path,
    rows: list[dict],
    n: int,
    temperature: float,
    seed: int,
    max_tokens: int = 40,
    batch_size: int = 1024,
) -> list[list[str]]:
    """``n`` completions per row (grouped per row), at ``temperature`` with top-p 1."""
    from tqdm import tqdm

    settings = SamplingSettings(temperature=temperature, top_p=1.0, max_tokens=max_tokens, seed=seed)
    engine = EngineArguments(backend="local", batch_size=batch_size).build_engine(str(model_dir), settings)
    ids = engine.encode_batch([r["prompt"] for r in rows])
    per_request = max(1, batch_size // n)
    groups: list[list[str]] = []
    with tqdm(total=len(rows), desc=f"sample {Path(model_dir).name}", mininterval=5) as bar:
        for _, completions in engine.stream(rows, ids, n, batch_prompts=per_request, progress=bar):
            groups.append([c.text for c in completions])
    engine.close()
    return groups


def score_model(model_dir: Path, rows: list[dict], settings: PasskSettings, parameters: int) -> dict:
    """One model's `s2l-eval`-style result on ``rows``: pass@k of the answer and of fully coherent derivations,
    diversity of 8 samples and a few example groups."""
    ks = list(range(1, settings.n + 1))
    start = time.perf_counter()
    groups = sample_groups(model_dir, rows, settings.n, settings.temperature, settings.seed, settings.max_tokens)
    correct = [sum(task.is_correct(t, r["solution"]) for t in g) for g, r in zip(groups, rows)]
    coherent = [sum(task.is_coherent(t, r["operands"]) for t in g) for g, r in zip(groups, rows)]
    return {
        "benchmark": "miniature",
        "model": str(model_dir),
        "parameters": parameters,
        "temperature": settings.temperature,
        # Correctness is the exact match of the boxed integer; stored under `math_verify` so that `s2l-eval plot`
        # reads the file.
        "math_verify": summarize(correct, settings.n, ks),
        "coherent": summarize(coherent, settings.n, ks),
        "diversity_at_8": diversity.mean_diversity(groups, size=min(8, settings.n)),
        "sampling_seconds": round(time.perf_counter() - start, 1),
        "examples": [g[:4] for g in groups[:3]],
    }


def num_parameters(model_dir: Path) -> int:
    """Parameter count of a saved model, from its config (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def passk_of_models(
    models: dict[str, Path],
    rows: list[dict],
    settings: PasskSettings,
    output_dir: str | Path,
    title: str,
    parameters: dict[str, int] | None = None,
    extra: dict | None = None,
) -> dict:
    """pass@k of every model (label -> folder) on ``rows``; a model whose result file exists is not sampled again.
    Crossovers are looked for between every smaller and larger model (by parameter count)."""
    output_dir = Path(output_dir)
    results = {}
    for label, path in models.items():
        out = output_dir / label / "miniature.json"
        if out.exists():
            results[label] = json.loads(out.read_text())
            continue
        count = (parameters or {}).get(label) or num_parameters(path)
        results[label] = score_model(Path(path), rows, settings, count)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, results[label])
    summary = passk_report.summarize_models(results, settings, title, extra or {})
    passk_report.write_report(summary, results, output_dir)
    return summary


def run_passk(
    family: Family, output_dir: str | Path, settings: PasskSettings | None = None, step: int | None = None
) -> dict:
    """pass@k of every size of ``family`` (at SFT ``step``; default: final) on its held-out problems."""
    settings = settings or PasskSettings()
    rows = heldout_rows(family.spec, settings.num_problems)
    sizes = family.spec.sizes
    return passk_of_models(
        {s: family.path(s, step) for s in sizes},
        rows,
        settings,
        output_dir,
        title=f"family `{family.spec.construction}` at SFT step {step or family.spec.sft_steps}",
        parameters={s: family.manifest["models"][s]["parameters"] for s in sizes},
        extra={
            "family": str(family.root),
            "construction": family.spec.construction,
            "sft_step": step or family.spec.sft_steps,
        },
    )
