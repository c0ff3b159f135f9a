"""s2l-trl: small-to-large policy optimization (S2L-PO) on top of Hugging Face TRL's GRPOTrainer, and
CoDistill-GRPO."""

from .config import S2LConfig
from .schedule import make_alpha_fn, mix_alpha, split_group

__version__ = "0.1.0"

__all__ = [
    "CoDistillConfig",
    "CoDistillTrainer",
    "S2LConfig",
    "S2LTrainer",
    "make_alpha_fn",
    "mix_alpha",
    "split_group",
    "__version__",
]


def __getattr__(name: str):
    # The trainers pull in torch/transformers/TRL's trainer stack; keep `import s2l_trl` light for the CLI tools.
    if name == "S2LTrainer":
        from .trainer import S2LTrainer

        return S2LTrainer
    if name in ("CoDistillConfig", "CoDistillTrainer"):
        from . import codistill

        return getattr(codistill, name)
    raise AttributeError(f"module 's2l_trl' has no attribute {name!r}")
