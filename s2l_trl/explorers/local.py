"""Explorer as an in-process frozen `transformers` model: no server, for notebooks and single-GPU runs.

It samples beside the learner: the trainer runs it in a worker thread while the learner generates (and one round
ahead, while the learner trains). That is safe because it never touches torch's global random generator, whose
stream the learner's sampling must keep (GRPO at alpha 0 and reruns with the same seed depend on it): every call
draws from a `torch.Generator` of its own, seeded from the base seed, the explorer's stream and the call's index
(:meth:`LocalExplorer.call_seed`), and samples by the Gumbel-max trick (exponential race) on the warped logits,
decoded greedily by `generate` (see :class:`GumbelSampler`). On a GPU it decodes on a CUDA stream of its own.

Under a sharded engine (DeepSpeed ZeRO-3, FSDP with cpu-RAM-efficient loading) every process still holds the whole
explorer: it is loaded outside the engine's sharded loading (:func:`whole_model_loading`) and its `generate` is never
collective (``synced_gpus=False``), since it runs in a worker thread beside the learner's collectives.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from .base import ExplorerError, ExplorerOutput, ExplorerStats, SamplingSettings

# Prompt widths are padded up to a multiple of this when decoding is compiled, so that a handful of shapes (and
# compilations) serve every round.
_COMPILE_WIDTH_BUCKET = 64


@contextlib.contextmanager
def whole_model_loading() -> Iterator[None]:
    """Inside, `from_pretrained` loads a model whole on this process, whatever sharded engine accelerate set up.

    Once a training config names DeepSpeed ZeRO-3, Transformers builds every model inside `deepspeed.zero.Init`, which
    partitions it across processes (each keeps parameters of shape ``(0,)``); with FSDP's cpu-RAM-efficient loading
    (``FSDP_CPU_RAM_EFFICIENT_LOADING``, the recipes' ``fsdp_cpu_ram_efficient_loading: true``) it fills the weights
    with zeros on every process but local rank 0 and counts on FSDP to broadcast rank 0's. Both are right for the
    model the engine then wraps, and wrong for a frozen helper it never wraps (the explorer): that one must be loaded
    here. Process-wide switches are set back on exit; load from the main thread only.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    ds_config = ref() if ref is not None else None  # the live HfDeepSpeedConfig that turns zero.Init on, if any
    fsdp_env = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    hf_deepspeed.unset_hf_deepspeed_config()
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    try:
        yield
    finally:
        if fsdp_env is None:
            os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
        else:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = fsdp_env
        if ds_config is not None:
            hf_deepspeed.set_hf_deepspeed_config(ds_config)


def check_whole_model(model, owner: str = "The local explorer") -> None:
    """Refuse a model whose parameters are sharded across processes (ZeRO-3 partitions, FSDP DTensors): a frozen
    helper model must be whole on every process, since no engine gathers it."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        DTensor = ()
    for name, param in model.named_parameters():
        engine = None
        if hasattr(param, "ds_id"):
            engine = "DeepSpeed ZeRO-3 (zero.Init)"
        elif isinstance(param, DTensor):
            engine = "FSDP"
        if engine is not None:
            raise ValueError(
                f"{owner}'s model is sharded across processes by {engine} (parameter {name!r}): each process needs it "
                "whole. Pass the model's path instead of a model object, so that it is loaded whole on every process "
                "(outside the engine's sharded loading), or use explorer_mode='server'."
            )


class ExplorerCancelled(ExplorerError):
    """The call was cancelled (:meth:`LocalExplorer.cancel`) while it was decoding."""


class GumbelSampler:
    """A `transformers` logits processor that samples for greedy decoding, from a generator of its own.

    At each step it applies the sampling settings (temperature, then top-k, then top-p, in vLLM's and
    transformers' order) to the logits it receives, records the log-probability of the token that will be chosen
    under that (processed) distribution, and returns ``log p - log E`` with ``E ~ Exp(1)`` drawn from
    ``generator``. Greedy decoding takes the argmax of what it returns, which is a sample of the processed
    distribution (the exponential race, i.e. the Gumbel-max trick): `generate(do_sample=False)` then samples
    exactly as `do_sample=True` would, without torch's global generator. Temperature 0 is greedy: no noise.

    Processors that `generate` builds from the generation config (a repetition penalty, suppressed tokens, a
    minimum length) run before this one, so they are part of the distribution it samples and records.
    """

    def __init__(
        self,
        temperature: float,
        top_k: int | None,
        top_p: float,
        generator: torch.Generator | None,
        cancelled: threading.Event | None = None,
    ):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = generator
        self.cancelled = cancelled
        self.logps: list[torch.Tensor] = []  # per step: (batch,) log-prob of the chosen token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.cancelled is not None and self.cancelled.is_set():
            raise ExplorerCancelled("The local explorer's call was cancelled.")
        scores = scores.float()
        sampling = self.temperature > 0
        if sampling:
            scores = warp_logits(scores, self.temperature, self.top_k, self.top_p)
        logp = torch.log_softmax(scores, dim=-1)
        choice = logp
        if sampling:
            race = torch.empty_like(logp).exponential_(generator=self.generator)
            # An exact 0 would turn a masked token's -inf into nan; the clamp changes nothing else.
            choice = logp - race.clamp_(min=torch.finfo(race.dtype).tiny).log()
        token = choice.argmax(dim=-1)  # what greedy decoding picks from the returned scores
        self.logps.append(logp.gather(-1, token.unsqueeze(-1)).squeeze(-1))
        return choice

    def token_logps(self, steps: int) -> torch.Tensor:
        """``(batch, steps)`` log-probs of the chosen tokens; `generate` may run (and drop) a few steps more."""
        if steps == 0:
            return torch.empty((0, 0))
        return torch.stack(self.logps[:steps], dim=1)


class LocalExplorer:
    """Samples with ``model.generate`` under ``torch.no_grad`` in eval mode; the model is never trained.

    **Randomness.** The ``c``-th call (counted by :attr:`calls`, saved by :meth:`state_dict`) samples from a
    `torch.Generator` seeded by :meth:`call_seed` ``(c)``, a hash of the base seed, ``seed_stream`` and ``c``;
    torch's global generator is never used, so the explorer can run in a thread beside the learner
    (``runs_in_background = True``) and a resumed run (its counter restored) draws what the uninterrupted run drew.
    The base seed is ``sampling.seed``, or, when that is ``None``, a number drawn from torch's global generator at
    construction (reproducible under ``torch.manual_seed`` / ``transformers.set_seed``). Draws depend on the call's
    rows and ``batch_size`` (one generator serves a call's batches in order).

    **Log-probs** are those of the sampled tokens under the sampling distribution (temperature, top-k and top-p
    applied), what vLLM's ``processed_logprobs`` reports too; nothing of size ``batch x steps x vocabulary`` is kept.

    Args:
        model: a causal LM or a model id/path (loaded whole on this process with ``AutoModelForCausalLM``, outside any
            sharded loading: :func:`whole_model_loading`); a model object must be whole (not ZeRO-3 / FSDP sharded).
        tokenizer: tokenizer of the explorer (its pad/eos ids are used); loaded from ``model`` when omitted.
        sampling: sampling settings of every request.
        batch_size: rows generated per ``generate`` call, to bound memory.
        device: where the model runs (default: where it already is).
        model_init_kwargs: keyword arguments of ``from_pretrained`` when ``model`` is a path.
        seed_stream: mixed into every call's seed, to tell apart explorers sharing a base seed (one per training
            process).
        compile: decode with a static KV cache and a compiled forward (``torch.compile``, compiled once per batch
            shape; prompt widths are padded to multiples of 64 and batches to ``batch_size`` rows so that few shapes
            occur). Transformers compiles only on accelerators (CUDA, XPU); elsewhere the static cache is used
            uncompiled. The first calls pay the compilation.
    """

    runs_in_background = True

    def __init__(
        self,
        model,
        tokenizer=None,
        sampling: SamplingSettings | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        model_init_kwargs: dict | None = None,
        seed_stream: int = 0,
        compile: bool = False,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
        if isinstance(model, str):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            with whole_model_loading():
                model = AutoModelForCausalLM.from_pretrained(model, **(model_init_kwargs or {}))
        check_whole_model(model)
        if tokenizer is None:
            raise ValueError("LocalExplorer needs a tokenizer when `model` is a model object, not a path.")
        if device is not None:
            model = model.to(device)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingSettings()
        self.batch_size = batch_size
        self.seed_stream = seed_stream
        self.compile = compile
        # Drawn once from the global generator when no seed is given: what `torch.manual_seed` before construction
        # makes reproducible (the trainer builds explorers inside a forked generator, so this costs the learner
        # nothing).
        self.seed = self.sampling.seed if self.sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.calls = 0
        eos = self.model.generation_config.eos_token_id or tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_token_ids))
        )
        self.device = next(self.model.parameters()).device
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._stream_ready = False
        self._lock = threading.Lock()  # one call at a time: the counter and the stream are the explorer's
        self._cancelled = threading.Event()

    # ------------------------------------------------------------------ random state
    def call_seed(self, call: int) -> int:
        """The seed of the generator of call ``call``: 63 bits of a hash of (base seed, stream, call)."""
        key = f"s2l-local:{self.seed}:{self.seed_stream}:{call}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1

    def state_dict(self) -> dict[str, int]:
        """JSON-serialisable state of the draws: the base seed and how many calls were made."""
        return {"seed": self.seed, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the draws of a saved state: the next call draws what the call after the save drew. A different
        base seed is kept (the run's own seed wins), with a warning."""
        import logging

        if int(state.get("seed", self.seed)) != self.seed:
            logging.getLogger(__name__).warning(
                "Restoring local explorer draws saved with seed %s into an explorer seeded %s; keeping seed %s.",
                state.get("seed"),
                self.seed,
                self.seed,
            )
        self.calls = int(state["calls"])

    def cancel(self) -> None:
        """Stop the call in flight at its next decoding step (it raises :class:`ExplorerCancelled`)."""
        self._cancelled.set()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        with self._lock:
            self._cancelled.clear()
            start = time.perf_counter()
            call, self.calls = self.calls, self.calls + 1
            if not prompt_ids:
                return in_process_output([], [], 0, start)
            generator = torch.Generator(device=self.device).manual_seed(self.call_seed(call))
            rows = [ids for ids in prompt_ids for _ in range(n)]
            completion_ids: list[list[int]] = []
            logprobs: list[list[float]] = []
            with self._on_own_stream():
                for begin in range(0, len(rows), self.batch_size):
                    ids, lps = self._generate_batch(rows[begin : begin + self.batch_size], generator)
                    completion_ids += ids
                    logprobs += lps
            return in_process_output(completion_ids, logprobs, len(prompt_ids), start)

    def _generate_batch(self, batch: list[list[int]], generator: torch.Generator):
        from transformers import GenerationConfig

        s = self.sampling
        real = len(batch)
        width = max(len(r) for r in batch)
        extra: dict[str, Any] = {}
        if self.compile:
            # Few shapes, few compilations: full batches, widths in buckets (left padding is masked out).
            batch = batch + [batch[-1]] * (self.batch_size - real)
            width = -(-width // _COMPILE_WIDTH_BUCKET) * _COMPILE_WIDTH_BUCKET
            extra = {"cache_implementation": "static"}
        config = GenerationConfig(
            max_new_tokens=s.max_tokens,
            do_sample=False,  # GumbelSampler makes greedy decoding sample
            # Neutral values, so that a model's own sampling defaults neither apply nor warn.
            temperature=1.0,
            top_p=1.0,
            top_k=50,  # transformers' default: the value greedy decoding does not warn about
            repetition_penalty=s.repetition_penalty,
            pad_token_id=self.pad_token_id,
            eos_token_id=sorted(self.eos_token_ids),
            **extra,
        )
        sampler = GumbelSampler(s.temperature, s.top_k, s.top_p, generator, self._cancelled)
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(r)) + list(r) for r in batch], device=self.device)
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=self.device)
        # Never collective: Transformers turns `synced_gpus` on under ZeRO-3 (world size > 1) for every model, and this
        # one is whole and runs in a worker thread beside the learner's collectives.
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=config,
            logits_processor=[sampler],
            synced_gpus=False,
        )
        new_tokens = sequences[:real, width:]
        token_logps = sampler.token_logps(new_tokens.size(1))[:real]
        return cut_at_eos(new_tokens, token_logps, self.eos_token_ids)

    @contextlib.contextmanager
    def _on_own_stream(self):
        """On a GPU, decode on the explorer's own CUDA stream (the learner's kernels go to the default one)."""
        if self._stream is None:
            yield
            return
        if not self._stream_ready:  # the weights were copied on the default stream
            self._stream.wait_stream(torch.cuda.default_stream(self.device))
            self._stream_ready = True
        with torch.cuda.stream(self._stream):
            yield
        self._stream.synchronize()


def cut_at_eos(
    new_tokens: torch.Tensor, token_logps: torch.Tensor, eos_token_ids
) -> tuple[list[list[int]], list[list[float]]]:
    """Rows of sampled tokens and their log-probs (both ``(B, T)``), each cut after its first EOS."""
    eos = set(eos_token_ids)
    completion_ids, logprobs = [], []
    for ids, lps in zip(new_tokens.tolist(), token_logps.tolist()):
        end = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        completion_ids.append(ids[:end])
        logprobs.append(lps[:end])
    return completion_ids, logprobs


def sampled_completions(
    new_tokens: torch.Tensor, scores: torch.Tensor, eos_token_ids
) -> tuple[list[list[int]], list[list[float]]]:
    """The sampled tokens of a `generate` call and their log-probs under ``scores`` (the sampling distribution,
    ``(B, T, V)``), each row cut after its first EOS."""
    token_logps = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
    return cut_at_eos(new_tokens, token_logps, eos_token_ids)


def in_process_output(
    completion_ids: list[list[int]], logprobs: list[list[float]], prompts: int, start: float
) -> ExplorerOutput:
    """An in-process explorer's answer with its stats (one request; wall time since ``start``)."""
    stats = ExplorerStats(
        wall_s=time.perf_counter() - start,
        prompts=prompts,
        rows=len(completion_ids),
        completion_tokens=sum(len(c) for c in completion_ids),
        requests=1,
    )
    return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs, stats=stats)


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (keeping the token that crosses ``top_p``), as vLLM and transformers
    apply them; removed tokens get ``-inf``."""
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        remove = probs.cumsum(-1) - probs > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits
