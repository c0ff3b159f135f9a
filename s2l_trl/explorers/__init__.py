"""Explorer backends: where the frozen smaller model's completions come from."""

from .base import Explorer, ExplorerError, ExplorerOutput, SamplingSettings
from .local import LocalExplorer
from .offline import ROLLOUT_FIELDS, OfflineExplorer, prompt_text_key, read_rollouts
from .server import ServerExplorer

__all__ = ["Explorer", "ExplorerError", "ExplorerOutput", "LocalExplorer", "OfflineExplorer", "ROLLOUT_FIELDS",
           "SamplingSettings", "ServerExplorer", "prompt_text_key", "read_rollouts"]
