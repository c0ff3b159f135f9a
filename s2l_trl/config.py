"""`S2LConfig`: `GRPOConfig` plus the explorer, the mixing schedule and the per-source off-policy treatment."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field, fields
from typing import Any

from trl import GRPOConfig

from .explorers.factory import resolve_backend
from .explorers.rollout_store import RolloutSource
from .explorers.server import parse_server_urls, same_server
from .mixing import EXPLORER_IS_MODES
from .preflight import InputError, MissingPackageError, check_deepspeed_installed
from .schedule import SCHEDULES, mix_alpha, validate_schedule

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)

# Training draws explorer rows from a server, stored rollouts, or an in-process model (transformers or vLLM).
EXPLORER_MODES = ("server", "offline", "local", "vllm")
# `vllm.LLM` arguments the vLLM explorer sets from fields of their own (or itself): not accepted in
# `explorer_vllm_kwargs`, with the field to use instead.
_OWN_VLLM_ARGUMENTS = {
    "model": "explorer_model",
    "gpu_memory_utilization": "explorer_vllm_gpu_memory_utilization",
    "max_model_len": "explorer_vllm_max_model_length",
    "enable_sleep_mode": "explorer_vllm_enable_sleep_mode",
    "seed": "seed",
    "tensor_parallel_size": "(none: one engine per training process)",
    "logprobs_mode": "(none: always processed_logprobs)",
}
ADVANTAGE_GROUPINGS = ("combined", "per_source")

_SECTIONS = {
    "explorer_mode": "Parameters that control the explorer",
    "mix_schedule": "Parameters that control the mixing schedule",
    "explorer_importance_sampling": "Parameters that control the off-policy treatment of explorer rows",
}


def field_help(text: str) -> dict[str, str]:
    """A field's `metadata`: its help text on one line (written as a wrapped triple-quoted paragraph)."""
    return {"help": " ".join(text.split())}


@dataclass
class S2LConfig(GRPOConfig):
    r"""
    Configuration class for the [`S2LTrainer`]: small-to-large policy optimization (S2L-PO).

    Every [`~trl.GRPOConfig`] parameter keeps its meaning; the ones below add a frozen smaller *explorer* model whose
    completions fill part of every rollout group. In the generation round that starts at optimizer step `i`
    (1-based), `G_w = ceil(alpha_i * G)` rows of each group of `G = num_generations` come from the explorer and
    `G_s = G - G_w` from the learner; after `mix_steps` steps training is plain on-policy GRPO.

    The parameter list below is generated from each field's `help` text, the one source of every description.
    """

    explorer_mode: str = field(
        default="server",
        metadata=field_help(
            """Where explorer completions come from. `"server"`: a frozen model behind an OpenAI-compatible vLLM
            server (`trl vllm-serve` or `vllm serve`), never weight-synced. `"offline"`: pre-sampled rollouts read
            from `explorer_rollouts` (the authors' JSONL schema, as written by `s2l-sample`). `"local"`: an
            in-process frozen `transformers` model, sampling in a thread beside the learner's generation (notebooks,
            small runs). `"vllm"`: an in-process vLLM engine per training process on that process's device, beside
            TRL's own generation (transformers or `vllm_mode="colocate"`): the fast path on one GPU (see the
            `explorer_vllm_*` fields). `"local"` and `"vllm"` draw from seeds derived from `seed`, the process and
            the call, so a run repeats and a resumed run redraws the same explorer rows."""
        ),
    )
    explorer_model: str | None = field(
        default=None,
        metadata=field_help(
            """Model id or path of the explorer. Required for `"local"`. For `"server"` and `"offline"` it is used
            to check that the explorer tokenizer matches the learner's: when it does not, explorer completions are
            decoded and re-tokenized with the learner tokenizer and their log-probs dropped."""
        ),
    )
    explorer_server_base_url: str = field(
        default="http://127.0.0.1:8001",
        metadata=field_help(
            """Base URL of the explorer server (`"server"` mode), or several separated by commas, all serving the
            same model: each round's requests go to the server with the least work in flight, and a server that dies
            is dropped while others remain. One `trl vllm-serve --data_parallel_size N` is one URL; explorers on other
            nodes are more URLs."""
        ),
    )
    explorer_server_timeout: float = field(
        default=240.0,
        metadata=field_help(
            """Seconds to wait for each explorer server's `/health` at start-up before failing with an error naming
            the URL; a URL that answers 4xx (not a vLLM server) fails at once. `0` checks once, without waiting."""
        ),
    )
    explorer_server_check_model_name: bool = field(
        default=True,
        metadata=field_help(
            """Check at start-up that the explorer server serves `explorer_model`, comparing names by their last path
            component, case-insensitive. Turn off when it loads the same weights from a folder of another name. The
            tokenizer check (a probe text tokenized by the server and here, id for id) always runs."""
        ),
    )
    explorer_prompts_per_request: int = field(
        default=32,
        metadata=field_help(
            """Prompts per explorer generation request. A round is split into requests of this many prompts (each
            asking `G_w` completions per prompt), sent concurrently and retried one by one. 32 keeps a request at
            <= 512 sequences, about what one vLLM engine decodes at once: a minute or two for 4,096-token completions
            on one GPU."""
        ),
    )
    explorer_max_concurrent_requests: int = field(
        default=4,
        metadata=field_help(
            """Explorer requests in flight per server; use at least the server's data-parallel size."""
        ),
    )
    explorer_request_timeout: float = field(
        default=600.0,
        metadata=field_help(
            """Seconds one explorer request (one chunk of `explorer_prompts_per_request` prompts) may take, queueing
            in the server included, before it is retried. The bound of a slow request; a hung server is found sooner
            by `explorer_stall_timeout`."""
        ),
    )
    explorer_stall_timeout: float = field(
        default=180.0,
        metadata=field_help(
            """Seconds an explorer server may hold requests without making progress before it counts as hung:
            vLLM's token counters (`vllm:generation_tokens_total`, `vllm:prompt_tokens_total` on `/metrics`) do not
            move, and none of its requests finishes. A hung server is dropped while others remain (its requests go
            to them); the last one fails the round at once with an error naming it, instead of after
            `explorer_request_timeout` x (1 + `explorer_max_retries`). A live vLLM engine moves its counters at
            every step (well under a second, also while it decodes a 512-sequence request of 4,096-token
            completions for a minute or two), so 180 s only trips on a stuck server. Servers without these counters
            are left to `explorer_request_timeout`. `0` turns the check off."""
        ),
    )
    explorer_max_retries: int = field(
        default=3,
        metadata=field_help(
            """Retries of one failed or timed-out explorer request, with exponential back-off; a request whose server
            is dropped is resent to another without using a retry. Training stops with an error naming every URL when
            a request runs out of retries and no other server is left."""
        ),
    )
    explorer_server_max_failures: int = field(
        default=3,
        metadata=field_help(
            """Consecutive failed requests after which an explorer server is dropped while others remain."""
        ),
    )
    explorer_rollouts: str | None = field(
        default=None,
        metadata=field_help(
            """Offline rollouts for `"offline"` mode: a JSONL file, a parquet file, or a directory saved by
            `datasets.Dataset.save_to_disk`, with the columns `prompt_id, prompt, prompt_ids, response, response_ids,
            small_model_log_probs, reward, is_correct, data_source, ground_truth`. Stored rewards are ignored: every
            row is re-scored by the trainer's reward functions. Every training prompt must have rollouts; the trainer
            checks this before training starts."""
        ),
    )
    explorer_vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata=field_help(
            """`"vllm"` mode: share of the device's memory the explorer's engine may take (weights, activations and
            KV cache), in (0, 1]. It shares the device with the learner's training and, with `use_vllm=True,
            vllm_mode="colocate"`, with TRL's learner engine (`vllm_gpu_memory_utilization`): the two shares must
            leave room for training. The explorer is the smaller model, so its KV cache is cheap: 0.3 holds
            hundreds of 4k-token sequences of a 0.6B-1.7B model on an 80 GB GPU."""
        ),
    )
    explorer_vllm_max_model_length: int | None = field(
        default=None,
        metadata=field_help(
            """`"vllm"` mode: context length (prompt + completion) of the explorer's engine. Defaults to
            `vllm_max_model_length` when that is set, else the model's own (e.g. 32k-40k for Qwen3), whose KV cache
            must fit in `explorer_vllm_gpu_memory_utilization`: set it to the longest prompt plus
            `explorer_max_tokens` to keep the engine small."""
        ),
    )
    explorer_vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata=field_help(
            """`"vllm"` mode: let the explorer's engine sleep between rounds (vLLM sleep level 1: weights offloaded to
            CPU memory, KV cache freed) and wake at the start of each of its calls, so training gets its GPU memory
            back between rounds and for good once `mix_steps` is over, at the cost of a weight copy per round.
            Needs a GPU (vLLM has no sleep mode on CPU)."""
        ),
    )
    explorer_vllm_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata=field_help(
            """`"vllm"` mode: further keyword arguments of `vllm.LLM` for the explorer's engine, as a dict or a JSON
            string, e.g. `{"dtype": "bfloat16", "max_num_seqs": 256, "enforce_eager": true}`. Arguments with a field
            of their own (`gpu_memory_utilization`, `max_model_len`, `enable_sleep_mode`, `seed`, `model`) are
            refused here."""
        ),
    )
    explorer_prefetch: bool = field(
        default=True,
        metadata=field_help(
            """Generate the explorer rows of the next generation round while the learner trains on the current one.
            The explorer is frozen, so they never go stale; a run with prefetch draws exactly the rows a run
            without it draws. Applies to explorers that run in the background (every backend but an in-process
            engine that says otherwise; your own object unless it sets `runs_in_background = False`) when
            `steps_per_generation >= gradient_accumulation_steps`; at most one round ahead. A resumed run
            regenerates the prefetched round."""
        ),
    )
    explorer_temperature: float = field(
        default=0.7,
        metadata=field_help("""Sampling temperature of the explorer (the authors' setting; the learner keeps
            `temperature`)."""),
    )
    explorer_top_p: float = field(default=0.95, metadata=field_help("""Top-p of the explorer, in (0, 1]."""))
    explorer_top_k: int | None = field(
        default=None, metadata=field_help("""Top-k of the explorer; `None` or `-1` disables it.""")
    )
    explorer_max_tokens: int | None = field(
        default=None,
        metadata=field_help(
            """Maximum explorer completion length; defaults to `max_completion_length`, so that both sources are
            truncated alike. A smaller value is refused (explorer rows would stop where the learner's go on); a larger
            one is warned about (explorer completions are cut at `max_completion_length` like the learner's, so the
            extra tokens are generated for nothing)."""
        ),
    )
    mix_schedule: str = field(
        default="linear",
        metadata=field_help(
            f"""Shape of `alpha_i`, the explorer fraction: one of {SCHEDULES} (`"linear"` is the paper's). A Python
            callable `step -> alpha` can be passed to the trainer instead (`S2LTrainer(mix_schedule=...)`)."""
        ),
    )
    mix_steps: int = field(
        default=8,
        metadata=field_help(
            """`T_mix`: the number of optimizer steps with explorer rows. After it, `G_w = 0`. The schedule is read
            at the optimizer step at which each generation round starts."""
        ),
    )
    mix_alpha_start: float = field(
        default=1.0, metadata=field_help("""`alpha_1`, the explorer fraction at the first step, in [0, 1].""")
    )
    mix_alpha_end: float = field(
        default=0.0,
        metadata=field_help("""`alpha_{T_mix}`, the explorer fraction at step `T_mix` (`"linear"` and `"cosine"`)."""),
    )
    explorer_importance_sampling: str = field(
        default="none",
        metadata=field_help(
            f"""Importance-sampling correction of explorer tokens, one of {EXPLORER_IS_MODES}: weight
            `pi_old / pi_explorer` with the learner's log-probs at generation time. `"none"` gives ratio 1, as the
            authors' code does; the others have the meaning of TRL's `vllm_importance_sampling_mode`. Needs explorer
            log-probs, so it requires a matching tokenizer. Learner tokens keep TRL's own
            `vllm_importance_sampling_*` treatment, untouched."""
        ),
    )
    explorer_importance_sampling_clip_min: float | None = field(
        default=None,
        metadata=field_help(
            """Lower bound of the explorer IS weight (`*_truncate`: clamp; `*_mask`: zero below it)."""
        ),
    )
    explorer_importance_sampling_clip_max: float | None = field(
        default=3.0,
        metadata=field_help(
            """Upper bound of the explorer IS weight (`*_truncate`: clamp; `*_mask`: zero above it)."""
        ),
    )
    explorer_off_policy_mask: bool = field(
        default=False,
        metadata=field_help(
            """Whether TRL's off-policy sequence mask (`off_policy_mask_threshold`) may drop explorer rows. When
            `False` explorer rows are always kept; when `True` their divergence is measured against the explorer's
            own log-probs where known."""
        ),
    )
    advantage_grouping: str = field(
        default="combined",
        metadata=field_help(
            """`"combined"` (the paper): one group baseline over all `G` rows. `"per_source"`: explorer and learner
            rows are each normalised within their own rows of the group, as the authors' script effectively does."""
        ),
    )

    def __post_init__(self):
        # Checked before GRPOConfig's own checks so that every error names the offending field.
        check_deepspeed_installed(self.deepspeed)
        validate_schedule(
            self.mix_schedule, self.mix_steps, self.mix_alpha_start, self.mix_alpha_end, self.num_generations
        )
        super().__post_init__()
        self.explorer_mode = resolve_backend(self.explorer_mode, EXPLORER_MODES, "explorer_mode")
        rows_per_process = self.per_device_train_batch_size * self.steps_per_generation
        if (
            self.use_vllm
            and self.vllm_mode == "colocate"
            and self.vllm_tensor_parallel_size > 1
            and rows_per_process % self.num_generations != 0
        ):
            raise ValueError(
                "With vllm_mode='colocate' and vllm_tensor_parallel_size > 1, every process must hold whole groups "
                "so that tensor-parallel ranks generate equal numbers of learner rows: make "
                "per_device_train_batch_size * steps_per_generation a multiple of num_generations "
                f"(got {self.per_device_train_batch_size} * {self.steps_per_generation} and {self.num_generations})."
            )
        if self.explorer_mode == "server":
            parse_server_urls(self.explorer_server_base_url)  # a malformed URL fails here, before any health wait
        if self.explorer_mode in ("local", "vllm") and not self.explorer_model:
            raise ValueError(
                f"explorer_model is required when explorer_mode={self.explorer_mode!r} (a model id or path)."
            )
        if self.explorer_mode == "offline" and not self.explorer_rollouts:
            raise ValueError("explorer_rollouts is required when explorer_mode='offline' (a JSONL/parquet path).")
        if self.explorer_mode == "offline":
            # Only that the path names something rollouts can be read from; the rows are validated when loaded.
            RolloutSource.open(self.explorer_rollouts)
        if self.explorer_importance_sampling not in EXPLORER_IS_MODES:
            raise ValueError(
                f"explorer_importance_sampling must be one of {EXPLORER_IS_MODES}, got "
                f"{self.explorer_importance_sampling!r}."
            )
        if self.advantage_grouping not in ADVANTAGE_GROUPINGS:
            raise ValueError(
                f"advantage_grouping must be one of {ADVANTAGE_GROUPINGS}, got {self.advantage_grouping!r}."
            )
        if self.advantage_grouping == "per_source" and self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "advantage_grouping='per_source' needs multi_objective_aggregation='sum_then_normalize', "
                f"got {self.multi_objective_aggregation!r}."
            )
        if not 0.0 < self.explorer_top_p <= 1.0:
            raise ValueError(f"explorer_top_p must be in (0, 1], got {self.explorer_top_p!r}.")
        if self.explorer_temperature < 0.0:
            raise ValueError(f"explorer_temperature must be >= 0, got {self.explorer_temperature!r}.")
        if self.explorer_top_k == -1:
            self.explorer_top_k = None
        if self.explorer_top_k is not None and self.explorer_top_k < 1:
            raise ValueError(f"explorer_top_k must be >= 1, -1 or None, got {self.explorer_top_k!r}.")
        if self.explorer_max_tokens is None:
            self.explorer_max_tokens = self.max_completion_length
        if self.explorer_max_tokens < 1:
            raise ValueError(f"explorer_max_tokens must be >= 1, got {self.explorer_max_tokens!r}.")
        self._check_explorer_cap()
        for name in (
            "explorer_prompts_per_request",
            "explorer_max_concurrent_requests",
            "explorer_server_max_failures",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}.")
        if self.explorer_max_retries < 0:
            raise ValueError(f"explorer_max_retries must be >= 0, got {self.explorer_max_retries!r}.")
        self._check_explorer_timeouts()
        self._check_explorer_vllm()
        self._check_learner_server()
        self._warn_if_mixing_outlasts_run()

    def _check_explorer_timeouts(self) -> None:
        if not self.explorer_request_timeout > 0:
            raise InputError(
                f"explorer_request_timeout must be > 0 seconds, got {self.explorer_request_timeout!r}: it bounds one "
                "explorer request (the default 600 s covers a 512-sequence request of 4,096-token completions)."
            )
        if not self.explorer_server_timeout >= 0:
            raise InputError(
                f"explorer_server_timeout must be >= 0 seconds, got {self.explorer_server_timeout!r}: it is how long "
                "start-up waits for each explorer server's /health (0: check once, without waiting)."
            )
        if not self.explorer_stall_timeout >= 0:
            raise InputError(
                f"explorer_stall_timeout must be >= 0 seconds, got {self.explorer_stall_timeout!r}: a server that "
                "makes no progress that long counts as hung (0 turns the check off)."
            )

    def _check_learner_server(self) -> None:
        """The learner's vLLM server (TRL's `vllm_mode="server"`) must not be an explorer server: TRL pushes the
        learner's weights into its server after every step, which would overwrite the frozen explorer."""
        if not (self.use_vllm and self.vllm_mode == "server" and self.explorer_mode == "server"):
            return
        learner = self.vllm_server_base_url or f"http://{self.vllm_server_host}:{self.vllm_server_port}"
        for url in parse_server_urls(self.explorer_server_base_url):
            if same_server(learner, url):
                given = (
                    f"vllm_server_base_url={self.vllm_server_base_url!r}"
                    if self.vllm_server_base_url
                    else f"vllm_server_host:vllm_server_port={self.vllm_server_host}:{self.vllm_server_port}"
                )
                raise InputError(
                    f"The learner's vLLM server ({given}) is the explorer server {url} (explorer_server_base_url): TRL "
                    "syncs the learner's weights into its server after every step, which would overwrite the frozen "
                    "explorer. Start a second server for the learner (e.g. `trl vllm-serve` on other GPUs and port) "
                    "and point vllm_server_base_url at it."
                )

    def _warn_if_mixing_outlasts_run(self) -> None:
        if self.max_steps is None or self.max_steps <= 0 or self.mix_steps <= self.max_steps:
            return
        last = mix_alpha(self.max_steps, self.mix_schedule, self.mix_steps, self.mix_alpha_start, self.mix_alpha_end)
        logger.warning(
            "mix_steps=%d (T_mix) exceeds max_steps=%d: the explorer share never reaches its end value, the run ends "
            "at alpha=%.3g (step %d) and never trains on-policy. Lower mix_steps to at most max_steps (the paper "
            "anneals over half the run), or raise max_steps.",
            self.mix_steps,
            self.max_steps,
            last,
            self.max_steps,
        )

    def _check_explorer_cap(self) -> None:
        """Explorer and learner completions follow one truncation rule (`max_completion_length`)."""
        cap, length = self.explorer_max_tokens, self.max_completion_length
        if length is None or cap == length:
            return
        if cap < length:
            raise ValueError(
                f"explorer_max_tokens={cap} is smaller than max_completion_length={length}: explorer completions would "
                f"stop at {cap} tokens where the learner's go on to {length}, so the two sources would not be "
                "truncated alike. Leave explorer_max_tokens unset (it defaults to max_completion_length), or lower "
                f"max_completion_length to {cap}."
            )
        logger.warning(
            "explorer_max_tokens=%d exceeds max_completion_length=%d: explorer completions are cut at %d tokens like "
            "the learner's, so up to %d tokens per explorer row are generated for nothing. Leave explorer_max_tokens "
            "unset (it defaults to max_completion_length).",
            cap,
            length,
            length,
            cap - length,
        )

    def _check_explorer_vllm(self) -> None:
        """The `explorer_vllm_*` fields: each bad value named with its fix, before any engine starts."""
        util = self.explorer_vllm_gpu_memory_utilization
        if self.explorer_mode == "vllm" and importlib.util.find_spec("vllm") is None:
            raise MissingPackageError(
                "explorer_mode='vllm' runs the explorer in an in-process vLLM engine, but vLLM is not installed: "
                "`pip install trl[vllm]` (on a GPU machine), or choose explorer_mode 'server', 'offline' or 'local'."
            )
        if not 0.0 < util <= 1.0:
            raise ValueError(
                f"explorer_vllm_gpu_memory_utilization must be in (0, 1], got {util!r} (e.g. 0.3: the explorer's "
                "engine takes 30% of the device's memory)."
            )
        if self.explorer_mode == "vllm" and self.use_vllm and self.vllm_mode == "colocate":
            total = util + self.vllm_gpu_memory_utilization
            if total >= 1.0:
                raise ValueError(
                    f"explorer_vllm_gpu_memory_utilization ({util}) + vllm_gpu_memory_utilization "
                    f"({self.vllm_gpu_memory_utilization}) = {total:g} leaves no device memory for training: lower "
                    "one or both (their sum must stay below 1; e.g. 0.2 + 0.3)."
                )
        length = self.explorer_vllm_max_model_length
        if length is not None and length <= self.explorer_max_tokens:
            raise ValueError(
                f"explorer_vllm_max_model_length ({length}) must exceed explorer_max_tokens "
                f"({self.explorer_max_tokens}): the engine's context holds the prompt and the completion; set it to "
                "the longest prompt plus explorer_max_tokens, or leave it None."
            )
        kwargs = self.explorer_vllm_kwargs
        if isinstance(kwargs, str):  # from the command line or a YAML recipe
            import json

            try:
                kwargs = json.loads(kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"explorer_vllm_kwargs is not valid JSON ({exc}): got {self.explorer_vllm_kwargs!r}; give a JSON "
                    """object, e.g. '{"dtype": "bfloat16"}'."""
                ) from None
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(
                f"explorer_vllm_kwargs must be a dict of vllm.LLM arguments, got {type(kwargs).__name__} {kwargs!r}."
            )
        for key in sorted(kwargs or {}):
            if key in _OWN_VLLM_ARGUMENTS:
                raise ValueError(
                    f"explorer_vllm_kwargs sets {key!r}, which has a field of its own: use "
                    f"{_OWN_VLLM_ARGUMENTS[key]} instead."
                )
        self.explorer_vllm_kwargs = kwargs


def parameter_docs(cls, sections: dict[str, str]) -> str:
    """TRL-style "Parameters:" block of the fields a config class declares itself, built from their help texts (the
    one source of each description); ``sections`` maps the first field of each "> Parameters that control ..."
    heading to its title."""
    lines = ["", "    Parameters:"]
    own = [f for f in fields(cls) if f.name in cls.__annotations__]
    for f in own:
        if f.name in sections:
            lines += ["", f"        > {sections[f.name]}", ""]
        default = "None" if f.default is None else repr(f.default)
        lines.append(f"        {f.name} (`{f.type}`, *optional*, defaults to `{default}`):")
        lines.append(f"            {f.metadata['help']}")
    return "\n".join(lines) + "\n"


S2LConfig.__doc__ = (S2LConfig.__doc__ or "") + parameter_docs(S2LConfig, _SECTIONS)
