"""`S2LTrainer`: GRPO whose rollout groups mix a frozen smaller explorer's completions with the learner's.

Data flow of one generation batch (train mode), as in Algorithm 1 of the S2L-PO paper:

    step i -> alpha_i (schedule) -> (G_w, G_s) per group
           -> explorer rows: one request for the whole global batch, on the main process, in a background thread
           -> learner rows: only the G_s rows per group, through TRL's own generation path (overlapping the above)
           -> merged back into TRL's batch order -> TRL rewards / advantages / loss, unchanged except
              the per-source off-policy treatment (explorer IS weights, OPSM exemption) and `per_source` baselines.

Everything that is not train-mode generation (evaluation, tool-call continuations) uses the learner only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather, gather_object
from trl import GRPOTrainer
from trl.trainer.utils import nanstd

from .config import S2LConfig
from .explorers import Explorer, ExplorerError, ExplorerOutput, SamplingSettings
from .model_card import S2L_PAPER, create_s2l_model_card
from .schedule import make_alpha_fn, split_group

logger = logging.getLogger(__name__)


@dataclass
class _MixPlan:
    """Which local rows of the current generation batch the explorer fills, and the explorer request in flight."""

    step: int
    alpha: float
    g_w: int
    g_s: int
    is_explorer: list[bool]  # one flag per local row
    local_slots: list[tuple[int, int]]  # (global group index, slot in group) per local row
    inputs: list[dict[str, Any]]
    used: bool = False  # the first generation call of the batch mixes; later ones are tool-loop continuations
    groups: list[int] | None = None  # global group indices of the explorer request, in request order
    request: tuple | None = None  # (prompt_ids, n, inputs) of the explorer request
    future: Future | None = None
    explorer_rows: dict[tuple[int, int], tuple[list[int], list[float] | None]] | None = None
    latency_s: float = 0.0


class S2LTrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] for small-to-large policy optimization (S2L-PO).

    Use it exactly like `GRPOTrainer`, with an [`S2LConfig`]: at optimizer step `i`, `G_w = ceil(alpha_i * G)` rows of
    every rollout group come from a frozen smaller explorer model and the other `G_s` from the learner; rewards,
    advantages and the GRPO objective stay TRL's.

    Args:
        model, reward_funcs, args, ...: as for [`~trl.GRPOTrainer`]; `args` must be an [`S2LConfig`].
        explorer (`Explorer`, *optional*):
            Your own explorer backend: any object with `generate(prompt_ids, n, inputs=None) -> ExplorerOutput`
            (prompt-major rows, token ids in the learner's tokenizer, optional sampled-token log-probs). Overrides
            `args.explorer_mode`.
        mix_schedule (`Callable[[int], float]`, *optional*):
            `step -> alpha` for notebook users; overrides `args.mix_schedule`. Steps are 1-based optimizer steps and
            `alpha` must lie in [0, 1].
    """

    _tag_names = ["trl", "grpo", "s2l-po"]
    _name = "S2L-PO"
    _paper = S2L_PAPER

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: S2LConfig | None = None,
        *pargs,
        explorer: Explorer | None = None,
        mix_schedule: Callable[[int], float] | None = None,
        **kwargs,
    ):
        if args is None:
            raise ValueError(
                "S2LTrainer needs an S2LConfig (`args=S2LConfig(...)`): it holds the explorer and the mixing schedule."
            )
        if not isinstance(args, S2LConfig):
            raise TypeError(f"S2LTrainer needs `args` to be an S2LConfig, got {type(args).__name__}.")
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)

        self.alpha_fn = make_alpha_fn(
            mix_schedule if mix_schedule is not None else args.mix_schedule,
            args.mix_steps,
            args.mix_alpha_start,
            args.mix_alpha_end,
        )
        self._mix_plan: _MixPlan | None = None
        self._last_rewards_per_func: torch.Tensor | None = None
        self._s2l_loss_inputs: dict[str, Any] | None = None
        self._explorer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2l-explorer")

        # Multi-turn tool loops and custom rollouts continue completions with the learner, so the explorer is off.
        self.mixing_enabled = not (self.tools or self.rollout_func is not None or self.environment_factories)
        if not self.mixing_enabled:
            logger.warning(
                "S2LTrainer: tools, environments or a rollout_func are set; these loops use the learner "
                "only, so no explorer rows are mixed in (plain GRPO)."
            )
        if (
            self.use_vllm
            and args.vllm_mode == "colocate"
            and args.vllm_tensor_parallel_size > 1
            and (args.per_device_train_batch_size * args.steps_per_generation) % self.num_generations != 0
        ):
            raise ValueError(
                "With vllm_mode='colocate' and vllm_tensor_parallel_size > 1, every process must hold whole groups "
                "so that tensor-parallel ranks generate equal numbers of learner rows: make "
                "per_device_train_batch_size * steps_per_generation a multiple of num_generations "
                f"(got {args.per_device_train_batch_size} * {args.steps_per_generation} and "
                f"{self.num_generations})."
            )

        self.explorer_tokenizer_matches = self._check_explorer_tokenizer()
        if args.explorer_importance_sampling != "none" and not self.explorer_tokenizer_matches:
            raise ValueError(
                f"explorer_importance_sampling={args.explorer_importance_sampling!r} needs explorer log-probs, which "
                "are unusable when the explorer tokenizer differs from the learner's; use 'none'."
            )
        # The explorer is built on the main process only (it serves the whole global batch); building it must not
        # consume the torch RNG, so that alpha=0 reproduces GRPOTrainer exactly.
        self.explorer: Explorer | None = None
        if self.mixing_enabled and self.accelerator.is_main_process:
            with torch.random.fork_rng(devices=[]):
                self.explorer = explorer if explorer is not None else self._build_explorer()

    # ------------------------------------------------------------------ set-up
    def _explorer_sampling(self) -> SamplingSettings:
        a = self.args
        return SamplingSettings(
            temperature=a.explorer_temperature,
            top_p=a.explorer_top_p,
            top_k=a.explorer_top_k,
            max_tokens=a.explorer_max_tokens,
            seed=None,
        )

    def _build_explorer(self) -> Explorer:
        a = self.args
        if a.explorer_mode == "server":
            from .explorers import ServerExplorer

            return ServerExplorer(
                a.explorer_server_base_url,
                self._explorer_sampling(),
                startup_timeout=a.explorer_server_timeout,
                request_timeout=a.explorer_request_timeout,
                max_retries=a.explorer_max_retries,
            )
        if a.explorer_mode == "offline":
            from .explorers import OfflineExplorer

            return OfflineExplorer(
                a.explorer_rollouts,
                seed=a.seed,
                retokenize_with=None if self.explorer_tokenizer_matches else self._tokenizer,
            )
        from .explorers import LocalExplorer

        return LocalExplorer(
            a.explorer_model,
            sampling=self._explorer_sampling(),
            device=self.accelerator.device,
            model_init_kwargs=a.model_init_kwargs if isinstance(a.model_init_kwargs, dict) else None,
        )

    def _check_explorer_tokenizer(self) -> bool:
        """True when explorer token ids can be used as learner token ids (same vocabulary and special tokens)."""
        if not self.args.explorer_model:
            return True  # nothing to compare with: ids are taken as the learner's and range-checked at use
        from transformers import AutoTokenizer

        try:
            explorer_tok = AutoTokenizer.from_pretrained(self.args.explorer_model)
        except Exception as exc:  # an offline run may name an explorer that is not available here
            logger.warning(
                "Could not load the explorer tokenizer %r (%s); assuming it matches the learner's.",
                self.args.explorer_model,
                exc,
            )
            return True
        self._explorer_tokenizer = explorer_tok
        same = (
            explorer_tok.get_vocab() == self._tokenizer.get_vocab()
            and explorer_tok.eos_token_id == self._tokenizer.eos_token_id
        )
        if not same:
            logger.warning(
                "The explorer tokenizer (%s) differs from the learner's: explorer completions are "
                "decoded and re-tokenized, and their log-probs dropped.",
                self.args.explorer_model,
            )
        return same

    # ------------------------------------------------------------------ schedule
    def current_mix(self, step: int | None = None) -> tuple[float, int, int]:
        """`(alpha, G_w, G_s)` for optimizer step `step` (default: the step whose batch is generated next)."""
        step = self.state.global_step + 1 if step is None else step
        alpha = self.alpha_fn(step) if self.mixing_enabled else 0.0
        g_w, g_s = split_group(alpha, self.num_generations)
        return alpha, g_w, g_s

    # ------------------------------------------------------------------ generation
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        mode = "train" if self.model.training else "eval"
        if mode == "train" and self.mixing_enabled:
            self._mix_plan = self._plan_mix(inputs)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            plan, self._mix_plan = self._mix_plan, None
        if mode == "train" and plan is not None:
            self._postprocess_mixed_batch(output, plan)
        return output

    def _plan_mix(self, inputs: list[dict[str, Any]]) -> _MixPlan:
        step = self.state.global_step + 1
        alpha, g_w, g_s = self.current_mix(step)
        G = self.num_generations
        start = self.accelerator.process_index * len(inputs)
        # RepeatSampler lays each prompt's G copies next to each other in the global batch and accelerate hands
        # every process a contiguous slice, so a row's group and slot follow from its global index.
        local_slots = [divmod(start + i, G) for i in range(len(inputs))]
        is_explorer = [slot < g_w for _, slot in local_slots]
        return _MixPlan(
            step=step, alpha=alpha, g_w=g_w, g_s=g_s, is_explorer=is_explorer, local_slots=local_slots, inputs=inputs
        )

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        plan = self._mix_plan
        if plan is None or plan.used:  # eval, or a tool-loop continuation: learner only
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        plan.used = True
        if plan.g_w == 0:
            self._log_learner_rows(len(prompt_ids))
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        if images is not None and any(img for img in images):
            raise ValueError("S2L-PO mixing supports text prompts only; got image inputs with G_w > 0.")

        self._start_explorer_request(plan, prompt_ids)
        learner_idx = [i for i, e in enumerate(plan.is_explorer) if not e]
        learner_ids, learner_logps = [], None
        if plan.g_s > 0:
            sub_prompts = [prompt_ids[i] for i in learner_idx]
            if self.use_vllm and self.vllm_generation.mode == "server":
                learner_ids, learner_logps = self._generate_learner_rows_vllm_server(sub_prompts, plan.g_s)
            else:
                sub_mm = {
                    k: [v[i] for i in learner_idx] if isinstance(v, list) else v for k, v in multimodal_fields.items()
                }
                learner_ids, learner_logps = super()._generate_single_turn(
                    sub_prompts, None, sub_mm, plan.g_s, has_tool_images
                )
        self._log_learner_rows(len(learner_ids))
        self._finish_explorer_request(plan)

        completion_ids: list[list[int]] = [None] * len(prompt_ids)
        logprobs = None if learner_logps is None else [None] * len(prompt_ids)
        for j, i in enumerate(learner_idx):
            completion_ids[i] = list(learner_ids[j])
            if logprobs is not None:
                logprobs[i] = list(learner_logps[j])
        for i, (is_exp, key) in enumerate(zip(plan.is_explorer, plan.local_slots)):
            if is_exp:
                ids, _ = plan.explorer_rows[key]
                completion_ids[i] = ids
                if logprobs is not None:
                    # NaN sampling log-probs give TRL's vLLM IS ratio exactly 1 on explorer tokens: their off-policy
                    # treatment is S2L's (explorer_importance_sampling), never TRL's learner-vs-vLLM correction.
                    logprobs[i] = [float("nan")] * len(ids)
        return completion_ids, logprobs

    def _log_learner_rows(self, count: int) -> None:
        # Counted where the learner's generation is called, so the figure proves G_s rows per group, not G.
        total = self.accelerator.gather(torch.tensor([count], device=self.accelerator.device)).sum()
        self._metrics["train"]["s2l/learner_rows_generated"].append(float(total))

    def _start_explorer_request(self, plan: _MixPlan, prompt_ids: list[list[int]]) -> None:
        """Gather one request per group (from the process holding its slot 0) and start it on the main process."""
        heads = [
            (key[0], self._explorer_prompt_ids(prompt_ids[i], plan.inputs[i]), _lookup_fields(plan.inputs[i]))
            for i, key in enumerate(plan.local_slots)
            if key[1] == 0
        ]
        all_heads = sorted(gather_object(heads), key=lambda h: h[0])
        plan.groups = [h[0] for h in all_heads]
        plan.request = ([h[1] for h in all_heads], plan.g_w, [h[2] for h in all_heads])
        if self.accelerator.is_main_process and getattr(self.explorer, "runs_in_background", True):
            plan.future = self._explorer_pool.submit(_timed_generate, self.explorer, *plan.request)

    def _finish_explorer_request(self, plan: _MixPlan) -> None:
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            try:
                if plan.future is not None:
                    output, latency = plan.future.result()
                else:
                    output, latency = self._generate_in_foreground(plan)
                payload = [(output.completion_ids, output.logprobs, latency, None)]
            except Exception as exc:  # re-raised on every process below, so no rank hangs in a collective
                payload = [(None, None, 0.0, f"{type(exc).__name__}: {exc}")]
        broadcast_object_list(payload, from_process=0)
        completion_ids, logprobs, latency, error = payload[0]
        if error is not None:
            raise ExplorerError(f"Explorer generation failed at step {plan.step}: {error}")
        # Every process receives the whole answer (as TRL's vLLM-server path does) but converts only its own rows.
        position = {group: k for k, group in enumerate(plan.groups)}
        rows: dict[tuple[int, int], tuple[list[int], list[float] | None]] = {}
        for (group, slot), is_explorer in zip(plan.local_slots, plan.is_explorer):
            if is_explorer:
                r = position[group] * plan.g_w + slot
                rows[(group, slot)] = self._to_learner_tokens(
                    completion_ids[r], None if logprobs is None else logprobs[r]
                )
        plan.explorer_rows = rows
        plan.latency_s = latency

    def _explorer_prompt_ids(self, learner_prompt_ids: list[int], example: dict[str, Any]) -> list[int]:
        """The prompt in the explorer's tokens: the learner's ids when the tokenizers match, else re-rendered with
        the explorer's own chat template (its special tokens may differ from the learner's)."""
        explorer_tok = getattr(self, "_explorer_tokenizer", None)
        if self.explorer_tokenizer_matches or explorer_tok is None:
            return list(learner_prompt_ids)
        prompt = example["prompt"]
        if isinstance(prompt, list):
            return list(
                explorer_tok.apply_chat_template(
                    prompt, add_generation_prompt=True, tokenize=True, return_dict=True, **self.chat_template_kwargs
                )["input_ids"]
            )
        return explorer_tok(prompt, add_special_tokens=False)["input_ids"]

    def _generate_in_foreground(self, plan: _MixPlan) -> tuple[ExplorerOutput, float]:
        """Run an explorer that samples with torch's global generator (an in-process model) after the learner.

        In a background thread it would race the learner for that generator and make runs irreproducible; here it
        runs on a generator forked and seeded per step, so the learner's random stream is the one it would have
        without the explorer.
        """
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.args.seed * 1_000_003 + plan.step)
            return _timed_generate(self.explorer, *plan.request)

    def _to_learner_tokens(self, ids: list[int], logps: list[float] | None) -> tuple[list[int], list[float] | None]:
        """Apply the learner's rules to an explorer completion: same tokenizer, EOS cut, length cap."""
        if (
            not self.explorer_tokenizer_matches
            and getattr(self, "_explorer_tokenizer", None) is not None
            and self.args.explorer_mode != "offline"
        ):
            ended = bool(ids) and ids[-1] == self._explorer_tokenizer.eos_token_id
            text = self._explorer_tokenizer.decode(ids, skip_special_tokens=True)
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"] + (
                [self.eos_token_ids[0]] if ended else []
            )
            logps = None
        vocab = len(self._tokenizer)
        if any(t < 0 or t >= vocab for t in ids):
            bad = next(t for t in ids if t < 0 or t >= vocab)
            raise ExplorerError(
                f"Explorer returned token id {bad}, outside the learner vocabulary (size {vocab}); "
                "set explorer_model so the tokenizers can be compared and re-tokenized."
            )
        eos = set(self.eos_token_ids)
        end = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        end = min(end, self.max_completion_length)
        ids = list(ids[:end])
        if logps is not None:
            logps = list(logps[:end])
        return ids, logps

    def _generate_learner_rows_vllm_server(self, prompt_ids: list[list[int]], n: int):
        """TRL's vLLM-server generation for G_s learner rows per group.

        TRL's own path slices the server's answer by `process_index * len(prompts)`, which assumes equal row counts
        per process; learner rows are not equally spread when groups straddle processes, so slice by real counts.
        """
        vg = self.vllm_generation
        if self.state.global_step != self._last_loaded_step:
            vg.sync_weights()
            self._last_loaded_step = self.state.global_step
        all_prompts = gather_object(prompt_ids)
        counts = gather_object([len(prompt_ids)])
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            out = vg.vllm_client.generate(
                prompts=all_prompts[::n],
                n=n,
                repetition_penalty=vg.repetition_penalty,
                temperature=vg.temperature,
                top_p=vg.top_p,
                top_k=vg.top_k,
                min_p=0.0 if vg.min_p is None else vg.min_p,
                max_tokens=vg.max_completion_length,
                logprobs=vg.logprobs,
                structured_outputs_regex=vg.structured_outputs_regex,
                generation_kwargs=vg.generation_kwargs,
            )
            payload = [(out["completion_ids"], out["logprobs"])]
        broadcast_object_list(payload, from_process=0)
        all_ids, all_logps = payload[0]
        begin = sum(counts[: self.accelerator.process_index])
        local = slice(begin, begin + len(prompt_ids))
        logps = None if all_logps is None else [[lp[0] for lp in seq] for seq in all_logps[local]]
        return all_ids[local], logps

    # ------------------------------------------------------------------ rewards / advantages
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # gathered over processes: the per-source stats need it
        return rewards_per_func

    def _postprocess_mixed_batch(self, output: dict[str, Any], plan: _MixPlan) -> None:
        device = self.accelerator.device
        B = output["completion_ids"].size(0)
        is_explorer = torch.tensor(plan.is_explorer, dtype=torch.bool, device=device)
        output["s2l_is_explorer"] = is_explorer
        all_is_explorer = gather(is_explorer)
        a = self.args
        metrics = self._metrics["train"]
        metrics["s2l/alpha"].append(plan.alpha)
        metrics["s2l/explorer_fraction"].append(all_is_explorer.float().mean().item())
        metrics["s2l/explorer_latency_s"].append(plan.latency_s)

        rewards_per_func = self._last_rewards_per_func
        if rewards_per_func is not None:
            weights = self.reward_weights.to(device).unsqueeze(0)
            rewards = (rewards_per_func * weights).nansum(dim=1)
            rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
            for name, sel in (("explorer", all_is_explorer), ("learner", ~all_is_explorer)):
                if sel.any():
                    metrics[f"s2l/reward/{name}"].append(torch.nanmean(rewards[sel]).item())
            if a.advantage_grouping == "per_source" and plan.g_w > 0:
                advantages = self._per_source_advantages(rewards, all_is_explorer)
                process_slice = slice(self.accelerator.process_index * B, (self.accelerator.process_index + 1) * B)
                output["advantages"] = advantages[process_slice]

        lengths = output["completion_mask"].sum(dim=1).float()
        all_lengths = gather(lengths)
        for name, sel in (("explorer", all_is_explorer), ("learner", ~all_is_explorer)):
            if sel.any():
                metrics[f"s2l/completion_length/{name}"].append(all_lengths[sel].mean().item())

        if plan.g_w > 0:
            self._explorer_off_policy_terms(output, plan, is_explorer)

    def _per_source_advantages(self, rewards: torch.Tensor, is_explorer: torch.Tensor) -> torch.Tensor:
        """Group baselines computed within each source's rows of the group (the authors' effective behaviour)."""
        G = self.num_generations
        r = rewards.view(-1, G)
        src = is_explorer.view(-1, G)
        advantages = torch.zeros_like(r)
        for sel in (src, ~src):
            masked = torch.where(sel, r, torch.nan)
            mean = torch.nanmean(masked, dim=1, keepdim=True)
            if self.scale_rewards == "group":
                std = nanstd(masked, dim=1).unsqueeze(1)
                std = torch.nan_to_num(std, nan=0.0)  # one row of a source: no spread
            elif self.scale_rewards == "batch":
                std = nanstd(rewards).expand_as(mean)
            else:
                std = None
            adv = masked - mean
            if std is not None:
                adv = adv / (std + 1e-4)
            advantages = torch.where(sel, adv, advantages)
        return torch.nan_to_num(advantages, nan=0.0).view(-1)

    def _explorer_off_policy_terms(self, output: dict[str, Any], plan: _MixPlan, is_explorer: torch.Tensor) -> None:
        """Explorer log-prob gap metric and, unless `explorer_importance_sampling='none'`, explorer IS weights."""
        device = self.accelerator.device
        completion_mask = output["completion_mask"]
        T = completion_mask.size(1)
        explorer_logps = torch.full((len(plan.is_explorer), T), float("nan"), device=device)
        known = False
        for i, (is_exp, key) in enumerate(zip(plan.is_explorer, plan.local_slots)):
            if is_exp:
                _, lps = plan.explorer_rows[key]
                if lps is not None and len(lps):
                    explorer_logps[i, : len(lps)] = torch.tensor(lps, device=device, dtype=torch.float32)
                    known = True
        known = bool(gather(torch.tensor([known], device=device)).any())
        if not known:
            return
        if self.args.explorer_off_policy_mask:
            output["s2l_explorer_logps"] = explorer_logps
        learner_logps = output.get("old_per_token_logps")
        if learner_logps is None:
            learner_logps = self._learner_logps(output)
        mask = completion_mask.bool() & is_explorer.unsqueeze(1) & ~torch.isnan(explorer_logps)
        diff = torch.where(mask, learner_logps - explorer_logps, torch.zeros_like(learner_logps))
        gap_stats = self.accelerator.reduce(torch.stack([diff.sum(), mask.sum().float()]), reduction="sum")
        if gap_stats[1] > 0:
            self._metrics["train"]["s2l/logp_gap"].append((gap_stats[0] / gap_stats[1]).item())

        mode = self.args.explorer_importance_sampling
        if mode == "none":
            return
        lo = self.args.explorer_importance_sampling_clip_min
        hi = self.args.explorer_importance_sampling_clip_max
        if mode.startswith("sequence"):
            weight = torch.exp(diff.sum(dim=1, keepdim=True)).expand(-1, T)
        else:
            weight = torch.exp(diff)
        if mode.endswith("truncate"):
            weight = weight.clamp(min=lo, max=hi)
        else:
            outside = (weight < (-math.inf if lo is None else lo)) | (weight > (math.inf if hi is None else hi))
            weight = weight.masked_fill(outside, 0.0)
        weight = torch.where(is_explorer.unsqueeze(1), weight, torch.ones_like(weight))
        flat = weight[is_explorer][:, 0] if mode.startswith("sequence") else weight[mask]
        stats = gather(torch.stack([flat.mean() if flat.numel() else torch.tensor(float("nan"), device=device)]))
        self._metrics["train"]["s2l/explorer_is_weight/mean"].append(torch.nanmean(stats).item())
        # A non-negative per-token weight on the advantage equals a weight on the per-token policy loss for every
        # TRL loss type, so TRL's `_compute_loss` needs no change: advantages simply become (B, T).
        advantages = output["advantages"]
        output["advantages"] = advantages.unsqueeze(1) * weight if advantages.dim() == 1 else advantages * weight

    @torch.no_grad()
    def _learner_logps(self, output: dict[str, Any]) -> torch.Tensor:
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            self.model,
            input_ids,
            attention_mask,
            output["completion_ids"].size(1),
            batch_size=self.args.per_device_train_batch_size,
        )
        return logps

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        self._s2l_loss_inputs = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._s2l_loss_inputs = None

    def get_off_policy_mask(self, advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold):
        """TRL's off-policy sequence mask, except that explorer rows are kept unless `explorer_off_policy_mask`."""
        inputs = self._s2l_loss_inputs or {}
        is_explorer = inputs.get("s2l_is_explorer")
        if is_explorer is not None and self.args.explorer_off_policy_mask and "s2l_explorer_logps" in inputs:
            explorer_logps = inputs["s2l_explorer_logps"]
            use = is_explorer.unsqueeze(1) & ~torch.isnan(explorer_logps)
            sampling_per_token_logps = torch.where(use, explorer_logps, sampling_per_token_logps)
        keep = GRPOTrainer.get_off_policy_mask(
            advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold
        )
        if is_explorer is not None and not self.args.explorer_off_policy_mask:
            keep = torch.where(is_explorer.unsqueeze(1), torch.ones_like(keep), keep)
        return keep

    # ------------------------------------------------------------------ model card
    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """TRL's model card plus the run's S2L-PO provenance (explorer, schedule, IS policy, grouping, citation)."""
        create_s2l_model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)


def _lookup_fields(example: dict[str, Any]) -> dict[str, Any]:
    """The fields of a data-set row an explorer may need to find its rollouts (kept small: they cross processes)."""
    return {k: example[k] for k in ("prompt_id", "prompt") if k in example}


def _timed_generate(explorer: Explorer, prompt_ids, n, inputs) -> tuple[ExplorerOutput, float]:
    import time

    start = time.perf_counter()
    out = explorer.generate(prompt_ids, n, inputs=inputs)
    expected = len(prompt_ids) * n
    if len(out.completion_ids) != expected:
        raise ExplorerError(
            f"The explorer returned {len(out.completion_ids)} completions, expected {expected} "
            f"({len(prompt_ids)} prompts x {n})."
        )
    return out, time.perf_counter() - start
