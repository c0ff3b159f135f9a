"""The one place that turns a backend name into an explorer: used by the trainer, `s2l-eval` and `s2l-sample`.

One vocabulary of backend names across the project:

* ``server``: a frozen model behind an OpenAI-compatible vLLM server (`trl vllm-serve`), never weight-synced;
* ``offline``: pre-sampled rollouts in the authors' JSONL schema (training only: it looks completions up);
* ``local``: an in-process frozen `transformers` model (CPU, notebooks); ``transformers`` is accepted as an alias;
* ``vllm``: an in-process `vllm.LLM` engine (evaluation and sampling on a GPU node).
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
        device / model_init_kwargs / batch_size: ``local`` settings.
        tensor_parallel_size / vllm_kwargs: ``vllm`` settings.
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
