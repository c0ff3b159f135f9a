"""The TRL releases s2l-trl is tested against (a warning outside them), and its workarounds of TRL behaviour.

`S2LTrainer` overrides private seams of `GRPOTrainer` (`_generate_and_score_completions`, `_generate_single_turn`,
`_calculate_rewards`, `_compute_loss`, `_prepare_inputs`, `_save_checkpoint`, `_load_optimizer_and_scheduler`) and
reads a few attributes of TRL's vLLM generation object; the workarounds of TRL behaviour it needs live at the end of
this module, each naming the behaviour it works around. `tests/test_trl_seams.py` checks their signatures against the
installed TRL; CI runs the trainer tests on the newest and the oldest release of this range.
"""

from __future__ import annotations

import logging
from typing import Any

from packaging.version import Version

logger = logging.getLogger(__name__)

# Inclusive lower bound, exclusive upper bound: the minor releases CI runs (keep in sync with pyproject.toml).
TESTED_TRL = (Version("1.15.0"), Version("1.17.0"))


def trl_version() -> Version:
    import trl

    return Version(trl.__version__)


def is_tested_trl(version: Version | None = None) -> bool:
    """Whether ``version`` (default: the installed TRL) lies in the tested range."""
    version = trl_version() if version is None else version
    return TESTED_TRL[0] <= version < TESTED_TRL[1]


def warn_if_untested_trl() -> None:
    """Log a warning once when the installed TRL is outside the tested range (the seams may have moved)."""
    global _warned
    if _warned or is_tested_trl():
        return
    _warned = True
    logger.warning(
        "s2l-trl is tested with trl >= %s, < %s; found trl %s. S2LTrainer overrides private GRPOTrainer methods, "
        "so check tests/test_trl_seams.py against this release.",
        TESTED_TRL[0],
        TESTED_TRL[1],
        trl_version(),
    )


_warned = False


# ---------------------------------------------------------------------- workarounds of TRL behaviour
# Each function below works around one GRPOTrainer behaviour (named in its docstring) for S2LTrainer; drop it when
# TRL changes that behaviour. `tests/test_trl_seams.py` pins the attributes they read.


def realign_micro_step(trainer: Any) -> bool:
    """Set TRL's micro-step counter to where an uninterrupted run would be; return whether it moved.

    TRL behaviour: `GRPOTrainer._step` (the micro-step counter that decides when `_prepare_inputs` generates) is not
    checkpointed, so a resumed run restarts it at 0 and regenerates at the resume step, shifting every later
    generation round. Call it before TRL's `_prepare_inputs` on the first training micro-step of a resumed run.
    """
    if trainer._buffered_inputs is None and trainer._step == 0 and trainer.state.global_step > 0:
        trainer._step = trainer.state.global_step * trainer.args.gradient_accumulation_steps
        return True
    return False


def vllm_server_generate(vg: Any, prompts: list[list[int]], n: int) -> tuple[list[list[int]], Any]:
    """`n` completions per prompt (prompt-major) from the `trl vllm-serve` server of TRL's `VLLMGeneration` `vg`, with
    its sampling settings, and the server's log-probs of the sampled tokens. Main process only (TRL creates its
    `VLLMClient` there)."""
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


def generate_unequal_rows_vllm_server(
    trainer: Any, prompt_ids: list[list[int]], n: int
) -> tuple[list[list[int]], list[list[float]] | None]:
    """TRL's vLLM-server generation of `n` rows per prompt group when processes hold unequal numbers of rows.

    TRL behaviour: its server path gathers every process's prompts, asks for `num_generations` completions of every
    `num_generations`-th prompt and hands each process the slice `process_index * len(prompts)`, which assumes equal
    row counts per process. S2L's learner generates `G_s` rows per group, and groups straddle processes, so the slice
    is taken by real counts. `prompt_ids` holds this process's learner rows (`n` consecutive rows per group).
    """
    from accelerate.utils import broadcast_object_list, gather_object

    vg = trainer.vllm_generation
    if trainer.state.global_step != trainer._last_loaded_step:
        vg.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step
    all_prompts = gather_object(prompt_ids)
    counts = gather_object([len(prompt_ids)])
    payload: list[Any] = [None]
    if trainer.accelerator.is_main_process:
        payload = [vllm_server_generate(vg, all_prompts[::n], n)]
    broadcast_object_list(payload, from_process=0)
    all_ids, all_logps = payload[0]
    begin = sum(counts[: trainer.accelerator.process_index])
    local = slice(begin, begin + len(prompt_ids))
    logps = None if all_logps is None else [[lp[0] for lp in seq] for seq in all_logps[local]]
    return all_ids[local], logps


def relog_advantages(trainer: Any, advantages: Any) -> None:
    """Replace the advantages TRL logged for the batch it just scored with `advantages` (`(B,)`, this process's
    rows), gathered in TRL's process order. Call it on every process (it gathers).

    TRL behaviour: `_generate_and_score_completions` appends the gathered group advantages of the batch to
    `_logs["advantages"]` (the completions table's `advantage` column, shown by rich, wandb and trackio) before it
    returns the batch; S2L changes the advantages afterwards (`per_source` baselines, explorer importance weights),
    so the logged values are not the ones the loss uses.
    """
    from accelerate.utils import gather

    values = gather(advantages.detach().float()).tolist()
    logged = trainer._logs["advantages"]
    n = min(len(values), len(logged))  # the deque keeps at most a generation batch
    for _ in range(n):
        logged.pop()
    logged.extend(values[len(values) - n :])
