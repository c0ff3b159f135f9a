"""Reward functions in TRL's plain-function style, and the registry the `s2l-train` CLI picks them from by name."""

from __future__ import annotations

import re
from collections.abc import Callable

from trl.rewards import accuracy_reward as _trl_accuracy_reward
from trl.rewards import think_format_reward

from .answers import extract_math_answer
from .preflight import InputError

_BOXED = re.compile(r"\\boxed\{")


def _as_messages(completions: list) -> list[list[dict[str, str]]]:
    # TRL hands conversational completions as one-message lists and standard ones as plain strings.
    return [c if isinstance(c, list) else [{"role": "assistant", "content": c}] for c in completions]


def _text(completion) -> str:
    return completion[0]["content"] if isinstance(completion, list) else completion


def accuracy_reward(completions: list, solution: list[str], **kwargs) -> list[float | None]:
    r"""1.0 when math-verify judges the completion's answer equal to `solution`, else 0.0.

    TRL's `accuracy_reward` (boxed answer first), extended to plain-text completions and to the DAPO-Math-17k
    format, whose prompts ask for a last line `Answer: $Answer` instead of `\boxed{}`: a completion without a boxed
    answer is judged on the text after its last `Answer:`. `None` (row skipped) when the gold answer does not parse.
    Integer gold answers are accepted.
    """
    messages = _as_messages(completions)
    gold = [str(s) for s in solution]
    rewards = _trl_accuracy_reward(messages, gold, **kwargs)
    for i, (message, reward) in enumerate(zip(messages, rewards)):
        text = message[0]["content"]
        if reward == 0.0 and not _BOXED.search(text) and (answer := extract_math_answer(text)):
            # Boxing the answer lets TRL's (boxed-first) extraction judge it with the same math-verify settings.
            rewards[i] = _trl_accuracy_reward([[{"role": "assistant", "content": f"\\boxed{{{answer}}}"}]], [gold[i]])[
                0
            ]
    return rewards


def format_reward(completions: list, **kwargs) -> list[float]:
    r"""1.0 when the completion puts a final answer in `\boxed{...}` (the format the math prompts ask for)."""
    return [1.0 if _BOXED.search(_text(c)) else 0.0 for c in completions]


REWARD_FUNCS: dict[str, Callable] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "think_format": think_format_reward,
}


def get_reward_funcs(names: list[str]) -> list[Callable]:
    """Look reward functions up by name; an unknown name is an error listing the known ones."""
    unknown = [n for n in names if n not in REWARD_FUNCS]
    if unknown:
        raise InputError(f"Unknown reward function(s) {unknown}; expected names from {sorted(REWARD_FUNCS)}.")
    return [REWARD_FUNCS[n] for n in names]
