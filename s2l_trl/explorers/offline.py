"""Explorer that replays pre-sampled rollouts (the authors' offline JSONL schema, as written by `s2l-sample`).

The rollouts are converted once into a memory-mapped Arrow table with a prompt index (:mod:`.rollout_store`); each
request materialises only the rows it draws.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .base import GROUP_FIELD, ExplorerError, ExplorerOutput
from .rollout_store import (
    KEY_ID,
    KEY_PROMPT,
    KEY_TEXT,
    KEY_USER,
    ROLLOUT_FIELDS,
    RolloutSource,
    RolloutStore,
    iter_validated_rows,
    prompt_key,
    prompt_text_key,
    validate_rollout,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ROLLOUT_FIELDS",
    "OfflineExplorer",
    "prompt_key",
    "prompt_text_key",
    "read_rollouts",
    "validate_rollout",
]

# What `s2l-sample` writes beside its rollouts: the settings they were sampled with.
SAMPLE_CONFIG_NAME = "sample_config.json"


def read_rollouts(
    path: str | Path, vocab_size: int | None = None, require_response: bool = False
) -> list[dict[str, Any]]:
    """Read and validate rollouts from JSONL, parquet, or a `datasets.save_to_disk` directory, as Python dicts.

    The small-file path (tests, inspection, merging shards): it holds every row as Python objects (~90 bytes per
    token). Training reads rollouts through :class:`OfflineExplorer`, which keeps them in a memory-mapped Arrow
    table instead.

    Every row is checked (see :func:`validate_rollout`); all problems are reported together (the first
    ``20``), each naming ``<file>:<line>`` (JSONL) or ``<file> (row <i>)``.

    Args:
        path: the rollout file or folder.
        vocab_size: when given, every token id must lie in ``[0, vocab_size)``: the vocabulary of the tokenizer the
            rollouts were sampled with (the learner's when ids are used as-is, the explorer's when re-tokenized).
        require_response: the ``response`` text must be present (it is re-tokenized when the tokenizers differ).
    """
    source = RolloutSource.open(path)
    return [row for _, row in iter_validated_rows(source, vocab_size=vocab_size, require_response=require_response)]


class OfflineExplorer:
    """Draws stored explorer completions for each prompt instead of sampling them.

    Rows are matched to data-set rows by ``prompt_id`` when the data set has that column (and the rollouts have
    ids), else by the whole prompt (:func:`prompt_key`). A rollout that stores its prompt as a plain string is also
    found from a conversational data-set row by the row's last user turn (files that store only the problem text).
    :meth:`missing` lists the data-set rows that have no rollouts, for a check before training starts.

    The file is validated and converted once into a memory-mapped Arrow table with a prompt index, cached in
    ``cache_dir`` under the file's identity (size, mtime, head and tail): a later run on the unchanged file opens the
    cache in seconds, a changed file is converted again. Only the rows a request draws become Python objects, so
    memory does not grow with the file (:mod:`s2l_trl.explorers.rollout_store`). Log-probs are kept as float32.

    For each request it draws ``n`` rows of the prompt without replacement; when fewer exist it draws with
    replacement (``missing(examples, n)`` warns once about all such prompts at start-up; otherwise the first request
    that meets one warns, once per run). The draws of a prompt in the ``k``-th request come from a generator of its
    own, seeded by ``(seed, k, group)``: the prompt's group index in the round when the trainer gives it (``inputs``
    key ``s2l_group``), else the prompt's key and its occurrence in the request. So a group split across two training
    processes, asked for by both (each keeping its own slots), gets the same draws on both and no stored rollout
    twice; a run is reproducible, and a resumed run continues the same sequence once the request counter is restored
    (:meth:`state_dict` / :meth:`load_state_dict`). Stored ``reward``/``is_correct`` are never used: the trainer
    re-scores every row.

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
        cache_dir: where converted rollouts are cached (default ``$HF_DATASETS_CACHE/s2l_rollouts``; one entry per
            rollout file, earlier versions of the file are removed).
        cache: cache the converted table on disk (``True``) or convert in memory at every start (``False``);
            ``None`` caches files of 32 MiB or more.
        logprobs_needed_by: the run's option that weighs explorer tokens with the stored log-probs (e.g.
            ``"explorer_importance_sampling='token_truncate'"``): rollouts without any (the field missing, null or
            all NaN) are then refused here, naming it, and rows without them are counted in a warning.
    """

    def __init__(
        self,
        path: str | Path,
        seed: int = 0,
        retokenize_with=None,
        explorer_eos_token_ids: int | Iterable[int] | None = None,
        eos_token_id: int | None = None,
        vocab_size: int | None = None,
        cache_dir: str | Path | None = None,
        cache: bool | None = None,
        logprobs_needed_by: str | None = None,
    ):
        self.path = Path(path)
        self.store = RolloutStore.open(
            self.path,
            vocab_size=vocab_size,
            require_response=retokenize_with is not None,
            cache_dir=cache_dir,
            cache=cache,
        )
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
        self._has_ids = self.store.has_keys(KEY_ID)
        self._has_text = self.store.has_keys(KEY_TEXT)
        # Draws with replacement are reported once per run: by `missing(examples, n)` for every request up to `n`
        # rows, else by the first request that meets a short prompt.
        self._summarised_n: int | None = None
        self._replacement_warned = False
        if logprobs_needed_by and retokenize_with is None:  # re-tokenized rows have no log-probs, refused earlier
            self._check_logprobs(logprobs_needed_by)

    def _check_logprobs(self, needed_by: str) -> None:
        """Refuse rollouts that hold no log-prob at all when ``needed_by`` weighs tokens with them; warn about rows
        without them (they would get weight 1)."""
        meta = self.store.meta
        rows, with_lps = meta["rows"], meta["rows_with_logprobs"]
        tokens, known = meta["response_tokens"], meta["known_logprobs"]
        fix = (
            "sample the rollouts with log-probs (s2l-sample stores them as small_model_log_probs), or set "
            "explorer_importance_sampling='none' and explorer_off_policy_mask=False"
        )
        if tokens and not known:
            what = (
                "have no small_model_log_probs (the field is missing or null in every row)"
                if not with_lps
                else "hold only null / NaN small_model_log_probs"
            )
            raise ExplorerError(
                f"{needed_by} weighs explorer tokens with the explorer's sampling log-probs, but the rollouts at "
                f"{self.path} ({rows:,} rows) {what}: {fix}."
            )
        if known < tokens:
            logger.warning(
                "%s: %s of the %s stored response tokens have no log-prob (%s of %s rows store none); %s gives them "
                "weight 1 (no correction). To weigh every token, %s.",
                self.path,
                f"{tokens - known:,}",
                f"{tokens:,}",
                f"{rows - with_lps:,}",
                f"{rows:,}",
                needed_by,
                fix,
            )

    # ------------------------------------------------------------------ lookup
    def _candidates(self, example: dict[str, Any]) -> tuple[str, list[int]]:
        """A label naming the data-set row, and its rows in the store (file order)."""
        if example.get("prompt_id") is not None and self._has_ids:
            key = str(example["prompt_id"])
            return f"prompt_id={key!r}", self.store.lookup(KEY_ID, key).tolist()
        prompt = example.get("prompt")
        key = prompt_key(prompt)
        label = f"prompt {key[:120]!r}"
        found = self.store.lookup(KEY_PROMPT, key)
        if len(found):
            return label, found.tolist()
        if isinstance(prompt, list) and self._has_text:
            return label, self.store.lookup(KEY_TEXT, prompt_text_key(prompt)).tolist()
        return label, []

    def missing(self, examples: Iterable[dict[str, Any]], n: int | None = None) -> list[str]:
        """Labels of the data-set rows that have no rollouts (each once, in data-set order).

        Call it on the training set before training, so that one error lists every uncovered prompt instead of the
        run failing at the first batch that meets one. Rows are matched as :meth:`generate` matches them.

        Args:
            examples: the data-set rows (``prompt`` and, when the data set has one, ``prompt_id``).
            n: the most explorer rows a request will ask per prompt (``G_w`` at the start of the schedule). When
                given, one warning summarises the prompts with fewer stored rollouts (their rows are drawn with
                replacement), and :meth:`generate` does not warn about them again.
        """
        labels: list[str] = []
        seen: set[str] = set()
        short: dict[str, int] = {}
        for example in examples:
            label, candidates = self._candidates(example)
            if label in seen:
                continue
            seen.add(label)
            if not candidates:
                labels.append(label)
            elif n is not None and len(candidates) < n:
                short[label] = len(candidates)
        if n is not None:
            self._summarised_n = max(n, self._summarised_n or 0)
            if short:
                fewest = min(short, key=short.get)
                logger.warning(
                    "%s: %d of the %d training prompts have fewer than %d stored rollouts (the fewest: %d, for %s); "
                    "their explorer rows are drawn with replacement, so some repeat within a group.",
                    self.path,
                    len(short),
                    len(seen),
                    n,
                    short[fewest],
                    fewest,
                )
        return labels

    def prompt_difference(self, example: dict[str, Any]) -> str | None:
        """For a data-set row matched to its rollouts by ``prompt_id``: ``None`` when the rollouts were sampled for
        this prompt, ``"problem"`` when their prompt holds another problem text (the data set was edited since
        sampling), ``"rendering"`` when it holds the same problem text with another system prompt or template.
        From the store's key index (hashes): nothing is read from the table."""
        if example.get("prompt_id") is None or not self._has_ids:
            return None
        rows = self.store.lookup(KEY_ID, str(example["prompt_id"]))
        if not len(rows):
            return None
        prompt = example.get("prompt")
        text = prompt_text_key(prompt)
        if np.intersect1d(rows, self.store.lookup(KEY_PROMPT, prompt_key(prompt))).size:
            return None
        if self._has_text and np.intersect1d(rows, self.store.lookup(KEY_TEXT, text)).size:
            return None  # a file that stores only the problem text
        if np.intersect1d(rows, self.store.lookup(KEY_USER, text)).size:
            return "rendering"
        return "problem"

    def sample_config(self) -> dict[str, Any] | None:
        """The settings the rollouts were sampled with: ``sample_config.json`` beside the file (in the folder for a
        `save_to_disk` folder), as `s2l-sample` writes it; ``None`` when there is none or it cannot be read."""
        folder = self.path if self.path.is_dir() else self.path.parent
        path = folder / SAMPLE_CONFIG_NAME
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("%s: cannot read %s (%s); the sampling settings are not checked.", self.path, path, exc)
            return None
        return config if isinstance(config, dict) else None

    def completion_cap(self, eos_token_ids: Iterable[int] | None = None) -> tuple[int, str] | None:
        """The completion-length cap the rollouts were sampled with, and how it is known: ``max_tokens`` of
        ``sample_config.json``; else, given the EOS ids of the stored tokens, the length of the longest stored
        responses when at least two of them end without EOS and none is longer (what a sampler capped there leaves;
        completions cut by stop strings end at scattered lengths); ``None`` when neither says."""
        config = self.sample_config()
        if config is not None and isinstance(config.get("max_tokens"), int):
            folder = self.path if self.path.is_dir() else self.path.parent
            return config["max_tokens"], f"max_tokens={config['max_tokens']} in {folder / SAMPLE_CONFIG_NAME}"
        if eos_token_ids is None:
            return None
        longest, rows, unfinished = self.store.longest_responses(eos_token_ids)
        if longest and unfinished >= 2:
            return longest, (
                f"no sample_config.json beside them; the longest stored responses have {longest} tokens and "
                f"{unfinished} of the {rows} that long end without EOS, as a cap of {longest} tokens cuts them; if "
                f"they were not cut, write their max_tokens into {SAMPLE_CONFIG_NAME} beside them"
            )
        return None

    def stored_prompt_ids(self, example: dict[str, Any]) -> list[int] | None:
        """The prompt token ids stored with the rollouts of a data-set row (`prompt_ids`), or `None` when none were
        recorded; the trainer compares them with the ids it builds itself."""
        _, candidates = self._candidates(example)
        for i in candidates:
            ids = self.store.read([i], ("prompt_ids",))[0]["prompt_ids"]
            if ids:
                return ids
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

    def close(self) -> None:
        """Release the memory-mapped table."""
        self.store.close()

    # ------------------------------------------------------------------ generation
    def _retokenize(self, response: str, last_id: int | None) -> list[int]:
        ids = list(self.retokenize_with(response, add_special_tokens=False)["input_ids"])
        finished = last_id is not None and last_id in self.explorer_eos_token_ids
        if finished and self.eos_token_id is not None and (not ids or ids[-1] != self.eos_token_id):
            ids.append(self.eos_token_id)
        return ids

    def _warn_replacement(self, label: str, stored: int, n: int) -> None:
        if self._replacement_warned or (self._summarised_n is not None and n <= self._summarised_n):
            return
        self._replacement_warned = True
        logger.warning(
            "%s: only %d rollouts for %s but %d explorer rows are needed; drawing with replacement. Reported once: "
            "OfflineExplorer.missing(examples, n=%d) lists every such prompt.",
            self.path,
            stored,
            label,
            n,
            n,
        )

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        if inputs is None or len(inputs) != len(prompt_ids):
            raise ValueError("OfflineExplorer needs the data-set rows (`inputs`) of the prompts to look them up.")
        call, self.requests_served = self.requests_served, self.requests_served + 1
        picks: list[int] = []
        occurrences: dict[str, int] = {}
        for example in inputs:
            label, candidates = self._candidates(example)
            # One generator per (request, group), not one per request drawn in prompt order: the processes that share
            # a split group hold it at different positions of their requests. String seeds are hashed with SHA-512,
            # so the draws are the same in every process and run.
            group = example.get(GROUP_FIELD)
            if group is None:
                occurrences[label] = occurrences.get(label, -1) + 1
                group = f"{label}#{occurrences[label]}"
            rng = random.Random(f"s2l-offline:{self.seed}:{call}:{group}")
            if not candidates:
                raise ExplorerError(
                    f"{self.path}: no rollouts for {label}; every training prompt needs explorer "
                    "rollouts (re-run s2l-sample on this data set)."
                )
            if len(candidates) >= n:
                picks += rng.sample(candidates, n)
            else:
                self._warn_replacement(label, len(candidates), n)
                picks += [rng.choice(candidates) for _ in range(n)]
        if self.retokenize_with is not None:
            rows = self.store.read(picks, ("response",))
            completion_ids = [
                self._retokenize(row["response"], self.store.last_response_id(i)) for i, row in zip(picks, rows)
            ]
            return ExplorerOutput(completion_ids=completion_ids, logprobs=None)
        rows = self.store.read(picks, ("response_ids", "small_model_log_probs"))
        completion_ids = [row["response_ids"] for row in rows]
        logprobs = [
            [float("nan")] * len(row["response_ids"])
            if row["small_model_log_probs"] is None
            else row["small_model_log_probs"]
            for row in rows
        ]
        # Validated when the file was converted (finite, <= 0, one per token): no second pass here.
        return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs, logprobs_checked=True)
