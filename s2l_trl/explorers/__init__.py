"""Explorer backends: where the frozen smaller model's completions come from (one factory, one set of names)."""

from .base import Explorer, ExplorerError, ExplorerOutput, ExplorerStats, SamplingSettings, generate_checked
from .factory import BACKENDS, SAMPLING_BACKENDS, build_explorer, build_training_explorer, resolve_backend
from .local import LocalExplorer
from .offline import ROLLOUT_FIELDS, OfflineExplorer, prompt_key, prompt_text_key, read_rollouts, validate_rollout
from .server import ServerExplorer

__all__ = [
    "BACKENDS",
    "Explorer",
    "ExplorerError",
    "ExplorerOutput",
    "ExplorerStats",
    "LocalExplorer",
    "OfflineExplorer",
    "ROLLOUT_FIELDS",
    "SAMPLING_BACKENDS",
    "SamplingSettings",
    "ServerExplorer",
    "build_explorer",
    "build_training_explorer",
    "generate_checked",
    "prompt_key",
    "prompt_text_key",
    "read_rollouts",
    "resolve_backend",
    "validate_rollout",
]
