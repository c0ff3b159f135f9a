"""The S2L-PO mixing schedule: how many rows of each rollout group the explorer supplies at a given step.

Pure functions, no torch, so the schedule can be read, tested and plotted on its own.

Paper (Algorithm 1): at optimizer step ``i`` (1-based) the explorer supplies ``G_w = ceil(alpha_i * G)`` of the ``G``
completions of every group and the learner the other ``G_s = G - G_w``, with
``alpha_i = 1 - (i - 1) / (T_mix - 1)`` for ``i <= T_mix`` and fully on-policy (``alpha = 0``) afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("linear", "constant", "cosine")

# Guards ``ceil`` against float noise: alpha_3 * 9 = 3.0000000000000004 at T_mix = 4 must give 3, not 4.
_CEIL_EPS = 1e-9


def validate_schedule(
    schedule: str, mix_steps: int, alpha_start: float, alpha_end: float, num_generations: int | None = None
) -> None:
    """Raise ``ValueError`` naming the offending field if the schedule parameters are invalid."""
    if schedule not in SCHEDULES:
        raise ValueError(f"mix_schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if not isinstance(mix_steps, int) or isinstance(mix_steps, bool) or mix_steps < 1:
        raise ValueError(f"mix_steps (T_mix) must be an integer >= 1, got {mix_steps!r}.")
    for name, value in (("mix_alpha_start", alpha_start), ("mix_alpha_end", alpha_end)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    if num_generations is not None and num_generations < 2:
        raise ValueError(f"num_generations (G) must be >= 2 for group-relative advantages, got {num_generations!r}.")


def mix_alpha(
    step: int, schedule: str = "linear", mix_steps: int = 8, alpha_start: float = 1.0, alpha_end: float = 0.0
) -> float:
    """Explorer fraction ``alpha_i`` at optimizer step ``step`` (1-based).

    ``linear`` interpolates from ``alpha_start`` at step 1 to ``alpha_end`` at step ``mix_steps``; ``cosine``
    follows a half cosine between the same end points; ``constant`` holds ``alpha_start``. Every schedule is 0
    after ``mix_steps``: from then on training is plain on-policy GRPO.
    """
    validate_schedule(schedule, mix_steps, alpha_start, alpha_end)
    if step < 1:
        raise ValueError(f"step must be >= 1 (optimizer steps are 1-based), got {step!r}.")
    if step > mix_steps:
        return 0.0
    if schedule == "constant":
        return alpha_start
    progress = 0.0 if mix_steps == 1 else (step - 1) / (mix_steps - 1)
    if schedule == "linear":
        return alpha_start + (alpha_end - alpha_start) * progress
    return alpha_end + (alpha_start - alpha_end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def split_group(alpha: float, num_generations: int) -> tuple[int, int]:
    """Split a group of ``num_generations`` rows into ``(G_w, G_s)``: explorer rows, learner rows."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations!r}.")
    g_w = min(num_generations, max(0, math.ceil(alpha * num_generations - _CEIL_EPS)))
    return g_w, num_generations - g_w


AlphaFn = Callable[[int], float]


def make_alpha_fn(
    schedule: str | AlphaFn, mix_steps: int = 8, alpha_start: float = 1.0, alpha_end: float = 0.0
) -> AlphaFn:
    """Return ``step -> alpha`` for a named schedule, or wrap a user callable so its values are checked."""
    if callable(schedule):
        user_fn = schedule

        def checked(step: int) -> float:
            alpha = float(user_fn(step))
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(
                    f"The mix_schedule callable returned alpha={alpha!r} at step {step}; expected a value in [0, 1]."
                )
            return alpha

        return checked
    validate_schedule(schedule, mix_steps, alpha_start, alpha_end)
    return lambda step: mix_alpha(step, schedule, mix_steps, alpha_start, alpha_end)
