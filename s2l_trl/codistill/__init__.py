"""CoDistill-GRPO: a large and a small model trained together on S2L-PO's explorer machinery (docs/codistill.md)."""

from .config import CoDistillConfig

__all__ = ["CoDistillConfig", "CoDistillModule", "CoDistillTrainer"]


def __getattr__(name: str):
    # The trainer pulls in torch/transformers/TRL's trainer stack; keep the config import light for the CLI.
    if name == "CoDistillTrainer":
        from .trainer import CoDistillTrainer

        return CoDistillTrainer
    if name == "CoDistillModule":
        from .module import CoDistillModule

        return CoDistillModule
    raise AttributeError(f"module 's2l_trl.codistill' has no attribute {name!r}")
