"""Explorer that replays pre-sampled rollouts (the authors' offline JSONL schema, as written by `s2l-sample`)."""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
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


def prompt_text_key(prompt: Any) -> str:
    """A canonical text for a prompt, so a conversational data-set row matches a rollout stored as text or messages."""
    if isinstance(prompt, str):
        return prompt.strip()
    if isinstance(prompt, list):  # conversational: the last user turn is what differs between problems
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1].strip()
    return json.dumps(prompt, sort_keys=True)


def read_rollouts(path: str | Path) -> list[dict[str, Any]]:
    """Read rollouts from JSONL (errors name file and line), parquet, or a `datasets.save_to_disk` directory."""
    path = Path(path)
    if not path.exists():
        raise ExplorerError(f"explorer_rollouts path {str(path)!r} does not exist.")
    if path.is_dir() or path.suffix == ".parquet":
        import datasets

        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
        rows = [dict(r) for r in ds]
        for i, row in enumerate(rows):
            _check_row(row, f"{path} (row {i})")
        return rows
    rows = []
    for lineno, row in iter_jsonl(path, ExplorerError):
        _check_row(row, f"{path}:{lineno}")
        rows.append(row)
    if not rows:
        raise ExplorerError(f"{path}: no rollouts found.")
    return rows


def _check_row(row: Any, where: str) -> None:
    if not isinstance(row, dict):
        raise ExplorerError(f"{where}: expected a JSON object with fields {ROLLOUT_FIELDS}, got {type(row).__name__}.")
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise ExplorerError(f"{where}: missing field(s) {missing}; expected the fields {ROLLOUT_FIELDS}.")
    ids = row["response_ids"]
    if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
        raise ExplorerError(f"{where}: response_ids must be a list of token ids.")
    lps = row.get("small_model_log_probs")
    if lps is not None and (not isinstance(lps, list) or len(lps) != len(ids)):
        raise ExplorerError(
            f"{where}: small_model_log_probs must be a list as long as response_ids "
            f"({len(ids)}), got {len(lps) if isinstance(lps, list) else type(lps).__name__}."
        )


class OfflineExplorer:
    """Draws stored explorer completions for each prompt instead of sampling them.

    Rows are matched to data-set rows by ``prompt_id`` when the data set has that column, else by prompt text
    (:func:`prompt_text_key`). For each request it draws ``n`` rows of the prompt without replacement (seeded); when
    fewer exist it draws with replacement and warns once per prompt. Stored ``reward``/``is_correct`` are never
    used: the trainer re-scores every row.

    Args:
        path: JSONL, parquet or `datasets` directory.
        seed: seed of the draws (one generator, so a run is reproducible).
        retokenize_with: a tokenizer to re-tokenize the ``response`` text with, when the rollouts were tokenized
            by a different tokenizer than the learner's; log-probs are then dropped.
    """

    def __init__(self, path: str | Path, seed: int = 0, retokenize_with=None):
        self.path = Path(path)
        self.rows = read_rollouts(self.path)
        self.retokenize_with = retokenize_with
        self.rng = random.Random(seed)
        self.by_id: dict[str, list[int]] = defaultdict(list)
        self.by_text: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(self.rows):
            if row.get("prompt_id") is not None:
                self.by_id[str(row["prompt_id"])].append(i)
            self.by_text[prompt_text_key(row["prompt"])].append(i)
        self._warned: set[str] = set()
        self.last_latency_s = 0.0

    def _candidates(self, example: dict[str, Any]) -> tuple[str, list[int]]:
        if example.get("prompt_id") is not None and self.by_id:
            key = str(example["prompt_id"])
            return f"prompt_id={key!r}", self.by_id.get(key, [])
        key = prompt_text_key(example.get("prompt"))
        return f"prompt {key[:80]!r}", self.by_text.get(key, [])

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        if inputs is None or len(inputs) != len(prompt_ids):
            raise ValueError("OfflineExplorer needs the data-set rows (`inputs`) of the prompts to look them up.")
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
                picks = self.rng.sample(candidates, n)
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
                picks = [self.rng.choice(candidates) for _ in range(n)]
            for i in picks:
                row = self.rows[i]
                if self.retokenize_with is not None:
                    completion_ids.append(self.retokenize_with(row["response"], add_special_tokens=False)["input_ids"])
                    continue
                completion_ids.append(list(row["response_ids"]))
                lps = row.get("small_model_log_probs")
                logprobs.append(
                    [float("nan")] * len(row["response_ids"])
                    if lps is None
                    else [float("nan") if x is None else float(x) for x in lps]
                )
        return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs)
