"""Explorer as an in-process frozen `transformers` model: no server, for notebooks and small CPU runs."""

from __future__ import annotations

import time
from typing import Any

import torch

from .base import ExplorerOutput, ExplorerStats, SamplingSettings


class LocalExplorer:
    """Samples with ``model.generate`` under ``torch.no_grad`` in eval mode; the model is never trained.

    It samples with torch's global random generator, so the trainer runs it in the foreground on a forked,
    per-step seeded generator (``runs_in_background = False``) rather than in a thread racing the learner.

    Args:
        model: a causal LM or a model id/path (loaded with ``AutoModelForCausalLM``).
        tokenizer: tokenizer of the explorer (its pad/eos ids are used); loaded from ``model`` when omitted.
        sampling: sampling settings of every request.
        batch_size: rows generated per ``generate`` call, to bound memory.
        device: where the model runs (default: where it already is).
    """

    runs_in_background = False

    def __init__(
        self,
        model,
        tokenizer=None,
        sampling: SamplingSettings | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        model_init_kwargs: dict | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, str):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, **(model_init_kwargs or {}))
        if tokenizer is None:
            raise ValueError("LocalExplorer needs a tokenizer when `model` is a model object, not a path.")
        if device is not None:
            model = model.to(device)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingSettings()
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id or tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_token_ids))
        )

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        from transformers import GenerationConfig

        start = time.perf_counter()
        s = self.sampling
        do_sample = s.temperature > 0
        config = GenerationConfig(
            max_new_tokens=s.max_tokens,
            do_sample=do_sample,
            temperature=s.temperature if do_sample else None,
            top_p=s.top_p if do_sample else None,
            top_k=(s.top_k or 0) if do_sample else None,
            repetition_penalty=s.repetition_penalty,
            pad_token_id=self.pad_token_id,
            eos_token_id=sorted(self.eos_token_ids),
            return_dict_in_generate=True,
            output_logits=True,
        )
        if s.seed is not None:
            torch.manual_seed(s.seed)
        rows = [ids for ids in prompt_ids for _ in range(n)]
        completion_ids: list[list[int]] = []
        logprobs: list[list[float]] = []
        device = next(self.model.parameters()).device
        for begin in range(0, len(rows), self.batch_size):
            batch = rows[begin : begin + self.batch_size]
            width = max(len(r) for r in batch)
            input_ids = torch.tensor([[self.pad_token_id] * (width - len(r)) + list(r) for r in batch], device=device)
            attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=device)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
            new_tokens = out.sequences[:, width:]
            # Log-probs of the sampled tokens under the sampling distribution (temperature/top-k/top-p applied),
            # which is what vLLM's processed_logprobs reports too.
            scores = torch.stack(out.logits, dim=1).float()
            if do_sample:
                scores = _warp(scores, s.temperature, s.top_k, s.top_p)
            ids, lps = sampled_completions(new_tokens, scores, self.eos_token_ids)
            completion_ids += ids
            logprobs += lps
        return in_process_output(completion_ids, logprobs, len(prompt_ids), start)


def sampled_completions(
    new_tokens: torch.Tensor, scores: torch.Tensor, eos_token_ids
) -> tuple[list[list[int]], list[list[float]]]:
    """The sampled tokens of a `generate` call and their log-probs under ``scores`` (the sampling distribution,
    ``(B, T, V)``), each row cut after its first EOS."""
    token_logps = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
    eos = set(eos_token_ids)
    completion_ids, logprobs = [], []
    for ids, lps in zip(new_tokens.tolist(), token_logps.tolist()):
        end = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        completion_ids.append(ids[:end])
        logprobs.append(lps[:end])
    return completion_ids, logprobs


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


def _warp(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits
