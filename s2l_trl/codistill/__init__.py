"""CoDistill-GRPO: a large and a small model trained together on S2L-PO's round machinery (docs/codistill.md).

Where things live: `trainer` (one round's scoring and one micro-step of both models: the algorithm), `s2l_seams`
(S2L-PO's learner / explorer hooks in CoDistill's large / small words), `module` (both models as one module),
`objectives` (KD reward and importance-weight tensors), `small_model` (the small model's checks, loading and set-up),
`small_sampler` / `small_vllm_sampler` / `generation` (the small model's rollouts), `optimizer` (one optimizer and
schedule, per-model settings), `clipping` (per-model gradient clipping under every engine), `saving` (both models'
folders and cards), `config`.
"""

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
