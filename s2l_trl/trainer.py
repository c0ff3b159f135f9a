"""`S2LTrainer`: GRPO whose rollout groups mix a frozen smaller explorer's completions with the learner's.

One generation round (train mode), as in Algorithm 1 of the S2L-PO paper:

    round r starts at optimizer step i -> alpha_i (schedule) -> (G_w, G_s) per group -> row placement (mixing)
        -> explorer rows: each process asks its explorer for the groups whose explorer slots it holds, in the
           background while the learner generates (or one round ahead, while the learner trains)
        -> learner rows: only the G_s rows per group, through TRL's own generation path
        -> merged into TRL's row order -> TRL's rewards, advantages and loss, unchanged except the per-source
           off-policy treatment (explorer IS weights, OPSM exemption) and `per_source` baselines.

What S2L knows about a round lives in one `MixedRound`, created and dropped in `_generate_and_score_completions`; the
tensors the loss needs travel in TRL's batch dict. Plumbing lives elsewhere: when explorers are called
(`explorers.rounds`), explorer-to-learner tokens (`explorers.token_bridge`), pure tensor logic (`mixing`) and
workarounds of TRL behaviour (`trl_compat`). Evaluation and tool-call loops use the learner only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather, gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from . import mixing, preflight
from .checkpoints import RunSettingsCallback, hold_output_dir, resolve_resume, run_settings
from .config import S2LConfig
from .explorers import Explorer, ExplorerError, build_training_explorer
from .explorers.factory import logprobs_needed_by
from .explorers.rounds import CollectedRows, ExplorerRequest, ExplorerRounds
from .explorers.token_bridge import TokenBridge, lookup_fields
from .model_card import S2L_PAPER, create_s2l_model_card
from .schedule import make_alpha_fn, split_group
from .trl_compat import generate_unequal_rows_vllm_server, realign_micro_step, relog_advantages, warn_if_untested_trl

logger = logging.getLogger(__name__)


@dataclass
class MixedRound:
    """What S2L-PO knows about one generation round of this process, from planning to scoring."""

    index: int  # 0-based generation round
    step: int  # 1-based optimizer step at which the round starts: the schedule's `i`
    alpha: float
    g_w: int
    g_s: int
    placement: mixing.RowPlacement
    inputs: list[dict[str, Any]]
    learner_rows: int | None = None  # learner completions generated on this process; None until generated
    learner_generation_s: float = 0.0
    explorer: CollectedRows | None = None  # this process's explorer rows (learner tokens) and their cost
    rewards_per_func: torch.Tensor | None = None  # gathered over processes


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
            `args.explorer_mode`; each training process uses the object it is given for the rows it holds. Optional
            members the trainer uses: `runs_in_background` (default `True`; `False` for backends that sample with
            torch's global generator), `missing(examples)` (start-up coverage check), `state_dict()` /
            `load_state_dict(state)` (checkpointed random state), `cancel()`, `close()`.
        mix_schedule (`Callable[[int], float]`, *optional*):
            `step -> alpha` for notebook users; overrides `args.mix_schedule`. Steps are 1-based optimizer steps and
            `alpha` must lie in [0, 1].
    """

    _tag_names = ["trl", "grpo", "s2l-po"]
    _name = "S2L-PO"
    _paper = S2L_PAPER
    # Explorer importance sampling / the explorer off-policy mask read the explorer's own sampling log-probs (a
    # subclass that scores the explorer's rows itself sets this to False).
    _weighs_explorer_logprobs = True
    # The completions table's `source` of learner rows and of explorer rows.
    _source_names = ("learner", "explorer")

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
        # Everything checkable from the arguments alone is checked before TRL builds anything or writes output_dir.
        train_dataset = kwargs.get("train_dataset", pargs[0] if pargs else None)
        preflight.check_trainer_inputs(model, reward_funcs, args, train_dataset, explorer, mix_schedule)
        self._learner_id = model if isinstance(model, (str, os.PathLike)) else None  # for `run_settings`
        self.alpha_fn = make_alpha_fn(
            mix_schedule if mix_schedule is not None else args.mix_schedule,
            args.mix_steps,
            args.mix_alpha_start,
            args.mix_alpha_end,
        )
        with preflight.removing_created_folder(args.output_dir):
            # The only run writing output_dir from here on (a second one is refused); released with the trainer.
            lock = hold_output_dir(args.output_dir, owner=args.should_save)
            try:
                super().__init__(model, reward_funcs, args, *pargs, **kwargs)
                self._set_up_mixing(args, explorer)
                preflight.check_prompts_fit(
                    self.train_dataset, lambda prompts: self._tokenize_prompts(prompts)[0], self._context_limits()
                )
                explorer_limit = None if self.explorer is None else self._explorer_context_limit()
                if explorer_limit is not None and explorer_limit[1] is not None and not self.token_bridge.matches:
                    # Another tokenizer: the explorer's prompts are its own template's rendering, in its tokens.
                    preflight.check_prompts_fit(
                        self.train_dataset,
                        lambda prompts: [self.token_bridge.prompt_ids([], {"prompt": p}) for p in prompts],
                        [explorer_limit],
                    )
            except BaseException:
                if lock is not None:
                    lock.release()
                raise
        if lock is not None:
            weakref.finalize(self, lock.release)

    def _set_up_mixing(self, args: S2LConfig, explorer: Explorer | None) -> None:
        self._round: MixedRound | None = None
        # Multi-turn tool loops and custom rollouts continue completions with the learner, so the explorer is off.
        self.mixing_enabled = not (self.tools or self.rollout_func is not None or self.environment_factories)
        if not self.mixing_enabled:
            logger.warning(
                "S2LTrainer: tools, environments or a rollout_func are set; these loops use the learner "
                "only, so no explorer rows are mixed in (plain GRPO)."
            )
        self.token_bridge = TokenBridge(
            self._tokenizer,
            args.explorer_model,
            self.eos_token_ids,
            self.max_completion_length,
            self.chat_template_kwargs,
            retokenizes_itself=args.explorer_mode == "offline",
        )
        needs_logprobs = logprobs_needed_by(args) if self._weighs_explorer_logprobs else None
        if needs_logprobs and not self.token_bridge.matches:
            raise preflight.InputError(
                f"{needs_logprobs} needs explorer log-probs, which are unusable when the explorer tokenizer differs "
                "from the learner's; set explorer_importance_sampling='none' and explorer_off_policy_mask=False."
            )
        self.explorer: Explorer | None = None
        self.explorer_rounds: ExplorerRounds | None = None
        if self.mixing_enabled:
            # Every process samples the rows it holds, so each has an explorer; the main process builds first (an
            # offline store is converted once), and building must not consume the torch RNG, so that alpha = 0
            # reproduces GRPOTrainer exactly.
            with torch.random.fork_rng(devices=[]), self.accelerator.main_process_first():
                self.explorer = explorer if explorer is not None else self._build_explorer()
            self._check_explorer_covers(self.train_dataset)
            self.explorer_rounds = ExplorerRounds(
                self.explorer,
                # The next round's batch is known one round ahead only when a round spans whole optimizer steps.
                prefetch=args.explorer_prefetch and args.steps_per_generation >= args.gradient_accumulation_steps,
                foreground=self._explorer_rng,
                logprobs_needed_by=needs_logprobs,
            )

    def _context_limits(self) -> list[tuple[str, int | None, str, int]]:
        """The contexts training prompts must fit with their completions (see `preflight.check_prompts_fit`)."""
        limits = [
            ("learner", getattr(self.model.config, "max_position_embeddings", None), "max_position_embeddings"),
            (
                "learner's vLLM engine",
                self.args.vllm_max_model_length if self.use_vllm else None,
                "vllm_max_model_length",
            ),
        ]
        limits = [(*limit, self.max_completion_length) for limit in limits]
        if self.explorer is not None and self.token_bridge.matches:  # explorer prompts are then the same ids
            limits.append(self._explorer_context_limit())
        return limits

    def _explorer_context_limit(self) -> tuple[str, int | None, str, int]:
        """The explorer's context (a server's, an engine's or a local model's; None for stored rollouts)."""
        context = getattr(self.explorer, "max_model_len", None) or getattr(
            getattr(getattr(self.explorer, "model", None), "config", None), "max_position_embeddings", None
        )
        option = "the explorer server's --max-model-len, explorer_vllm_max_model_length or max_position_embeddings"
        return ("explorer", context, option, self.args.explorer_max_tokens)

    @property
    def explorer_tokenizer_matches(self) -> bool:
        """Whether explorer token ids are used as learner ids (same vocabulary and EOS)."""
        return self.token_bridge.matches

    @property
    def prefetch_enabled(self) -> bool:
        return self.explorer_rounds is not None and self.explorer_rounds.prefetch_enabled

    def close_explorer(self) -> None:
        """Cancel explorer work in flight and release the explorer (an in-process vLLM engine's GPU memory, HTTP
        connections, a memory-mapped rollout store). Call it when done training, e.g. in a notebook; the trainer
        cannot mix explorer rows afterwards. `s2l-train` calls it after saving."""
        if self.explorer_rounds is not None:
            self.explorer_rounds.close()
            self.explorer_rounds, self.explorer, self.mixing_enabled = None, None, False

    # ------------------------------------------------------------------ set-up
    def _build_explorer(self) -> Explorer:
        return build_training_explorer(
            self.args,
            self.token_bridge,
            self._tokenizer,
            device=self.accelerator.device,
            is_main_process=self.accelerator.is_main_process,
        )

    def _check_explorer_covers(self, dataset) -> None:
        """Checked on the main process (every process holds the same data), raised on all."""
        if dataset is None or not hasattr(dataset, "__len__"):
            return
        error: list[str | None] = [None]
        if self.accelerator.is_main_process:
            try:
                self.token_bridge.check_coverage(
                    self.explorer,
                    [lookup_fields(dict(row)) for row in dataset],
                    lambda prompts: self._tokenize_prompts(list(prompts))[0],
                    rows_per_prompt=self._most_explorer_rows(),
                )
            except ExplorerError as exc:
                error = [str(exc)]
        broadcast_object_list(error, from_process=0)
        if error[0] is not None:
            raise ExplorerError(error[0])

    def _most_explorer_rows(self) -> int:
        """The most explorer rows a round asks per prompt: `G_w` at the schedule's ends and at the run's quarters
        (a callable schedule may peak anywhere; these are the steps it was tried at)."""
        ends = [1, self.args.mix_steps] if isinstance(self.args.mix_steps, int) else [1]
        steps = {s for s in ends + preflight.schedule_probe_steps(self.args.max_steps) if s >= 1}
        return max(self.current_mix(step)[1] for step in steps)

    @contextlib.contextmanager
    def _explorer_rng(self, round_index: int) -> Iterator[None]:
        """Where an explorer that samples with torch's global generator (an in-process model) runs: on a generator
        forked and seeded per round, so the learner's random stream is the one it would have without the explorer
        (in a background thread it would race the learner for that generator and make runs irreproducible)."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            step = self._round_start_step(round_index)
            torch.manual_seed(self.args.seed * 1_000_003 + step + 7_919 * self.accelerator.process_index)
            yield

    # ------------------------------------------------------------------ schedule
    def current_mix(self, step: int | None = None) -> tuple[float, int, int]:
        """`(alpha, G_w, G_s)` for optimizer step `step` (default: the step whose batch is generated next)."""
        step = self.state.global_step + 1 if step is None else step
        alpha = self.alpha_fn(step) if self.mixing_enabled else 0.0
        g_w, g_s = split_group(alpha, self.num_generations)
        return alpha, g_w, g_s

    def _round_start_step(self, index: int) -> int:
        """The 1-based optimizer step at which generation round `index` starts: the schedule follows the round, so a
        run that regenerates inside a round (after a resume) keeps the alpha the round started with."""
        every = self.args.steps_per_generation * self.num_iterations
        return (index * every) // self.args.gradient_accumulation_steps + 1

    # ------------------------------------------------------------------ TRL seams
    def _prepare_inputs(self, generation_batch: dict[str, torch.Tensor | Any]) -> dict[str, torch.Tensor | Any]:
        """TRL calls this once per micro-step with the local generation batch; it generates a round when its buffer is
        empty or used up and returns this micro-step's slice.

        S2L: a resumed run realigns TRL's micro-step counter first (`trl_compat.realign_micro_step`), so that the
        round it regenerates keeps its original schedule value and later rounds start where they did.
        """
        if self.model.training and realign_micro_step(self):
            every = self.args.steps_per_generation * self.num_iterations
            if self._step % every:
                logger.info(
                    "Resumed at step %d, inside generation round %d: regenerating that round with its original "
                    "mix (alpha of step %d).",
                    self.state.global_step,
                    self._step // every,
                    self._round_start_step(self._step // every),
                )
        return super()._prepare_inputs(generation_batch)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Transformers calls this once per optimizer step to pull that step's micro-batches (for GRPO: generation
        batches of prompts). S2L: unchanged, through a lookahead from which the explorer prefetches the next round's
        prompts without changing their order."""
        if self.explorer_rounds is None:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        lookahead = self.explorer_rounds.watch(epoch_iterator)
        batch_samples, num_items = super().get_batch_samples(lookahead, num_batches, device)
        # From the optimizer step, not TRL's micro-step counter: a resumed run realigns that only later.
        lookahead.next_micro_step = self.state.global_step * self.args.gradient_accumulation_steps + len(batch_samples)
        return batch_samples, num_items

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        """TRL calls this with the local rows of a generation batch (each prompt repeated for its group) and expects
        the scored batch dict back (ids, masks, advantages, optional old/sampling/ref log-probs).

        S2L: in train mode a `MixedRound` is planned first; TRL then generates (see `_generate_single_turn`) and
        scores as usual; the round's per-source metrics, `per_source` advantages and explorer off-policy terms are
        added to TRL's output, and the next round's explorer rows are requested. Evaluation is TRL's, learner only.
        TRL's completions table (`log_completions`) gets each row's `source` and the advantages the loss uses.
        """
        train = self.model.training
        if train and self.mixing_enabled:
            index = self._step // (self.args.steps_per_generation * self.num_iterations)
            step = self._round_start_step(index)
            alpha, g_w, g_s = self.current_mix(step)
            placement = mixing.place_rows(self.accelerator.process_index, len(inputs), self.num_generations, g_w)
            self._round = MixedRound(index, step, alpha, g_w, g_s, placement, inputs)
        # The completions table's `source` column: TRL gathers and logs it with its own columns.
        is_explorer = self._round.placement.is_explorer if self._round is not None else [False] * len(inputs)
        self._log_completion_extra("source", [self._source_names[e] for e in is_explorer])
        try:
            output = super()._generate_and_score_completions(inputs)
            if train and self._round is not None:
                self._finish_round(output, self._round)
                self._prefetch_next_round(self._round)
        finally:
            self._round = None
            self._pending_extra_logs.pop("source", None)  # left over only when TRL failed before logging the batch
        return output

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL calls this with the local prompt ids (one per row) and expects one completion per row back, with the
        sampled tokens' log-probs where the backend has them (vLLM) or `None`.

        S2L: on the first call of a mixed train round the explorer's rows are requested, the learner generates only
        its own rows (`G_s` per group), and the two are merged. With vLLM, explorer rows carry NaN sampling
        log-probs, so TRL's vLLM importance-sampling ratio is exactly 1 on them: their off-policy treatment is S2L's
        own. Tool-loop continuations and evaluation: learner only.
        """
        rnd = self._round
        if rnd is None or rnd.learner_rows is not None:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        if rnd.g_w > 0 and images is not None and any(img for img in images):
            raise ValueError("S2L-PO mixing supports text prompts only; got image inputs with G_w > 0.")
        request = self._explorer_request(rnd.index, rnd.g_w, rnd.inputs, prompt_ids) if rnd.g_w > 0 else None
        if request is not None:
            self.explorer_rounds.request(request)
        start = time.perf_counter()
        learner_ids, learner_logps = self._generate_learner_rows(
            rnd, prompt_ids, images, multimodal_fields, has_tool_images
        )
        rnd.learner_generation_s = time.perf_counter() - start
        if request is None:
            return learner_ids, learner_logps
        rnd.explorer = self._collect_explorer_rows(request, rnd)
        explorer_ids = {i: rnd.explorer.rows[rnd.placement.slots[i]][0] for i in rnd.placement.explorer_rows}
        return mixing.merge_rows(rnd.placement, learner_ids, learner_logps, explorer_ids, with_logps=self.use_vllm)

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
        run redraws the explorer rows the uninterrupted run drew. Written first: transformers writes
        `trainer_state.json` last, so that file marks the whole checkpoint complete (`checkpoints.checkpoint_problem`).
        A full disk is reported as such."""
        with preflight.explained_write_errors(self.args.output_dir):
            if self.args.should_save and self.explorer_rounds is not None:
                every = self.args.steps_per_generation * self.num_iterations
                folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
                pending = self.state.global_step * self.args.gradient_accumulation_steps // every
                os.makedirs(folder, exist_ok=True)
                self.explorer_rounds.save(folder, self.state.global_step, pending)
            super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """TRL's training loop. S2L: where it resumes is decided first (`checkpoints.resolve_resume`), as TRL does
        only when asked, but loudly and safely: `resume_from_checkpoint=True` takes the newest *complete* checkpoint
        (torn ones are skipped with a warning), a named checkpoint must be complete, the resume is announced at
        WARNING and settings that differ from the checkpoint's are listed; without it, an `output_dir` that already
        holds checkpoints is refused (the new run would overwrite them). Every checkpoint records the run's settings
        (`s2l_run.json`) for the next comparison."""
        learner = self._learner_id if self._learner_id is not None else self.model
        settings = run_settings(
            self.args, learner, self.train_dataset, self.reward_funcs, self.accelerator.num_processes
        )
        checkpoint = resolve_resume(
            self.args.output_dir,
            resume_from_checkpoint,
            settings,
            implicit=False,
            ask="trainer.train(resume_from_checkpoint=True) (or a checkpoint path)",
        )
        recorder = next((c for c in self.callback_handler.callbacks if isinstance(c, RunSettingsCallback)), None)
        if recorder is None:
            self.add_callback(RunSettingsCallback(settings))
        else:
            recorder.settings = settings
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Transformers calls this when resuming; S2L also restores the explorer's random state."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.explorer_rounds is not None:
            self.explorer_rounds.restore(checkpoint)

    # ------------------------------------------------------------------ one round
    def _explorer_request(
        self, index: int, g_w: int, inputs: list[dict[str, Any]], prompt_ids: list[list[int]] | None = None
    ) -> ExplorerRequest:
        """This process's explorer request of round `index`: `G_w` rows of every group with an explorer slot here.

        A group split across two processes is asked for by both, each keeping its own slots; seeded backends
        (offline, server) draw the same rows for it on both.
        """
        placement = mixing.place_rows(self.accelerator.process_index, len(inputs), self.num_generations, g_w)
        first_row: dict[int, int] = {}
        for i in placement.explorer_rows:
            first_row.setdefault(placement.slots[i][0], i)
        rows = list(first_row.values())
        if prompt_ids is None:  # a prefetch: tokenize just the rows asked for
            ids = self._tokenize_prompts([inputs[i]["prompt"] for i in rows])[0] if rows else []
        else:
            ids = [prompt_ids[i] for i in rows]
        return ExplorerRequest(
            round=index,
            groups=tuple(first_row),
            prompt_ids=tuple(self.token_bridge.prompt_ids(p, inputs[i]) for p, i in zip(ids, rows)),
            n=g_w,
            inputs=tuple(lookup_fields(inputs[i]) for i in rows),
        )

    def _generate_learner_rows(self, rnd: MixedRound, prompt_ids, images, multimodal_fields, has_tool_images):
        """The learner's `G_s` rows per group of this process, through TRL's own generation path."""
        rows = rnd.placement.learner_rows
        rnd.learner_rows = len(rows)
        if rnd.g_w == 0:  # plain GRPO: TRL's own call, untouched
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, rnd.g_s, has_tool_images)
        if rnd.g_s == 0:
            return [], None
        if self.use_vllm and self.vllm_generation.mode == "server":
            return generate_unequal_rows_vllm_server(self, [prompt_ids[i] for i in rows], rnd.g_s)
        # Every process must enter TRL's generation (ZeRO-3 / FSDP parameter gathers and tensor-parallel groups are
        # collective), so a process that holds only explorer rows generates one throw-away row.
        take = rows or [0]
        sub_mm = {k: [v[i] for i in take] if isinstance(v, list) else v for k, v in multimodal_fields.items()}
        ids, logps = super()._generate_single_turn(
            [prompt_ids[i] for i in take], None, sub_mm, rnd.g_s, has_tool_images
        )
        if not rows:
            return [], (None if logps is None else [])
        return ids, logps

    def _collect_explorer_rows(self, request: ExplorerRequest, rnd: MixedRound) -> CollectedRows:
        """This process's explorer rows in learner tokens; a failure on any process is raised on every process (the
        others would otherwise wait for it in the next collective)."""
        collected, error = None, None
        try:
            collected = self.explorer_rounds.collect(
                request, [rnd.placement.slots[i] for i in rnd.placement.explorer_rows]
            )
            collected.rows = {key: self.token_bridge.to_learner(*row) for key, row in collected.rows.items()}
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if self.accelerator.num_processes > 1:
                error = f"process {self.accelerator.process_index}: {error}"
        errors = [e for e in gather_object([error]) if e]
        if errors:
            raise ExplorerError(f"Explorer generation failed in the round of step {rnd.step}: {' | '.join(errors)}")
        return collected

    def _prefetch_next_round(self, rnd: MixedRound) -> None:
        """Request round `rnd.index + 1`'s explorer rows while the learner trains on round `rnd.index`, from the
        generation batch TRL will hand this process then (peeked, unchanged); skipped at the end of an epoch, after
        the last step, and when that round has no explorer rows."""
        if not self.prefetch_enabled:
            return
        step = self._round_start_step(rnd.index + 1)
        _, g_w, _ = self.current_mix(step)
        if g_w == 0 or (self.state.max_steps > 0 and step > self.state.max_steps):
            return
        every = self.args.steps_per_generation * self.num_iterations
        batch = self.explorer_rounds.peek((rnd.index + 1) * every)
        if batch is not None:
            self.explorer_rounds.prefetch(self._explorer_request(rnd.index + 1, g_w, batch))

    def _finish_round(self, output: dict[str, Any], rnd: MixedRound) -> None:
        """Per-source metrics, `per_source` advantages and explorer off-policy terms of a scored round."""
        device = self.accelerator.device
        is_explorer = torch.tensor(rnd.placement.is_explorer, dtype=torch.bool, device=device)
        output["s2l_is_explorer"] = is_explorer
        all_is_explorer = gather(is_explorer)
        rewards = None
        if rnd.rewards_per_func is not None:
            rewards = mixing.weighted_rewards(rnd.rewards_per_func, self.reward_weights)
        lengths = gather(output["completion_mask"].sum(dim=1).float())
        metrics = {"round": rnd.index, "alpha": rnd.alpha, "explorer_rows_per_group": rnd.g_w}
        metrics.update(mixing.per_source_metrics(rewards, lengths, all_is_explorer))
        # Counted where the learner's generation is called, so the figure proves G_s rows per group, not G.
        costs = [float(rnd.learner_rows or 0), rnd.learner_generation_s]
        if rnd.explorer is not None:
            e = rnd.explorer
            costs += [e.latency_s, e.wait_s, float(e.tokens), float(e.failed_requests)]
        metrics.update(mixing.round_cost_metrics(gather(torch.tensor([costs], dtype=torch.float64, device=device))))
        for name, value in metrics.items():
            self._metrics["train"][f"s2l/{name}"].append(float(value))

        if rewards is not None and self.args.advantage_grouping == "per_source" and rnd.g_w > 0:
            advantages = mixing.per_source_advantages(
                rewards, all_is_explorer, self.num_generations, self.scale_rewards
            )
            B = output["completion_ids"].size(0)
            output["advantages"] = advantages[
                self.accelerator.process_index * B : (self.accelerator.process_index + 1) * B
            ]
        if rnd.g_w > 0:
            self._explorer_off_policy_terms(output, rnd, is_explorer)
            # The completions table shows the advantages the loss uses, not TRL's from before S2L changed them.
            relog_advantages(self, mixing.row_advantages(output["advantages"], output["completion_mask"]))

    def _explorer_off_policy_terms(self, output: dict[str, Any], rnd: MixedRound, is_explorer: torch.Tensor) -> None:
        """The explorer log-prob gap metric and, unless `explorer_importance_sampling='none'`, explorer IS weights.

        The gap uses the learner log-probs the step computes anyway (TRL's `old_per_token_logps`); only the IS
        weights, which need them, justify a forward pass of their own.
        """
        device = self.accelerator.device
        completion_mask = output["completion_mask"]
        rows = {i: rnd.explorer.rows[rnd.placement.slots[i]][1] for i in rnd.placement.explorer_rows}
        explorer_logps = mixing.explorer_logps_tensor(tuple(completion_mask.shape), rows, device)
        known = any(bool(lps) for lps in rows.values())
        if not bool(gather(torch.tensor([known], device=device)).any()):
            return
        if self.args.explorer_off_policy_mask:
            output["s2l_explorer_logps"] = explorer_logps
        mode = self.args.explorer_importance_sampling
        learner_logps = output.get("old_per_token_logps")
        if learner_logps is None and mode != "none":
            learner_logps = self._learner_logps(output)
        flat = self._weigh_explorer_tokens(output, learner_logps, explorer_logps, is_explorer)
        if flat is not None:
            mean = flat.mean() if flat.numel() else torch.tensor(float("nan"), device=device)
            self._metrics["train"]["s2l/explorer_is_weight/mean"].append(torch.nanmean(gather(mean.reshape(1))).item())

    def _weigh_explorer_tokens(
        self,
        output: dict[str, Any],
        learner_logps: torch.Tensor | None,
        explorer_logps: torch.Tensor,
        is_explorer: torch.Tensor,
    ) -> torch.Tensor | None:
        """Log `s2l/logp_gap` (when learner log-probs are at hand) and, unless `explorer_importance_sampling='none'`,
        weight the explorer tokens' advantages by `pi_learner / pi_explorer`; returns the weights' values after
        truncation or masking (None without IS)."""
        mask = output["completion_mask"]
        if learner_logps is not None:
            stats = self.accelerator.reduce(
                torch.stack(mixing.mean_logp_gap(learner_logps, explorer_logps, mask, is_explorer)), reduction="sum"
            )
            if stats[1] > 0:
                self._metrics["train"]["s2l/logp_gap"].append((stats[0] / stats[1]).item())
        mode = self.args.explorer_importance_sampling
        if mode == "none":
            return None
        weight, flat = mixing.explorer_is_weights(
            learner_logps,
            explorer_logps,
            mask,
            is_explorer,
            mode,
            self.args.explorer_importance_sampling_clip_min,
            self.args.explorer_importance_sampling_clip_max,
        )
        # A non-negative per-token weight on the advantage equals a weight on the per-token policy loss for every
        # TRL loss type, so TRL's `_compute_loss` needs no change: advantages simply become (B, T).
        advantages = output["advantages"]
        output["advantages"] = (advantages.unsqueeze(1) if advantages.dim() == 1 else advantages) * weight
        return flat

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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Transformers' save; S2L: a full disk is reported as such (torch says `basic_ios::clear: iostream
        error`)."""
        with preflight.explained_write_errors(output_dir or self.args.output_dir):
            return super().save_model(output_dir, _internal_call)

    # ------------------------------------------------------------------ model card
    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """TRL's model card plus the run's S2L-PO provenance (explorer, schedule, IS policy, grouping, citation)."""
        create_s2l_model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)
