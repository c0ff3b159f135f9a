"""Sampling-based evaluation (`s2l-eval`), offline explorer sampling (`s2l-sample`) and pass@k plots."""

from .answers import ChoiceJudge, Judgement, MathJudge, extract_boxed, extract_choice, extract_math_answer, make_judge
from .data import BENCHMARKS, DEFAULT_BENCHMARKS, BenchmarkDataError, load_benchmark
from .engine import BACKENDS, Completion, SamplingEngine, build_explorer
from .passk import default_ks, pass_at_k, summarize

__all__ = ["BACKENDS", "BENCHMARKS", "BenchmarkDataError", "ChoiceJudge", "Completion", "DEFAULT_BENCHMARKS",
           "Judgement", "MathJudge", "SamplingEngine", "build_explorer", "default_ks", "extract_boxed",
           "extract_choice", "extract_math_answer", "load_benchmark", "make_judge", "pass_at_k", "summarize"]
