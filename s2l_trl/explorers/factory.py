"""The one place that turns a backend name into an explorer: used by the trainer, `s2l-eval` and `s2l-sample`.

One vocabulary of backend names across the project:

* ``server``: a frozen model behind an OpenAI-compatible vLLM server (`trl vllm-serve`), never weight-synced;
* ``offline``: pre-sampled rollouts in the authors' JSONL schema (training only: it looks completions up);
* ``local``: an in-process frozen `transformers` model (CPU, notebooks); ``transformers`` is accepted as an alias;
* ``vllm``: an in-process `vllm.LLM` engine (training on one GPU per process, evaluation and sampling).
"""

from __future__ import annotations

import logging
from typing import Any

from .base import Explorer, SamplingSettings

logger = logging.getLogger(__name__)

BACKENDS = ("server", "offline", "local", "vllm")
# Backends that sample (everything but a lookup of stored rollouts): what `s2l-eval` and `s2l-sample` accept.
SAMPLING_BACKENDS = ("vllm", "server", "local")
_ALIASES = {"transformers": "local"}


def resolve_backend(name: str, allowed: tuple[str, ...] = BACKENDS, field: str = "backend") -> str:
    """The canonical backend name for ``name``; an unknown one is an error naming ``field`` and the choices."""
    canonical = _ALIASES.get(name, name)
    if canonical not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {name!r}.")
    return canonical


def build_explorer(
    backend: str,
    *,
    model: Any = None,
    sampling: SamplingSettings | None = None,
    tokenizer: Any = None,
    server_base_url: str | list[str] | None = None,
    server_kwargs: dict[str, Any] | None = None,
    rollouts: str | None = None,
    offline_kwargs: dict[str, Any] | None = None,
    device: Any = None,
    model_init_kwargs: dict[str, Any] | None = None,
    batch_size: int = 64,
    tensor_parallel_size: int = 1,
    vllm_kwargs: dict[str, Any] | None = None,
    local_kwargs: dict[str, Any] | None = None,
) -> Explorer:
    """Build the explorer backend ``backend`` (see the module docstring for the names).

    Args:
        backend: backend name (aliases accepted).
        model: model id or path (``local``, ``vllm``); a model object for ``local``.
        sampling: sampling settings of every request (all but ``offline``).
        tokenizer: the model's tokenizer, reused by ``local`` (loaded from ``model`` when omitted).
        server_base_url: URL of the server, or a list of URLs (``server``); the server must serve ``model`` with
            ``tokenizer`` where they are given (checked at start-up).
        server_kwargs: further arguments of :class:`~s2l_trl.explorers.ServerExplorer` (time-outs, retries, chunking;
            ``expected_model=None`` / ``expected_tokenizer=None`` turn the identity checks off).
        rollouts: rollout file or folder (``offline``).
        offline_kwargs: further arguments of :class:`~s2l_trl.explorers.OfflineExplorer`.
        device / model_init_kwargs / batch_size / local_kwargs: ``local`` settings (``local_kwargs``: further
            arguments of :class:`~s2l_trl.explorers.LocalExplorer`, e.g. ``seed_stream``, ``compile``).
        tensor_parallel_size / vllm_kwargs: ``vllm`` settings (``vllm_kwargs``: further arguments of
            :class:`~s2l_trl.explorers.vllm_engine.VLLMEngineExplorer`).
    """
    backend = resolve_backend(backend)
    if backend == "server":
        from .server import ServerExplorer

        if not server_base_url:
            raise ValueError("The 'server' explorer backend needs a server URL (e.g. http://127.0.0.1:8000).")
        # The server must serve `model` with `tokenizer` (when given): checked at start-up (see ServerExplorer).
        identity = {"expected_tokenizer": tokenizer, "expected_model": model if isinstance(model, str) else None}
        return ServerExplorer(server_base_url, sampling, **{**identity, **(server_kwargs or {})})
    if backend == "offline":
        from .offline import OfflineExplorer

        if not rollouts:
            raise ValueError("The 'offline' explorer backend needs a rollout file (explorer_rollouts).")
        return OfflineExplorer(rollouts, **(offline_kwargs or {}))
    if backend == "local":
        from .local import LocalExplorer

        if model is None:
            raise ValueError("The 'local' explorer backend needs a model id or path.")
        return LocalExplorer(
            model,
            tokenizer=tokenizer,
            sampling=sampling,
            batch_size=batch_size,
            device=device,
            model_init_kwargs=model_init_kwargs,
            **(local_kwargs or {}),
        )
    from .vllm_engine import VLLMEngineExplorer

    if model is None:
        raise ValueError("The 'vllm' explorer backend needs a model id or path.")
    sampling = sampling or SamplingSettings()
    return VLLMEngineExplorer(
        model,
        sampling=sampling,
        tensor_parallel_size=tensor_parallel_size,
        seed=sampling.seed or 0,
        **(vllm_kwargs or {}),
    )


def logprobs_needed_by(args: Any) -> str | None:
    """The option of a training run that weighs explorer tokens with the explorer's sampling log-probs (explorer
    importance sampling, the explorer off-policy mask), as ``name=value`` for messages; ``None`` when nothing does."""
    mode = getattr(args, "explorer_importance_sampling", "none")
    if mode != "none":
        return f"explorer_importance_sampling={mode!r}"
    if getattr(args, "explorer_off_policy_mask", False):
        return "explorer_off_policy_mask=True"
    return None


def build_training_explorer(
    args: Any,
    bridge: Any,
    learner_tokenizer: Any,
    device: Any = None,
    is_main_process: bool = True,
    process_index: int | None = None,
) -> Explorer:
    """The explorer of a training run, from its `S2LConfig` (`args`) and the run's `TokenBridge` (`bridge`).

    Every training process builds its own (it samples the rows it holds); `is_main_process` keeps progress output to
    one process. The in-process backends (`local`, `vllm`) draw from seeds derived from `args.seed`, the process
    (`process_index`, default: accelerate's) and the call, so runs repeat and resume.
    """
    if process_index is None:
        process_index = _process_index()
    sampling = SamplingSettings(
        temperature=args.explorer_temperature,
        top_p=args.explorer_top_p,
        top_k=args.explorer_top_k,
        max_tokens=args.explorer_max_tokens,
        seed=args.seed,  # every sampling backend derives its per-call (or per-prompt) seeds from it
    )
    vllm_kwargs = None
    if args.explorer_mode == "vllm":
        vllm_kwargs = training_vllm_kwargs(args, device, process_index)
    return build_explorer(
        args.explorer_mode,
        model=args.explorer_model,
        sampling=sampling,
        server_base_url=args.explorer_server_base_url,
        server_kwargs={
            "startup_timeout": args.explorer_server_timeout,
            "request_timeout": args.explorer_request_timeout,
            "stall_timeout": args.explorer_stall_timeout,
            "max_retries": args.explorer_max_retries,
            "prompts_per_request": args.explorer_prompts_per_request,
            "max_concurrent_requests": args.explorer_max_concurrent_requests,
            "max_server_failures": args.explorer_server_max_failures,
            "check_model_name": args.explorer_server_check_model_name,
            # The server must serve explorer_model's tokenizer, or the learner's when none is named.
            "expected_tokenizer": bridge.explorer_tokenizer or learner_tokenizer,
            "expected_model": args.explorer_model,
            "progress": is_main_process,
            # Each process draws its own prompts: per-prompt seeds must differ between processes.
            "seed_stream": process_index,
            # Explorer log-probs weigh explorer tokens: raw (untempered) ones would make every weight wrong.
            "require_processed_logprobs": logprobs_needed_by(args) is not None,
        },
        rollouts=args.explorer_rollouts,
        offline_kwargs={
            "seed": args.seed,
            "retokenize_with": None if bridge.matches else learner_tokenizer,
            "explorer_eos_token_ids": sorted(bridge.explorer_eos_ids) or None,
            "eos_token_id": bridge.eos_token_ids[0],
            "vocab_size": bridge.explorer_vocab_size,
            "logprobs_needed_by": logprobs_needed_by(args),
        },
        device=device,
        model_init_kwargs=args.model_init_kwargs if isinstance(args.model_init_kwargs, dict) else None,
        local_kwargs={"seed_stream": process_index},
        vllm_kwargs=vllm_kwargs,
    )


def training_vllm_kwargs(args: Any, device: Any, process_index: int) -> dict[str, Any]:
    """`VLLMEngineExplorer` arguments of a training run's explorer (`explorer_mode="vllm"`): an engine in a process of
    its own on this process's device, so that it samples beside the learner."""
    import torch

    from ..preflight import InputError

    llm_kwargs = dict(args.explorer_vllm_kwargs or {})
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if args.explorer_vllm_enable_sleep_mode and not on_cuda:
        raise InputError(
            f"explorer_vllm_enable_sleep_mode=True needs a CUDA device (vLLM has no sleep mode on {device or 'CPU'}); "
            "set it to False."
        )
    default_share = type(args).__dataclass_fields__["explorer_vllm_gpu_memory_utilization"].default
    if not on_cuda and args.explorer_vllm_gpu_memory_utilization != default_share:
        logger.warning(
            "explorer_vllm_gpu_memory_utilization=%s does not apply on %s: vLLM on CPU sizes the explorer engine's KV "
            "cache by VLLM_CPU_KVCACHE_SPACE (GiB) instead.",
            args.explorer_vllm_gpu_memory_utilization,
            device or "CPU",
        )
    return {
        "gpu_memory_utilization": args.explorer_vllm_gpu_memory_utilization,
        "max_model_len": args.explorer_vllm_max_model_length or args.vllm_max_model_length,
        "dtype": llm_kwargs.pop("dtype", "auto"),
        "enforce_eager": llm_kwargs.pop("enforce_eager", False),
        "llm_kwargs": llm_kwargs,
        "seed_stream": process_index,
        "enable_sleep_mode": args.explorer_vllm_enable_sleep_mode,
        "own_process": True,
        "device": device,
    }


def _process_index() -> int:
    """This process's index in the accelerate run (0 outside one)."""
    from accelerate import PartialState

    state = PartialState._shared_state
    return int(state.get("process_index", 0)) if state else 0
