"""Explorer that replays pre-sampled rollouts (the authors' offline JSONL schema, as written by `s2l-sample`)."""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..jsonl import iter_jsonl
from .base import ExplorerError, ExplorerOutput

logger = logging.getLogger(__name__)

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
_MAX_LISTED_ERRORS = 20


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


def read_rollouts(
    path: str | Path, vocab_size: int | None = None, require_response: bool = False
) -> list[dict[str, Any]]:
    """Read and validate rollouts from JSONL, parquet, or a `datasets.save_to_disk` directory.

    Every row is checked (see :func:`validate_rollout`); all problems are reported together (the first
    ``20``), each naming ``<file>:<line>`` (JSONL) or ``<file> (row <i>)``.

    Args:
        path: the rollout file or folder.
        vocab_size: when given, every token id must lie in ``[0, vocab_size)``: the vocabulary of the tokenizer the
            rollouts were sampled with (the learner's when ids are used as-is, the explorer's when re-tokenized).
        require_response: the ``response`` text must be present (it is re-tokenized when the tokenizers differ).
    """
    path = Path(path)
    if not path.exists():
        raise ExplorerError(f"explorer_rollouts path {str(path)!r} does not exist.")
    if path.is_dir() or path.suffix == ".parquet":
        import datasets

        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
        located = [(f"{path} (row {i})", dict(r)) for i, r in enumerate(ds)]
    else:
        located = [(f"{path}:{lineno}", row) for lineno, row in iter_jsonl(path, ExplorerError)]
    if not located:
        raise ExplorerError(f"{path}: no rollouts found.")
    errors = []
    for where, row in located:
        problem = validate_rollout(row, vocab_size=vocab_size, require_response=require_response)
        if problem:
            errors.append(f"{where}: {problem}")
    if errors:
        shown = "\n  ".join(errors[:_MAX_LISTED_ERRORS])
        more = f"\n  ... and {len(errors) - _MAX_LISTED_ERRORS} more" if len(errors) > _MAX_LISTED_ERRORS else ""
        raise ExplorerError(f"{len(errors)} invalid rollout row(s) in {path}:\n  {shown}{more}")
    return [row for _, row in located]


def _is_id_list(value: Any) -> bool:
    # set(map(type, ...)) runs at C speed: a paper-scale file holds hundreds of millions of ids. `bool` is not `int`.
    return isinstance(value, list) and set(map(type, value)) <= {int}


def validate_rollout(row: Any, vocab_size: int | None = None, require_response: bool = False) -> str | None:
    """What is wrong with one rollout row, or ``None``; the rules :func:`read_rollouts` applies to every row.

    * ``prompt``: a string or a list of chat messages (objects with ``role`` and ``content``);
    * ``prompt_id`` (optional): a string or an integer;
    * ``prompt_ids`` (optional; ``null`` or ``[]`` when not recorded): token ids;
    * ``response_ids``: token ids; an empty list is a valid (empty) completion, treated like an empty learner one;
    * ``response``: a string when present (required with ``require_response``);
    * ``small_model_log_probs`` (optional): numbers (or ``null`` for unscored tokens), one per response token;
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
        return "response (the completion text) is needed to re-tokenize it for the learner, and is missing."
    lps = row.get("small_model_log_probs")
    if lps is not None:
        if not isinstance(lps, list) or len(lps) != len(ids):
            return (
                f"small_model_log_probs must be a list as long as response_ids ({len(ids)}), "
                f"got {len(lps) if isinstance(lps, list) else type(lps).__name__}."
            )
        if not set(map(type, lps)) <= {float, int, type(None)}:
            return "small_model_log_probs must hold numbers (or null)."
    if vocab_size is not None:
        for name, values in (("response_ids", ids), ("prompt_ids", prompt_ids or [])):
            if values and (min(values) < 0 or max(values) >= vocab_size):
                bad = next(t for t in values if t < 0 or t >= vocab_size)
                return f"{name} holds token id {bad}, outside the vocabulary (size {vocab_size})."
    return None


class OfflineExplorer:
    """Draws stored explorer completions for each prompt instead of sampling them.

    Rows are matched to data-set rows by ``prompt_id`` when the data set has that column (and the rollouts have
    ids), else by the whole prompt (:func:`prompt_key`). A rollout that stores its prompt as a plain string is also
    found from a conversational data-set row by the row's last user turn (files that store only the problem text).
    Every row is validated at load (:func:`read_rollouts`); :meth:`missing` lists the data-set rows that have no
    rollouts, for a check before training starts.

    For each request it draws ``n`` rows of the prompt without replacement; when fewer exist it draws with
    replacement and warns once per prompt. The draws of the ``k``-th request come from a generator seeded by
    ``(seed, k)``, so a run is reproducible and a resumed run continues the same sequence once the request counter
    is restored (:meth:`state_dict` / :meth:`load_state_dict`). Stored ``reward``/``is_correct`` are never used: the
    trainer re-scores every row.

    Args:
        path: JSONL, parquet or `datasets` directory.
        seed: seed of the draws.
        retokenize_with: the learner's tokenizer, when the rollouts were tokenized by a different (explorer)
            tokenizer: the ``response`` text is re-tokenized with it and log-probs are dropped.
        explorer_eos_token_ids: the explorer's end-of-sequence id(s) (its tokenizer's and its generation config's).
            With ``retokenize_with``, a stored completion whose last id is one of them finished; its re-tokenized
            text gets the learner's EOS appended, so it is not mistaken for a truncated one.
        eos_token_id: the learner EOS appended in that case (default: ``retokenize_with.eos_token_id``).
        vocab_size: when given, every stored token id must lie in ``[0, vocab_size)`` (the vocabulary of the
            tokenizer the rollouts were sampled with: the learner's, or the explorer's when re-tokenizing).
    """

    def __init__(
        self,
        path: str | Path,
        seed: int = 0,
        retokenize_with=None,
        explorer_eos_token_ids: int | Iterable[int] | None = None,
        eos_token_id: int | None = None,
        vocab_size: int | None = None,
    ):
        self.path = Path(path)
        self.rows = read_rollouts(self.path, vocab_size=vocab_size, require_response=retokenize_with is not None)
        self.retokenize_with = retokenize_with
        if isinstance(explorer_eos_token_ids, int):
            explorer_eos_token_ids = [explorer_eos_token_ids]
        self.explorer_eos_token_ids = set(explorer_eos_token_ids or [])
        if eos_token_id is None and retokenize_with is not None:
            eos_token_id = retokenize_with.eos_token_id
        self.eos_token_id = eos_token_id
        if retokenize_with is not None and not self.explorer_eos_token_ids:
            logger.warning(
                "%s: re-tokenizing explorer completions without the explorer's EOS id(s): every completion will "
                "read as unfinished (truncated). Pass explorer_eos_token_ids.",
                self.path,
            )
        self.seed = seed
        self.requests_served = 0
        self.by_id: dict[str, list[int]] = defaultdict(list)
        self.by_prompt: dict[str, list[int]] = defaultdict(list)
        self.by_user_text: dict[str, list[int]] = defaultdict(list)  # rows whose stored prompt is a plain string
        for i, row in enumerate(self.rows):
            if row.get("prompt_id") is not None:
                self.by_id[str(row["prompt_id"])].append(i)
            self.by_prompt[prompt_key(row["prompt"])].append(i)
            if isinstance(row["prompt"], str):
                self.by_user_text[prompt_text_key(row["prompt"])].append(i)
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ lookup
    def _candidates(self, example: dict[str, Any]) -> tuple[str, list[int]]:
        if example.get("prompt_id") is not None and self.by_id:
            key = str(example["prompt_id"])
            return f"prompt_id={key!r}", self.by_id.get(key, [])
        prompt = example.get("prompt")
        key = prompt_key(prompt)
        label = f"prompt {key[:120]!r}"
        found = self.by_prompt.get(key)
        if found:
            return label, found
        if isinstance(prompt, list) and self.by_user_text:
            return label, self.by_user_text.get(prompt_text_key(prompt), [])
        return label, []

    def missing(self, examples: Iterable[dict[str, Any]]) -> list[str]:
        """Labels of the data-set rows that have no rollouts (each once, in data-set order).

        Call it on the training set before training, so that one error lists every uncovered prompt instead of the
        run failing at the first batch that meets one. Rows are matched as :meth:`generate` matches them.
        """
        labels: list[str] = []
        seen: set[str] = set()
        for example in examples:
            label, candidates = self._candidates(example)
            if not candidates and label not in seen:
                seen.add(label)
                labels.append(label)
        return labels

    def stored_prompt_ids(self, example: dict[str, Any]) -> list[int] | None:
        """The prompt token ids stored with the rollouts of a data-set row (`prompt_ids`), or `None` when none were
        recorded; the trainer compares them with the ids it builds itself."""
        _, candidates = self._candidates(example)
        for i in candidates:
            ids = self.rows[i].get("prompt_ids")
            if ids:
                return list(ids)
        return None

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, int]:
        """JSON-serialisable state of the draws: the seed and how many requests were served."""
        return {"seed": self.seed, "requests_served": self.requests_served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the draws of a saved run (:meth:`state_dict`); a different seed is kept but warned about."""
        if int(state.get("seed", self.seed)) != self.seed:
            logger.warning(
                "%s: restoring explorer draws saved with seed %s into an explorer seeded %s; keeping seed %s.",
                self.path,
                state.get("seed"),
                self.seed,
                self.seed,
            )
        self.requests_served = int(state["requests_served"])

    # ------------------------------------------------------------------ generation
    def _retokenize(self, row: dict[str, Any]) -> list[int]:
        ids = list(self.retokenize_with(row["response"], add_special_tokens=False)["input_ids"])
        stored = row["response_ids"]
        finished = bool(stored) and stored[-1] in self.explorer_eos_token_ids
        if finished and self.eos_token_id is not None and (not ids or ids[-1] != self.eos_token_id):
            ids.append(self.eos_token_id)
        return ids

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        if inputs is None or len(inputs) != len(prompt_ids):
            raise ValueError("OfflineExplorer needs the data-set rows (`inputs`) of the prompts to look them up.")
        # One generator per request, seeded by (seed, request index): string seeds are hashed with SHA-512, so the
        # draws are the same in every process and run.
        rng = random.Random(f"s2l-offline:{self.seed}:{self.requests_served}")
        self.requests_served += 1
        completion_ids: list[list[int]] = []
        logprobs: list[list[float]] | None = [] if self.retokenize_with is None else None
        for example in inputs:
            label, candidates = self._candidates(example)
            if not candidates:
                raise ExplorerError(
                    f"{self.path}: no rollouts for {label}; every training prompt needs explorer "
                    "rollouts (re-run s2l-sample on this data set)."
                )
            if len(candidates) >= n:
                picks = rng.sample(candidates, n)
            else:
                if label not in self._warned:
                    self._warned.add(label)
                    logger.warning(
                        "%s: only %d rollouts for %s but %d explorer rows are needed; drawing with replacement.",
                        self.path,
                        len(candidates),
                        label,
                        n,
                    )
                picks = [rng.choice(candidates) for _ in range(n)]
            for i in picks:
                row = self.rows[i]
                if self.retokenize_with is not None:
                    completion_ids.append(self._retokenize(row))
                    continue
                completion_ids.append(list(row["response_ids"]))
                lps = row.get("small_model_log_probs")
                logprobs.append(
                    [float("nan")] * len(row["response_ids"])
                    if lps is None
                    else [float("nan") if x is None else float(x) for x in lps]
                )
        return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs)
