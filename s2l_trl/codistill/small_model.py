"""The small model before training: the checks on it, its loading and what TRL does to its own policy at start-up.

`check_before_loading` runs before anything is loaded or written; `load_small_model` loads it (a path or an object,
optionally wrapped in PEFT); `check_small_model` runs once TRL has built the large model's side (its tokenizer);
`prepare_small_model` gives the small model what TRL's `__init__` gives the model it trains (device, dropout off,
fused LM head), since TRL only sets up the model it is handed, the large one.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .. import preflight
from ..explorers.token_bridge import tokenizers_match
from ..preflight import InputError
from .config import CoDistillConfig, check_model_sizes
from .full_kl import add_full_kl_output


def check_before_loading(model: Any, small_model: Any, args: CoDistillConfig, kwargs: dict[str, Any]) -> None:
    """Everything checkable from the trainer's arguments, before the small model is loaded (S2L-PO's own checks run
    once TRL starts building)."""
    if "explorer" in kwargs:
        raise InputError(
            "CoDistillTrainer samples the rollouts with the small model; `explorer` (S2L-PO's frozen sampler) "
            "cannot be passed."
        )
    optimizers = kwargs.get("optimizers", (None, None))
    if optimizers is not None and any(o is not None for o in optimizers):
        raise InputError(
            "CoDistillTrainer builds one optimizer over both models (parameter groups per model), so "
            "`optimizers` cannot be passed; use `optimizer_cls_and_kwargs` or the config's `optim` fields."
        )
    check_engine(args)
    if args.small_use_vllm:
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            raise preflight.MissingPackageError("small_use_vllm=True needs vLLM: `pip install trl[vllm]`.")
    if small_model is None:
        raise InputError("CoDistillTrainer needs a small model: set `small_model` in the config or pass one.")
    preflight.check_output_dir(args.output_dir)
    preflight.check_model_path(model, "model")
    preflight.check_model_path(small_model, "small_model")
    check_same_tokenizer(model, small_model, kwargs.get("processing_class"))
    check_model_sizes(model, small_model)


def check_engine(args: CoDistillConfig) -> None:
    """Engine settings CoDistill cannot honour, refused before any model is loaded."""
    if args.use_vllm:
        raise InputError(
            "CoDistillTrainer does not sample the large model with vLLM (use_vllm=True given): the small model "
            "samples the rollouts. To sample them with vLLM set small_use_vllm=True (and use_vllm=False); the "
            "vllm_* fields configure the small model's engine (docs/codistill.md)."
        )
    from_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")
    if args.large_skip_zero_gradient and (args.deepspeed or from_env):
        # DeepSpeed steps inside the backward: a learning rate of 0 keeps the weights but not the Adam state.
        raise InputError(
            "large_skip_zero_gradient=True cannot leave the large model's optimizer state untouched under DeepSpeed "
            "(its engine steps inside the backward): set large_skip_zero_gradient=False, or launch under DDP or "
            "FSDP2."
        )


def check_same_tokenizer(model: Any, small_model: Any, processing_class: Any = None) -> None:
    """Refuse a small model with another tokenizer before anything is loaded or written (the KD reward and the
    importance weights compare the two models token by token). Models passed as objects are checked later, once
    TRL has built the large model's tokenizer."""
    from transformers import AutoTokenizer

    def tokenizer_of(m: Any) -> Any:
        name = m if isinstance(m, str) else getattr(getattr(m, "config", None), "_name_or_path", None)
        try:
            return AutoTokenizer.from_pretrained(name) if name else None
        except Exception:  # not loadable here: the check after TRL's set-up decides
            return None

    large = processing_class if processing_class is not None else tokenizer_of(model)
    large, small = getattr(large, "tokenizer", large), tokenizer_of(small_model)
    if large is None or small is None:
        return
    if not tokenizers_match(large, small):
        raise InputError(
            f"small_model={small_model!r} does not share the tokenizer of model={model!r} (vocabularies of "
            f"{len(small)} and {len(large)} tokens): the KD reward and the importance weights compare the two models "
            "token by token; use a small model of the same family."
        )


def load_small_model(small_model: Any, args: CoDistillConfig, peft_config: Any = None) -> torch.nn.Module:
    """The small model from its id or path (`small_model_init_kwargs`, else the large model's `model_init_kwargs`),
    or the object given; wrapped in PEFT when `peft_config` is set."""
    from transformers import AutoModelForCausalLM

    if isinstance(small_model, str):
        init = args.small_model_init_kwargs
        if init is None and isinstance(args.model_init_kwargs, dict):
            init = args.model_init_kwargs
        init = dict(init or {})
        dtype = init.get("dtype", init.pop("torch_dtype", None))
        if isinstance(dtype, str) and dtype not in ("auto", None):
            init["dtype"] = getattr(torch, dtype)
        small_model = AutoModelForCausalLM.from_pretrained(small_model, **init)
    if peft_config is not None:
        from peft import get_peft_model

        small_model = get_peft_model(small_model, peft_config)
    return small_model


def check_small_model(
    small: torch.nn.Module, name: Any, tokenizer_matches: bool, vocabulary: int, is_vlm: bool
) -> None:
    """What can only be checked once TRL has built the large model's side (its tokenizer, its processing class)."""
    if not tokenizer_matches:  # a small model passed as an object, whose tokenizer was not known
        raise InputError(
            f"small_model={name!r} does not share the large model's tokenizer: the KD reward and the "
            "importance weights compare the two models token by token; use a small model of the same family."
        )
    embeddings = small.get_input_embeddings().weight
    rows = getattr(embeddings, "ds_shape", embeddings.shape)[0]  # ZeRO-3 loads parameters partitioned
    if vocabulary > rows:
        raise InputError(
            f"The small model has {rows} embedding rows, fewer than the tokenizer's {vocabulary} "
            "tokens: it cannot be the large model's sibling."
        )
    if is_vlm:
        raise InputError("CoDistillTrainer supports text models only (the processing class is a processor).")


def prepare_small_model(small: torch.nn.Module, args: CoDistillConfig, device: Any, temperature: float) -> None:
    """What TRL does to its policy at start-up, done to the small model: device, dropout, fused LM head. `device`
    is None when Transformers does not place models itself (`place_model_on_device`)."""
    from accelerate.utils import is_peft_model
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

    if device is not None:
        small.to(device)
    if args.disable_dropout:
        disable_dropout_in_model(small)
    if is_peft_model(small) and args.gradient_checkpointing:
        # As TRL does for its policy: checkpointed PEFT layers need inputs that require gradients.
        small.enable_input_require_grads()
    # TRL's loss reads log-probs and entropies from a fused LM head (no full logits); the small model goes
    # through the same loss, so it gets the same head.
    add_fused_lm_head(
        small.get_base_model() if is_peft_model(small) else small,
        temperature=temperature,
        cast_lm_head_to_fp32=False,
        outputs=("log_probs", "entropy"),
    )
    # ... and, on request, the exact per-position KL to the large model from the same forward (`full_kl`).
    add_full_kl_output(small, temperature=temperature)
    small.train()


__all__ = ["check_before_loading", "check_engine", "check_small_model", "load_small_model", "prepare_small_model"]
