"""A rollout row: its fields, the rules every reader applies to every row, the prompt keys rows are found by, and
the list of a file's problems.

Why a module of its own: the small-file reader (exact JSON, `read_rollouts`), the Arrow conversion and `s2l-sample`
hold rows to the same rules and keys; none of it needs Arrow or the cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..base import ExplorerError, logprob_problem

ROLLOUT_FIELDS = (
    "prompt_id",
    "prompt",
    "prompt_ids",
    "response",
    "response_ids",
    "small_model_log_probs",
    "reward",
    "is_correct",
    "data_source",
    "ground_truth",
)
_REQUIRED = ("prompt", "response_ids")
MAX_LISTED_ERRORS = 20
_RESPONSE_MISSING = "response (the completion text) is needed to re-tokenize it for the learner, and is missing."


def prompt_text_key(prompt: Any) -> str:
    """The last user turn of a conversational prompt (a plain prompt stripped).

    Lossy on purpose: it is how rollouts that store only the problem text as ``prompt`` are found for a
    conversational data-set row, and what `s2l-sample` hashes into a ``prompt_id``. Matching uses
    :func:`prompt_key` (the whole prompt) first.
    """
    if isinstance(prompt, str):
        return prompt.strip()
    if isinstance(prompt, list):  # conversational: the last user turn is what differs between problems
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1].strip()
    return json.dumps(prompt, sort_keys=True)


def prompt_key(prompt: Any) -> str:
    """A canonical text of the whole prompt: the stripped string, or the canonical JSON of the message list.

    Two conversational prompts with the same user turn but different system prompts get different keys. Keys of
    ``None``-valued message fields are left out (a `datasets` table fills a field missing from some rows with
    ``None``), so a prompt read back from Arrow matches the one written to JSON.
    """
    if isinstance(prompt, str):
        return prompt.strip()
    if isinstance(prompt, list):
        prompt = [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in prompt]
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _is_id_list(value: Any) -> bool:
    # set(map(type, ...)) runs at C speed: a paper-scale file holds hundreds of millions of ids. `bool` is not `int`.
    return isinstance(value, list) and set(map(type, value)) <= {int}


def validate_rollout(
    row: Any, vocab_size: int | None = None, require_response: bool = False, logprob_values: bool = True
) -> str | None:
    """What is wrong with one rollout row, or ``None``; the rules every reader of rollouts applies to every row.

    * ``prompt``: a string or a list of chat messages (objects with ``role`` and ``content``);
    * ``prompt_id`` (optional): a string or an integer;
    * ``prompt_ids`` (optional; ``null`` or ``[]`` when not recorded): token ids;
    * ``response_ids``: token ids; an empty list is a valid (empty) completion, treated like an empty learner one;
    * ``response``: a string when present (required with ``require_response``);
    * ``small_model_log_probs`` (optional): numbers (or ``null`` for unscored tokens), one per response token, each a
      log-probability: finite and <= 0 (see :func:`~s2l_trl.explorers.base.logprob_problem`; conversion checks the
      values vectorised per batch instead, ``logprob_values=False``);
    * every token id in ``[0, vocab_size)`` when ``vocab_size`` is given.
    """
    if not isinstance(row, dict):
        return f"expected a JSON object with fields {ROLLOUT_FIELDS}, got {type(row).__name__}."
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        return f"missing field(s) {missing}; expected the fields {ROLLOUT_FIELDS}."
    prompt = row["prompt"]
    is_chat = isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in prompt
    )
    if not (isinstance(prompt, str) or is_chat) or not prompt:
        return "prompt must be a non-empty string or a list of chat messages with 'role' and 'content'."
    pid = row.get("prompt_id")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int))):
        return f"prompt_id must be a string or an integer, got {type(pid).__name__}."
    ids = row["response_ids"]
    if not _is_id_list(ids):
        return "response_ids must be a list of integer token ids."
    prompt_ids = row.get("prompt_ids")
    if prompt_ids is not None and not _is_id_list(prompt_ids):
        return "prompt_ids must be a list of integer token ids (or null when not recorded)."
    response = row.get("response")
    if response is not None and not isinstance(response, str):
        return f"response must be a string, got {type(response).__name__}."
    if require_response and response is None:
        return _RESPONSE_MISSING
    lps = row.get("small_model_log_probs")
    if lps is not None:
        if not isinstance(lps, list) or len(lps) != len(ids):
            return (
                f"small_model_log_probs must be a list as long as response_ids ({len(ids)}), "
                f"got {len(lps) if isinstance(lps, list) else type(lps).__name__}."
            )
        if not set(map(type, lps)) <= {float, int, type(None)}:
            return "small_model_log_probs must hold numbers (or null)."
        problem = logprob_problem(np.array(lps, dtype=np.float64)) if logprob_values else None
        if problem:
            return f"small_model_log_probs: {problem}"
    if vocab_size is not None:
        for name, values in (("response_ids", ids), ("prompt_ids", prompt_ids or [])):
            if values and (min(values) < 0 or max(values) >= vocab_size):
                bad = next(t for t in values if t < 0 or t >= vocab_size)
                return _vocab_problem(name, bad, vocab_size)
    return None


def _vocab_problem(name: str, token: int, vocab_size: int) -> str:
    return f"{name} holds token id {token}, outside the vocabulary (size {vocab_size})."


class ProblemList:
    """Every problem of a file, in file order; the message shows the first ``MAX_LISTED_ERRORS`` and counts all."""

    def __init__(self, path: Path):
        self.path, self.count, self.shown = path, 0, []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_LISTED_ERRORS:
            self.shown.append(message)

    def raise_if_any(self) -> None:
        if not self.count:
            return
        more = f"\n  ... and {self.count - len(self.shown)} more" if self.count > len(self.shown) else ""
        raise ExplorerError(f"{self.count} invalid rollout row(s) in {self.path}:\n  " + "\n  ".join(self.shown) + more)
