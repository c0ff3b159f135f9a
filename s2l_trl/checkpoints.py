"""Finding the checkpoint a run resumes from, skipping checkpoints torn by a kill during their save."""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it is complete.

    `Trainer._save_checkpoint` writes ``trainer_state.json`` after the model, optimizer and scheduler, so a checkpoint
    whose ``trainer_state.json`` loads with `transformers.TrainerState.load_from_json` was saved to the end; one
    killed during the save (SIGKILL, node loss) has no or a torn ``trainer_state.json``.
    """
    from transformers import TrainerState

    state_path = Path(checkpoint) / "trainer_state.json"
    if not state_path.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        TrainerState.load_from_json(str(state_path))
    except Exception as exc:  # a torn or hand-broken file: JSONDecodeError, TypeError on unknown keys, ...
        return f"trainer_state.json does not load ({type(exc).__name__}: {exc})"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder of ``output_dir`` (see :func:`checkpoint_problem`), or ``None``.

    Newer incomplete checkpoints are skipped with a warning that names them and says why; they are left on disk.
    Use instead of `transformers.trainer_utils.get_last_checkpoint` when deciding where a rerun resumes.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    numbered = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            numbered.append((int(match.group(1)), path))
    for _, path in sorted(numbered, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s: %s. Resuming from an earlier one, if any.", path, problem)
    return None


def load_saved_weights(model, folder: str | Path) -> None:
    """Load the weights `save_pretrained` wrote into ``folder`` into ``model``, in place.

    A PEFT adapter (``adapter_model.safetensors``) is loaded into a PEFT model; otherwise every ``*.safetensors``
    file of the folder (one file, or the shards of an index) is loaded into the full model. Unexpected keys are an
    error (the folder holds another model); keys missing from the folder are logged (tied weights are saved once).
    Used to resume a model that Transformers does not resume itself (CoDistill's small model).
    """
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    adapter = folder / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No weights (*.safetensors or adapter_model.safetensors) in {folder}.")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(str(path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{folder} holds weights this model does not have, e.g. {sorted(unexpected)[:5]}.")
    if missing:
        logger.warning("Keys missing from %s (tied weights are saved once): %s", folder, sorted(missing)[:5])
