"""Trainer callbacks of s2l-trl."""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import TrainerCallback


class MixProgressCallback(TrainerCallback):
    """Prints one line per logged step with the mix and the per-source rewards, readable in a terminal."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "s2l/alpha" not in logs or not state.is_world_process_zero:
            return

        def fmt(key: str) -> str:
            value = logs.get(key)
            return "   -  " if value is None else f"{value:6.3f}"

        # tqdm.write keeps the line intact next to the Trainer's progress bar.
        tqdm.write(
            f"[s2l] step {state.global_step:>4} | alpha {fmt('s2l/alpha')} | explorer fraction "
            f"{fmt('s2l/explorer_fraction')} | reward {fmt('reward')} | explorer {fmt('s2l/reward/explorer')} | "
            f"learner {fmt('s2l/reward/learner')}"
        )
