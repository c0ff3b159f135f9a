"""Both models on disk: two loadable model folders per checkpoint and per final save, and their model cards.

A checkpoint keeps the large model at its root (where Transformers resumes it from) and the small one in
`small_model/`; a final save writes `large_model/` and `small_model/`, each loadable with `from_pretrained` and with
its model card. DeepSpeed and FSDP checkpoints also hold the whole module in their engine files (Transformers
resumes those).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from ..checkpoints import load_saved_weights
from ..model_card import codistill_small_model_card
from .config import CoDistillConfig
from .module import LARGE, SMALL, CoDistillModule

SMALL_MODEL_DIR = "small_model"  # in every checkpoint and in the final output folder
LARGE_MODEL_DIR = "large_model"  # in the final output folder (checkpoints keep the large model at their root)


def save_models(
    module: CoDistillModule,
    output_dir: str,
    state_dict: dict[str, torch.Tensor],
    processing_class: Any,
    final: bool,
) -> None:
    """Write each model's folder from the module's state dict (gathered under ZeRO-3 / FSDP by Transformers)."""
    folders = {
        LARGE: os.path.join(output_dir, LARGE_MODEL_DIR) if final else output_dir,
        SMALL: os.path.join(output_dir, SMALL_MODEL_DIR),
    }
    for role, folder in folders.items():
        os.makedirs(folder, exist_ok=True)
        role_state = module.role_state_dict(state_dict, role)
        if role_state:  # empty when ZeRO-3 saves no 16-bit weights (Transformers then saves its engine files)
            module.submodule(role).save_pretrained(folder, state_dict=role_state)
        if processing_class is not None:
            processing_class.save_pretrained(folder)


def load_models(module: CoDistillModule, checkpoint: str) -> None:
    """Resume both models from a plain checkpoint: the large model at its root, the small one in `small_model/`."""
    folder = os.path.join(checkpoint, SMALL_MODEL_DIR)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{checkpoint} has no {SMALL_MODEL_DIR}/ folder: it was not written by CoDistillTrainer, "
            "so the small model cannot be resumed."
        )
    load_saved_weights(module.large, checkpoint)
    load_saved_weights(module.small, folder)


def write_model_cards(args: CoDistillConfig, output_dir: str, small_model: torch.nn.Module) -> None:
    """The large model's card (`<args.output_dir>/README.md`) copied into `large_model/`, the small model's own card
    into `small_model/`."""
    source = os.path.join(args.output_dir, "README.md")
    large_dir = os.path.join(output_dir, LARGE_MODEL_DIR)
    if os.path.exists(source) and os.path.isdir(large_dir):
        shutil.copyfile(source, os.path.join(large_dir, "README.md"))
    small_dir = os.path.join(output_dir, SMALL_MODEL_DIR)
    if os.path.isdir(small_dir):
        base = getattr(getattr(small_model, "config", None), "_name_or_path", None)
        with open(os.path.join(small_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(codistill_small_model_card(args, base))


__all__ = ["LARGE_MODEL_DIR", "SMALL_MODEL_DIR", "load_models", "save_models", "write_model_cards"]
