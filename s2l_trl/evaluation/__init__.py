"""Benchmark evaluation (`s2l-eval`): benchmark data, pass@k and plots, on the sampling engine."""

from .data import BENCHMARKS, DEFAULT_BENCHMARKS, BenchmarkDataError, load_benchmark
from .passk import default_ks, pass_at_k, summarize

__all__ = [
    "BENCHMARKS",
    "BenchmarkDataError",
    "DEFAULT_BENCHMARKS",
    "default_ks",
    "load_benchmark",
    "pass_at_k",
    "summarize",
]
