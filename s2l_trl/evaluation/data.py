"""Benchmarks of `s2l-eval`: Hub data sets by default, or `<data_dir>/<bench>.jsonl` files.

Local files use the format the authors' evaluator reads: one JSON object per line with ``"question"`` and
``"answer"`` (answers may be ints, as in AIME 2025). CommonsenseQA lines instead carry ``"question"``,
``"choices": {"label": [...], "text": [...]}`` and ``"answerKey"``.

Hub sources (used when ``--data_dir`` is not given; the split and columns are mapped to the same fields):

| benchmark      | Hub dataset id                   | config               | split      | question / answer    |
|----------------|----------------------------------|----------------------|------------|----------------------|
| aime24         | ``HuggingFaceH4/aime_2024``      |                      | train      | problem / answer     |
| aime25         | ``yentinglin/aime_2025``         |                      | train      | problem / answer     |
| math500        | ``HuggingFaceH4/MATH-500``       |                      | test       | problem / answer     |
| olympiadbench  | ``Hothan/OlympiadBench``         | OE_TO_maths_en_COMP  | train      | question / final_answer[0] |
| commonsenseqa  | ``tau/commonsense_qa``           |                      | validation | question+choices / answerKey |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jsonl import iter_jsonl
from ..preflight import InputError, MissingPathError, hub_offline, hub_unreachable


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives on the Hub and how its rows map to ``question``/``answer``."""

    name: str
    hub_id: str
    split: str
    question_field: str
    answer_field: str
    config: str | None = None
    kind: str = "math"  # "math": free-form answer judged by math_verify; "choice": option letter


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("aime24", "HuggingFaceH4/aime_2024", "train", "problem", "answer"),
        BenchmarkSpec("aime25", "yentinglin/aime_2025", "train", "problem", "answer"),
        BenchmarkSpec("math500", "HuggingFaceH4/MATH-500", "test", "problem", "answer"),
        BenchmarkSpec(
            "olympiadbench", "Hothan/OlympiadBench", "train", "question", "final_answer", config="OE_TO_maths_en_COMP"
        ),
        BenchmarkSpec("commonsenseqa", "tau/commonsense_qa", "validation", "question", "answerKey", kind="choice"),
    )
}
DEFAULT_BENCHMARKS = ("aime24", "aime25", "math500")


class BenchmarkDataError(InputError):
    """A benchmark file or row is unusable; the message names the file and line."""


def get_spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise InputError(f"Unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name]


def _normalize_row(raw: dict[str, Any], spec: BenchmarkSpec, where: str, local: bool) -> dict[str, Any]:
    question_field = "question" if local else spec.question_field
    answer_field = "answer" if local and spec.kind == "math" else spec.answer_field
    missing = [f for f in (question_field, answer_field) if f not in raw]
    if spec.kind == "choice" and "choices" not in raw:
        missing.append("choices")
    if missing:
        raise BenchmarkDataError(
            f"{where}: missing field(s) {missing} for benchmark {spec.name!r} (has {sorted(raw)})."
        )
    question, answer = raw[question_field], raw[answer_field]
    if isinstance(answer, list):  # OlympiadBench stores a list of final answers; the first is the reference
        if not answer:
            raise BenchmarkDataError(f"{where}: empty answer list.")
        answer = answer[0]
    if not isinstance(question, str) or not question.strip():
        raise BenchmarkDataError(f"{where}: {question_field!r} must be a non-empty string.")
    if answer is None or isinstance(answer, (dict, list, bool)):
        raise BenchmarkDataError(f"{where}: {answer_field!r} must be a string or a number, got {answer!r}.")
    row = {"question": question, "answer": answer}
    if spec.kind == "choice":
        choices = raw["choices"]
        if (
            not isinstance(choices, dict)
            or not isinstance(choices.get("label"), list)
            or not isinstance(choices.get("text"), list)
            or len(choices["label"]) != len(choices["text"])
        ):
            raise BenchmarkDataError(f"{where}: 'choices' must be {{'label': [...], 'text': [...]}} of equal length.")
        if str(answer) not in choices["label"]:
            raise BenchmarkDataError(f"{where}: answerKey {answer!r} is not one of the labels {choices['label']}.")
        row["choices"] = {"label": list(choices["label"]), "text": list(choices["text"])}
    return row


def read_benchmark_file(path: str | Path, spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """Read a benchmark JSONL file; a malformed line raises :class:`BenchmarkDataError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"Benchmark file {str(path)!r} not found (expected <data_dir>/{spec.name}.jsonl).")
    rows = [
        _normalize_row(raw, spec, f"{path}:{lineno}", local=True)
        for lineno, raw in iter_jsonl(path, BenchmarkDataError)
    ]
    if not rows:
        raise BenchmarkDataError(f"{path}: no problems found.")
    return rows


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Problems of a benchmark as ``{"question", "answer"}`` rows (plus ``"choices"`` for multiple choice).

    Args:
        name: a key of :data:`BENCHMARKS`.
        data_dir: read ``<data_dir>/<name>.jsonl`` instead of the Hub data set.
        limit: keep only the first ``limit`` problems (smoke tests).
    """
    spec = get_spec(name)
    if data_dir is not None:
        rows = read_benchmark_file(Path(data_dir) / f"{name}.jsonl", spec)
    else:
        ds = _load_hub_benchmark(spec)
        rows = [
            _normalize_row(dict(r), spec, f"{spec.hub_id} ({spec.split}, row {i})", local=False)
            for i, r in enumerate(ds)
        ]
    return rows[:limit] if limit is not None else rows


def _load_hub_benchmark(spec: BenchmarkSpec):
    """The Hub data set of a benchmark, failing at once (naming `--data_dir`) when it cannot be had: with the Hub
    offline (`HF_HUB_OFFLINE=1` / `HF_DATASETS_OFFLINE=1`) and no cached copy, or with no connection to the Hub
    (checked with one request of a few seconds, instead of `datasets`' retries of half a minute)."""
    import datasets

    fix = (
        f"pass --data_dir with a file {spec.name}.jsonl (one JSON object per line with 'question' and 'answer'; see "
        "eval/README.md)"
    )
    offline = hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline:
        reason = hub_unreachable()
        if reason is not None:
            raise InputError(
                f"Benchmark {spec.name!r} is read from the Hub data set {spec.hub_id!r}, but the Hub cannot be reached "
                f"({reason}): {fix}, or set HF_HUB_OFFLINE=1 to use a copy in the local cache."
            )
    try:
        return datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
    except (ConnectionError, OSError, ValueError) as exc:  # offline and not cached: datasets says ConnectionError
        if not offline:
            raise
        raise InputError(
            f"Benchmark {spec.name!r} is read from the Hub data set {spec.hub_id!r}, which is not in the local cache, "
            f"and the Hub is offline (HF_HUB_OFFLINE=1): {fix} ({type(exc).__name__}: {str(exc)[:200]})."
        ) from exc


def user_turn(row: dict[str, Any], mode: str, kind: str = "math") -> str:
    """The user message of a problem: the question (with lettered options for multiple choice) plus the Qwen3
    soft switch ``" /think"`` or ``" /no_think"``."""
    if mode not in ("think", "nothink"):
        raise ValueError(f"mode must be 'think' or 'nothink', got {mode!r}.")
    text = row["question"]
    if kind == "choice":
        options = "\n".join(
            f"{label}. {choice}" for label, choice in zip(row["choices"]["label"], row["choices"]["text"])
        )
        text = f"{text}\n\n{options}\n\nAnswer with the letter of the correct option only, in the form \\boxed{{X}}."
    return text + (" /think" if mode == "think" else " /no_think")
