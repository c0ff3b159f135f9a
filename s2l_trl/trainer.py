"""`S2LTrainer`: GRPO whose rollout groups mix a frozen smaller explorer's completions with the learner's.

Data flow of one generation round (train mode), as in Algorithm 1 of the S2L-PO paper:

    round r starts at optimizer step i -> alpha_i (schedule) -> (G_w, G_s) per group -> row placement (mixing)
        -> explorer rows: one request for the whole global batch, on the main process, overlapping the learner
        -> learner rows: only the G_s rows per group, through TRL's own generation path
        -> merged back into TRL's batch order -> TRL rewards / advantages / loss, unchanged except
           the per-source off-policy treatment (explorer IS weights, OPSM exemption) and `per_source` baselines.

Everything S2L knows about a round lives in one `MixedRound`, created and discarded in
`_generate_and_score_completions`; the tensors the loss needs travel in TRL's own batch dict. Everything that is not
train-mode generation (evaluation, tool-call continuations) uses the learner only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather, gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from . import mixing
from .config import S2LConfig
from .explorers import Explorer, ExplorerError, ExplorerOutput, SamplingSettings, build_explorer, generate_checked
from .jsonl import write_json_atomic
from .model_card import S2L_PAPER, create_s2l_model_card
from .schedule import make_alpha_fn, split_group
from .trl_compat import warn_if_untested_trl

logger = logging.getLogger(__name__)

# Written into every checkpoint folder: what a resumed run needs beyond TRL's own state.
S2L_STATE_NAME = "s2l_state.json"


@dataclass
class MixedRound:
    """Everything S2L-PO knows about one generation round, from planning to scoring.

    Created by `_generate_and_score_completions` before TRL generates and discarded when it returns; filled by
    `_generate_single_turn` (the explorer's rows) and `_calculate_rewards` (the gathered rewards).
    """

    index: int  # 0-based generation round
    step: int  # 1-based optimizer step at which the round starts: the schedule's `i`
    alpha: float
    g_w: int
    g_s: int
    placement: mixing.RowPlacement
    inputs: list[dict[str, Any]]
    generated: bool = False  # the first generation call mixes; later ones are tool-loop continuations
    groups: list[int] = field(default_factory=list)  # global group indices of the explorer request, in order
    request: tuple | None = None  # (prompt_ids, n, lookup fields) of the explorer request
    future: Future | None = None
    explorer_rows: dict[tuple[int, int], tuple[list[int], list[float] | None]] = field(default_factory=dict)
    explorer_latency_s: float = 0.0  # wall time of the explorer's work
    explorer_wait_s: float = 0.0  # time the trainer blocked on it
    explorer_tokens: int = 0
    explorer_failed_requests: int = 0  # explorer requests retried or resent this round (server backend)
    learner_rows: int = 0  # learner completions generated on this process
    rewards_per_func: torch.Tensor | None = None  # gathered over processes


@dataclass
class ExplorerPrefetch:
    """The explorer request of the next round, started while the learner trains on the current one (main process).

    Created at the end of round `index - 1` (`_prefetch_next_round`), consumed by round `index` when its request is
    the same, else waited for and dropped. At most one exists.
    """

    index: int
    groups: list[int]
    request: tuple
    future: Future


class _Lookahead:
    """Wraps Transformers' epoch iterator so the trainer can peek at generation batches it has not handed out yet."""

    def __init__(self, source):
        self.source = source
        self.buffer: list[Any] = []
        self.next_micro_step = 0  # TRL micro-step of the next item handed out

    def __iter__(self):
        return self

    def __next__(self):
        return self.buffer.pop(0) if self.buffer else next(self.source)

    def peek(self, offset: int) -> Any:
        """The item `offset` places ahead of the next one, or `None` when the epoch ends first."""
        while len(self.buffer) <= offset:
            try:
                self.buffer.append(next(self.source))
            except StopIteration:
                return None
        return self.buffer[offset]


class S2LTrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] for small-to-large policy optimization (S2L-PO).

    Use it exactly like `GRPOTrainer`, with an [`S2LConfig`]: in the generation round that starts at optimizer step
    `i`, `G_w = ceil(alpha_i * G)` rows of every rollout group come from a frozen smaller explorer model and the other
    `G_s` from the learner; rewards, advantages and the GRPO objective stay TRL's.

    Args:
        model, reward_funcs, args, ...: as for [`~trl.GRPOTrainer`]; `args` must be an [`S2LConfig`].
        explorer (`Explorer`, *optional*):
            Your own explorer backend: any object with `generate(prompt_ids, n, inputs=None) -> ExplorerOutput`
            (prompt-major rows, token ids in the learner's tokenizer, optional sampled-token log-probs). Overrides
            `args.explorer_mode`. Optional methods the trainer uses when present: `missing(examples)` (start-up
            coverage check), `state_dict()` / `load_state_dict(state)` (checkpointed random state), `close()`.
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
        warn_if_untested_trl()
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)

        self.alpha_fn = make_alpha_fn(
            mix_schedule if mix_schedule is not None else args.mix_schedule,
            args.mix_steps,
            args.mix_alpha_start,
            args.mix_alpha_end,
        )
        self._round: MixedRound | None = None
        self._prefetched: ExplorerPrefetch | None = None
        self._lookahead: _Lookahead | None = None
        # The explorer's random state before each pending round's request (round index -> state): a checkpoint
        # stores the one of the round a resumed run regenerates, so that it draws the same explorer rows.
        self._explorer_state_before: dict[int, Any] = {}
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
            self._check_explorer_covers(self.train_dataset)
        self.prefetch_enabled = bool(
            args.explorer_prefetch
            and self.mixing_enabled
            and broadcast_object_list([getattr(self.explorer, "runs_in_background", True)], from_process=0)[0]
            and args.steps_per_generation >= args.gradient_accumulation_steps
        )

    # ------------------------------------------------------------------ set-up
    def _build_explorer(self) -> Explorer:
        a = self.args
        explorer_tok = getattr(self, "_explorer_tokenizer", None)
        sampling = SamplingSettings(
            temperature=a.explorer_temperature,
            top_p=a.explorer_top_p,
            top_k=a.explorer_top_k,
            max_tokens=a.explorer_max_tokens,
            seed=None,
        )
        return build_explorer(
            a.explorer_mode,
            model=a.explorer_model,
            sampling=sampling,
            server_base_url=a.explorer_server_base_url,
            server_kwargs={
                "startup_timeout": a.explorer_server_timeout,
                "request_timeout": a.explorer_request_timeout,
                "max_retries": a.explorer_max_retries,
                "prompts_per_request": a.explorer_prompts_per_request,
                "max_concurrent_requests": a.explorer_max_concurrent_requests,
                "max_server_failures": a.explorer_server_max_failures,
                "check_model_name": a.explorer_server_check_model_name,
                # The server must serve explorer_model's tokenizer, or the learner's when none is named.
                "expected_tokenizer": explorer_tok if explorer_tok is not None else self._tokenizer,
                "expected_model": a.explorer_model,
            },
            rollouts=a.explorer_rollouts,
            offline_kwargs={
                "seed": a.seed,
                "retokenize_with": None if self.explorer_tokenizer_matches else self._tokenizer,
                "explorer_eos_token_ids": sorted(self._explorer_eos_ids) or None,
                "eos_token_id": self.eos_token_ids[0],
                "vocab_size": len(explorer_tok) if explorer_tok is not None else len(self._tokenizer),
            },
            device=self.accelerator.device,
            model_init_kwargs=a.model_init_kwargs if isinstance(a.model_init_kwargs, dict) else None,
        )

    def _check_explorer_tokenizer(self) -> bool:
        """True when explorer token ids can be used as learner token ids (same vocabulary and special tokens)."""
        self._explorer_eos_ids: set[int] = set()
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
        # A completion ends at any of the explorer's EOS ids: its tokenizer's and its generation config's.
        self._explorer_eos_ids = {explorer_tok.eos_token_id} - {None}
        try:
            from transformers import GenerationConfig

            eos = GenerationConfig.from_pretrained(self.args.explorer_model).eos_token_id
            self._explorer_eos_ids |= set(eos if isinstance(eos, list) else [eos]) - {None}
        except Exception:  # no generation config: the tokenizer's EOS is all there is
            pass
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

    def _check_explorer_covers(self, dataset) -> None:
        """Refuse to start when the explorer cannot serve some training prompts (offline rollouts), naming all; and
        when stored rollouts were sampled on other prompt token ids than this run builds (another chat template or
        `chat_template_kwargs`), which would append explorer answers to prompts they were not sampled for."""
        missing_fn = getattr(self.explorer, "missing", None)
        if dataset is None or not callable(missing_fn) or not hasattr(dataset, "__len__"):
            return
        examples = [_lookup_fields(dict(row)) for row in dataset]
        missing = missing_fn(examples)
        if missing:
            shown = ", ".join(missing[:20]) + (f", ... ({len(missing) - 20} more)" if len(missing) > 20 else "")
            raise ExplorerError(
                f"The explorer has no rollouts for {len(missing)} of the {len(dataset)} training prompts: {shown}. "
                "Sample them first (s2l-sample with the same data arguments as s2l-train)."
            )
        stored_fn = getattr(self.explorer, "stored_prompt_ids", None)
        if not callable(stored_fn) or not self.explorer_tokenizer_matches:
            return
        mismatched = []
        for example in examples:
            stored = stored_fn(example)
            if stored is not None and stored != list(self._tokenize_prompts([example["prompt"]])[0][0]):
                mismatched.append(str(example.get("prompt_id", example["prompt"]))[:80])
        if mismatched:
            raise ExplorerError(
                f"{len(mismatched)} of the {len(dataset)} training prompts were sampled on other prompt token ids "
                f"than this run builds (e.g. {', '.join(mismatched[:5])}): the rollouts were made with another chat "
                "template, system prompt or chat_template_kwargs. Re-run s2l-sample with this run's data arguments."
            )

    # ------------------------------------------------------------------ schedule
    def current_mix(self, step: int | None = None) -> tuple[float, int, int]:
        """`(alpha, G_w, G_s)` for optimizer step `step` (default: the step whose batch is generated next)."""
        step = self.state.global_step + 1 if step is None else step
        alpha = self.alpha_fn(step) if self.mixing_enabled else 0.0
        g_w, g_s = split_group(alpha, self.num_generations)
        return alpha, g_w, g_s

    def _round_position(self) -> tuple[int, int]:
        """`(round index, 1-based optimizer step at which that round starts)` for TRL's current micro-step.

        TRL generates every `steps_per_generation * num_iterations` micro-steps; the schedule follows the round, so a
        run that regenerates inside a round (after a resume) keeps the alpha the round started with.
        """
        every = self.args.steps_per_generation * self.num_iterations
        index = self._step // every
        return index, (index * every) // self.args.gradient_accumulation_steps + 1

    # ------------------------------------------------------------------ TRL seams
    def _prepare_inputs(self, generation_batch: dict[str, torch.Tensor | Any]) -> dict[str, torch.Tensor | Any]:
        """TRL calls this once per micro-step with the local generation batch; it generates a round when its buffer is
        empty or used up and returns this micro-step's slice.

        S2L: TRL does not checkpoint its micro-step counter, so a run resumed inside a round would regenerate at the
        resume step and shift every later round. The counter is realigned with the uninterrupted run first; the
        round is then regenerated (learner rows are new samples) with its original schedule value.
        """
        if self.model.training and self._buffered_inputs is None and self._step == 0 and self.state.global_step > 0:
            self._step = self.state.global_step * self.args.gradient_accumulation_steps
            every = self.args.steps_per_generation * self.num_iterations
            if self._step % every:
                logger.info(
                    "Resumed at step %d, inside generation round %d: regenerating that round with its original "
                    "mix (alpha of step %d).",
                    self.state.global_step,
                    self._step // every,
                    self._round_position()[1],
                )
        return super()._prepare_inputs(generation_batch)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Transformers calls this once per optimizer step to pull that step's micro-batches (for GRPO: generation
        batches of prompts) from the epoch's iterator. S2L: unchanged, through a lookahead that lets the explorer
        prefetch the next round's prompts without changing their order."""
        if self._lookahead is None or self._lookahead.source is not epoch_iterator:
            self._lookahead = _Lookahead(epoch_iterator)
        batch_samples, num_items = super().get_batch_samples(self._lookahead, num_batches, device)
        self._lookahead.next_micro_step = self._step + len(batch_samples)
        return batch_samples, num_items

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        """TRL calls this with the local rows of a generation batch (each prompt repeated for its group) and expects
        the scored batch dict back (ids, masks, advantages, optional old/sampling/ref log-probs).

        S2L: in train mode a `MixedRound` is planned first; TRL then generates (see `_generate_single_turn`) and
        scores as usual; the round's per-source metrics, `per_source` advantages and explorer off-policy terms are
        added to TRL's output. Evaluation is TRL's, learner only.
        """
        train = self.model.training
        if train and self.mixing_enabled:
            self._round = self._plan_round(inputs)
        try:
            output = super()._generate_and_score_completions(inputs)
            if train and self._round is not None:
                self._finish_round(output, self._round)
                self._prefetch_next_round(self._round)
        finally:
            self._round = None
        return output

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL calls this with the local prompt ids (one per row) and expects one completion per row back, with the
        sampled tokens' log-probs where the backend has them (vLLM) or `None`.

        S2L: on the first call of a mixed train round, the learner generates only its own rows (`G_s` per group) and
        the explorer's rows are filled in from one explorer request that overlaps the learner's generation. Explorer
        rows carry NaN sampling log-probs, so TRL's vLLM importance-sampling ratio is exactly 1 on them: their
        off-policy treatment is S2L's own. Tool-loop continuations and evaluation: learner only.
        """
        rnd = self._round
        if rnd is None or rnd.generated:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        rnd.generated = True
        if rnd.g_w == 0:
            rnd.learner_rows = len(prompt_ids)
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        if images is not None and any(img for img in images):
            raise ValueError("S2L-PO mixing supports text prompts only; got image inputs with G_w > 0.")

        self._start_explorer_request(rnd, prompt_ids)
        learner_ids, learner_logps = self._generate_learner_rows(rnd, prompt_ids, multimodal_fields, has_tool_images)
        self._finish_explorer_request(rnd)

        completion_ids: list[list[int]] = [[] for _ in prompt_ids]
        logprobs = None if learner_logps is None else [[] for _ in prompt_ids]
        for j, i in enumerate(rnd.placement.learner_rows):
            completion_ids[i] = list(learner_ids[j])
            if logprobs is not None:
                logprobs[i] = list(learner_logps[j])
        for i in rnd.placement.explorer_rows:
            ids, _ = rnd.explorer_rows[rnd.placement.slots[i]]
            completion_ids[i] = ids
            if logprobs is not None:
                logprobs[i] = [float("nan")] * len(ids)
        return completion_ids, logprobs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL calls this with the local rows and returns the rewards of every reward function, gathered over all
        processes. S2L: unchanged; the round keeps the gathered rewards for its per-source statistics."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._round is not None:
            self._round.rewards_per_func = rewards_per_func
        return rewards_per_func

    def _compute_loss(self, model, inputs):
        """TRL calls this with one micro-batch of the scored round and returns the GRPO loss.

        S2L: unchanged, except what TRL's off-policy sequence mask (`off_policy_mask_threshold`) sees for explorer
        rows: no divergence (always kept), or with `explorer_off_policy_mask` the explorer's own log-probs. Explorer
        importance weights, when asked for, are already folded into the (B, T) advantages.
        """
        is_explorer = inputs.get("s2l_is_explorer")
        if self.off_policy_mask_threshold is not None and is_explorer is not None and bool(is_explorer.any()):
            sampling = inputs.get("sampling_per_token_logps", inputs.get("old_per_token_logps"))
            inputs = {
                **inputs,
                "sampling_per_token_logps": mixing.off_policy_mask_logps(
                    sampling,
                    is_explorer,
                    inputs.get("s2l_explorer_logps"),
                    self.args.explorer_off_policy_mask,
                    tuple(inputs["completion_ids"].shape),
                ),
            }
        return super()._compute_loss(model, inputs)

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint, plus `s2l_state.json`: the explorer's random state before the round a resumed run
        generates first (the current round when the checkpoint falls inside it, else the next), so that the resumed
        run redraws the explorer rows the uninterrupted run drew."""
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        every = self.args.steps_per_generation * self.num_iterations
        micro_step = self.state.global_step * self.args.gradient_accumulation_steps
        pending = micro_step // every
        state_fn = getattr(self.explorer, "state_dict", None)
        explorer_state = None
        if callable(state_fn):
            explorer_state = (
                self._explorer_state_before[pending] if pending in self._explorer_state_before else state_fn()
            )
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        write_json_atomic(
            os.path.join(folder, S2L_STATE_NAME),
            {"global_step": self.state.global_step, "next_round": pending, "explorer_state": explorer_state},
        )

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Transformers calls this when resuming; S2L also restores the explorer's random state."""
        super()._load_optimizer_and_scheduler(checkpoint)
        load_fn = getattr(self.explorer, "load_state_dict", None)
        if checkpoint is None or not callable(load_fn):
            return
        path = os.path.join(checkpoint, S2L_STATE_NAME)
        if not os.path.exists(path):
            logger.warning(
                "%s has no %s: explorer draws after the resume differ from the original run.",
                checkpoint,
                S2L_STATE_NAME,
            )
            return
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("explorer_state") is not None:
            load_fn(state["explorer_state"])

    # ------------------------------------------------------------------ one round
    def _plan_round(self, inputs: list[dict[str, Any]]) -> MixedRound:
        index, step = self._round_position()
        alpha, g_w, g_s = self.current_mix(step)
        placement = mixing.place_rows(self.accelerator.process_index, len(inputs), self.num_generations, g_w)
        return MixedRound(index=index, step=step, alpha=alpha, g_w=g_w, g_s=g_s, placement=placement, inputs=inputs)

    def _generate_learner_rows(self, rnd: MixedRound, prompt_ids, multimodal_fields, has_tool_images):
        """The learner's `G_s` rows per group of this process, through TRL's own generation path."""
        rows = rnd.placement.learner_rows
        rnd.learner_rows = len(rows)
        if rnd.g_s == 0:
            return [], None
        sub_prompts = [prompt_ids[i] for i in rows]
        if self.use_vllm and self.vllm_generation.mode == "server":
            return self._generate_learner_rows_vllm_server(sub_prompts, rnd.g_s)
        # Every process must enter TRL's generation (ZeRO-3 / FSDP parameter gathers and tensor-parallel groups are
        # collective), so a process that holds only explorer rows generates one throw-away row.
        take = rows or [0]
        sub_prompts = [prompt_ids[i] for i in take]
        sub_mm = {k: [v[i] for i in take] if isinstance(v, list) else v for k, v in multimodal_fields.items()}
        ids, logps = super()._generate_single_turn(sub_prompts, None, sub_mm, rnd.g_s, has_tool_images)
        if not rows:
            return [], (None if logps is None else [])
        return ids, logps

    def _start_explorer_request(self, rnd: MixedRound, prompt_ids: list[list[int]]) -> None:
        """Gather one request per group (from the process holding its slot 0) and start it on the main process."""
        heads = [
            (
                rnd.placement.slots[i][0],
                self._explorer_prompt_ids(prompt_ids[i], rnd.inputs[i]),
                _lookup_fields(rnd.inputs[i]),
            )
            for i in rnd.placement.group_heads
        ]
        all_heads = sorted(gather_object(heads), key=lambda h: h[0])
        rnd.groups = [h[0] for h in all_heads]
        rnd.request = ([h[1] for h in all_heads], rnd.g_w, [h[2] for h in all_heads])
        if not self.accelerator.is_main_process:
            return
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None:
            if (prefetched.index, prefetched.groups, prefetched.request[:2]) == (
                rnd.index,
                rnd.groups,
                rnd.request[:2],
            ):
                rnd.future = prefetched.future
                return
            logger.warning(
                "The prefetched explorer request of round %d does not match round %d's prompts; regenerating it.",
                prefetched.index,
                rnd.index,
            )
            prefetched.future.exception()  # let it finish, then undo its draws so the run stays reproducible
            load_fn = getattr(self.explorer, "load_state_dict", None)
            if callable(load_fn) and prefetched.index in self._explorer_state_before:
                load_fn(self._explorer_state_before[prefetched.index])
        self._submit_explorer_request(rnd.index, rnd.request, rnd)

    def _submit_explorer_request(self, index: int, request: tuple, rnd: MixedRound | None = None) -> Future | None:
        """Start round `index`'s explorer request in the background (main process), remembering the explorer's
        random state before it for checkpoints."""
        state_fn = getattr(self.explorer, "state_dict", None)
        if callable(state_fn):
            self._explorer_state_before = {k: v for k, v in self._explorer_state_before.items() if k >= index - 1}
            self._explorer_state_before[index] = state_fn()
        if not getattr(self.explorer, "runs_in_background", True):
            return None  # generated in the foreground by `_finish_explorer_request`
        future = self._explorer_pool.submit(_timed_generate, self.explorer, *request)
        if rnd is not None:
            rnd.future = future
        return future

    def _prefetch_next_round(self, rnd: MixedRound) -> None:
        """Start the explorer request of round `rnd.index + 1` while the learner trains on round `rnd.index`.

        Every process peeks at its next generation batch (the rows TRL will hand it, unchanged) and the request is
        gathered exactly as `_start_explorer_request` will gather it; skipped at the end of an epoch, after the
        last step, and when the next round has no explorer rows.
        """
        if not self.prefetch_enabled or self._lookahead is None:
            return
        every = self.args.steps_per_generation * self.num_iterations
        next_start = (rnd.index + 1) * every
        step = next_start // self.args.gradient_accumulation_steps + 1
        alpha, g_w, _ = self.current_mix(step)
        if g_w == 0 or (self.state.max_steps > 0 and step > self.state.max_steps):
            return
        offset = next_start - self._lookahead.next_micro_step
        batch = self._lookahead.peek(offset) if offset >= 0 else None
        if not all(gather_object([batch is not None])):  # every process must take part in the gather below
            return
        placement = mixing.place_rows(self.accelerator.process_index, len(batch), self.num_generations, g_w)
        prompt_ids = self._tokenize_prompts([x["prompt"] for x in batch])[0]
        heads = [
            (placement.slots[i][0], self._explorer_prompt_ids(prompt_ids[i], batch[i]), _lookup_fields(batch[i]))
            for i in placement.group_heads
        ]
        all_heads = sorted(gather_object(heads), key=lambda h: h[0])
        if not self.accelerator.is_main_process:
            return
        request = ([h[1] for h in all_heads], g_w, [h[2] for h in all_heads])
        future = self._submit_explorer_request(rnd.index + 1, request)
        self._prefetched = ExplorerPrefetch(rnd.index + 1, [h[0] for h in all_heads], request, future)

    def _finish_explorer_request(self, rnd: MixedRound) -> None:
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            waited = time.perf_counter()
            try:
                if rnd.future is not None:
                    output, latency = rnd.future.result()
                else:
                    output, latency = self._generate_in_foreground(rnd)
                failed = getattr(output.stats, "failed_requests", 0) if output.stats is not None else 0
                payload = [
                    (output.completion_ids, output.logprobs, latency, time.perf_counter() - waited, failed, None)
                ]
            except Exception as exc:  # re-raised on every process below, so no process hangs in the broadcast
                payload = [(None, None, 0.0, 0.0, 0, f"{type(exc).__name__}: {exc}")]
        broadcast_object_list(payload, from_process=0)
        completion_ids, logprobs, latency, waited, failed, error = payload[0]
        if error is not None:
            raise ExplorerError(f"Explorer generation failed in the round of step {rnd.step}: {error}")
        rnd.explorer_latency_s, rnd.explorer_wait_s, rnd.explorer_failed_requests = latency, waited, failed
        rnd.explorer_tokens = sum(len(ids) for ids in completion_ids)
        # Every process receives the whole answer (as TRL's vLLM-server path does) but converts only its own rows.
        position = {group: k for k, group in enumerate(rnd.groups)}
        for i in rnd.placement.explorer_rows:
            group, slot = rnd.placement.slots[i]
            r = mixing.explorer_answer_index(position[group], slot, rnd.g_w)
            rnd.explorer_rows[(group, slot)] = self._to_learner_tokens(
                completion_ids[r], None if logprobs is None else logprobs[r]
            )

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

    def _generate_in_foreground(self, rnd: MixedRound) -> tuple[ExplorerOutput, float]:
        """Run an explorer that samples with torch's global generator (an in-process model) after the learner.

        In a background thread it would race the learner for that generator and make runs irreproducible; here it
        runs on a generator forked and seeded per round, so the learner's random stream is the one it would have
        without the explorer.
        """
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.args.seed * 1_000_003 + rnd.step)
            return _timed_generate(self.explorer, *rnd.request)

    def _to_learner_tokens(self, ids: list[int], logps: list[float] | None) -> tuple[list[int], list[float] | None]:
        """Apply the learner's rules to an explorer completion: same tokenizer, EOS cut, length cap."""
        explorer_tok = getattr(self, "_explorer_tokenizer", None)
        if not self.explorer_tokenizer_matches and explorer_tok is not None and self.args.explorer_mode != "offline":
            ended = bool(ids) and ids[-1] in self._explorer_eos_ids
            text = explorer_tok.decode(ids, skip_special_tokens=True)
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"] + (
                [self.eos_token_ids[0]] if ended else []
            )
            logps = None
        vocab = len(self._tokenizer)
        bad = next((t for t in ids if t < 0 or t >= vocab), None)
        if bad is not None:
            hint = (
                f"explorer_model={self.args.explorer_model!r} is declared, so the explorer in use does not serve that "
                "model (check the server or the rollout file)"
                if self.args.explorer_model
                else "set explorer_model to the explorer's id so its completions are re-tokenized"
            )
            raise ExplorerError(
                f"The explorer returned token id {bad}, outside the learner vocabulary (size {vocab}): {hint}."
            )
        return mixing.cut_completion(ids, logps, self.eos_token_ids, self.max_completion_length, self.eos_token_ids[0])

    def _generate_learner_rows_vllm_server(self, prompt_ids: list[list[int]], n: int):
        """TRL's vLLM-server generation for `n = G_s` learner rows per group.

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
            payload = [vllm_server_generate(vg, all_prompts[::n], n)]
        broadcast_object_list(payload, from_process=0)
        all_ids, all_logps = payload[0]
        begin = sum(counts[: self.accelerator.process_index])
        local = slice(begin, begin + len(prompt_ids))
        logps = None if all_logps is None else [[lp[0] for lp in seq] for seq in all_logps[local]]
        return all_ids[local], logps

    def _finish_round(self, output: dict[str, Any], rnd: MixedRound) -> None:
        """Per-source metrics, `per_source` advantages and explorer off-policy terms of a scored round."""
        device = self.accelerator.device
        is_explorer = torch.tensor(rnd.placement.is_explorer, dtype=torch.bool, device=device)
        output["s2l_is_explorer"] = is_explorer
        all_is_explorer = gather(is_explorer)
        metrics = self._metrics["train"]
        metrics["s2l/round"].append(float(rnd.index))
        metrics["s2l/alpha"].append(rnd.alpha)
        metrics["s2l/explorer_rows_per_group"].append(float(rnd.g_w))
        metrics["s2l/explorer_fraction"].append(all_is_explorer.float().mean().item())
        total_learner_rows = self.accelerator.gather(torch.tensor([rnd.learner_rows], device=device)).sum()
        # Counted where the learner's generation is called, so the figure proves G_s rows per group, not G.
        metrics["s2l/learner_rows_generated"].append(float(total_learner_rows))
        if rnd.g_w > 0:
            metrics["s2l/explorer_latency_s"].append(rnd.explorer_latency_s)
            metrics["s2l/explorer_wait_s"].append(rnd.explorer_wait_s)
            if rnd.explorer_latency_s > 0:
                metrics["s2l/explorer_tokens_per_s"].append(rnd.explorer_tokens / rnd.explorer_latency_s)
            metrics["s2l/explorer_failed_requests"].append(float(rnd.explorer_failed_requests))

        if rnd.rewards_per_func is not None:
            rewards = (rnd.rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
            rewards[torch.isnan(rnd.rewards_per_func).all(dim=1)] = torch.nan
            for name, sel in (("explorer", all_is_explorer), ("learner", ~all_is_explorer)):
                if sel.any():
                    metrics[f"s2l/reward/{name}"].append(torch.nanmean(rewards[sel]).item())
            if self.args.advantage_grouping == "per_source" and rnd.g_w > 0:
                advantages = mixing.per_source_advantages(
                    rewards, all_is_explorer, self.num_generations, self.scale_rewards
                )
                B = output["completion_ids"].size(0)
                output["advantages"] = advantages[
                    self.accelerator.process_index * B : (self.accelerator.process_index + 1) * B
                ]

        all_lengths = gather(output["completion_mask"].sum(dim=1).float())
        for name, sel in (("explorer", all_is_explorer), ("learner", ~all_is_explorer)):
            if sel.any():
                metrics[f"s2l/completion_length/{name}"].append(all_lengths[sel].mean().item())
        if rnd.g_w > 0:
            self._explorer_off_policy_terms(output, rnd, is_explorer)

    def _explorer_off_policy_terms(self, output: dict[str, Any], rnd: MixedRound, is_explorer: torch.Tensor) -> None:
        """The explorer log-prob gap metric and, unless `explorer_importance_sampling='none'`, explorer IS weights.

        The gap uses the learner log-probs the step computes anyway (TRL's `old_per_token_logps`); only the IS
        weights, which need them, justify a forward pass of their own.
        """
        device = self.accelerator.device
        completion_mask = output["completion_mask"]
        explorer_logps = torch.full(completion_mask.shape, float("nan"), device=device)
        known = False
        for i in rnd.placement.explorer_rows:
            _, lps = rnd.explorer_rows[rnd.placement.slots[i]]
            if lps:
                width = min(len(lps), explorer_logps.size(1))
                explorer_logps[i, :width] = torch.tensor(lps[:width], device=device, dtype=torch.float32)
                known = True
        if not bool(gather(torch.tensor([known], device=device)).any()):
            return
        if self.args.explorer_off_policy_mask:
            output["s2l_explorer_logps"] = explorer_logps
        mode = self.args.explorer_importance_sampling
        learner_logps = output.get("old_per_token_logps")
        if learner_logps is None and mode != "none":
            learner_logps = self._learner_logps(output)
        if learner_logps is not None:
            stats = self.accelerator.reduce(
                torch.stack(mixing.mean_logp_gap(learner_logps, explorer_logps, completion_mask, is_explorer)),
                reduction="sum",
            )
            if stats[1] > 0:
                self._metrics["train"]["s2l/logp_gap"].append((stats[0] / stats[1]).item())
        if mode == "none":
            return
        weight, flat = mixing.explorer_is_weights(
            learner_logps,
            explorer_logps,
            completion_mask,
            is_explorer,
            mode,
            self.args.explorer_importance_sampling_clip_min,
            self.args.explorer_importance_sampling_clip_max,
        )
        mean = flat.mean() if flat.numel() else torch.tensor(float("nan"), device=device)
        self._metrics["train"]["s2l/explorer_is_weight/mean"].append(torch.nanmean(gather(mean.reshape(1))).item())
        # A non-negative per-token weight on the advantage equals a weight on the per-token policy loss for every
        # TRL loss type, so TRL's `_compute_loss` needs no change: advantages simply become (B, T).
        advantages = output["advantages"]
        output["advantages"] = (advantages.unsqueeze(1) if advantages.dim() == 1 else advantages) * weight

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

    # ------------------------------------------------------------------ model card
    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """TRL's model card plus the run's S2L-PO provenance (explorer, schedule, IS policy, grouping, citation)."""
        create_s2l_model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)


def _lookup_fields(example: dict[str, Any]) -> dict[str, Any]:
    """The fields of a data-set row an explorer may need to find its rollouts (kept small: they cross processes)."""
    return {k: example[k] for k in ("prompt_id", "prompt") if k in example}


def vllm_server_generate(vg, prompts: list[list[int]], n: int) -> tuple[list[list[int]], Any]:
    """`n` completions per prompt (prompt-major) from the `trl vllm-serve` server of TRL's `VLLMGeneration` `vg`, with
    its sampling settings, and the server's log-probs of the sampled tokens. Main process only."""
    out = vg.vllm_client.generate(
        prompts=prompts,
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
    return out["completion_ids"], out["logprobs"]


def _timed_generate(explorer: Explorer, prompt_ids, n, inputs) -> tuple[ExplorerOutput, float]:
    start = time.perf_counter()
    out = generate_checked(explorer, prompt_ids, n, inputs=inputs)
    return out, time.perf_counter() - start
