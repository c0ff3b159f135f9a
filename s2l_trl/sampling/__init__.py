"""Sampling from a frozen model: the engine shared with evaluation, and `s2l-sample` (offline explorer rollouts)."""

from .engine import Completion, EngineArguments, SamplingEngine

__all__ = ["Completion", "EngineArguments", "SamplingEngine"]
