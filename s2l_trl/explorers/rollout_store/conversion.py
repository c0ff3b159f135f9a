"""Rollout rows into Arrow record batches (the table a cache entry memory-maps): parsed, validated, converted to
numpy without per-element Python work, checked vectorised per batch, counted, and their prompt keys collected.

Why a module of its own: this is the one pass over a whole file (tens of GB at paper scale), bounded in memory by
the batch size; the checks that depend on the run and not on the file (vocabulary size, response text needed) are
here too, worded as :func:`~.rows.validate_rollout` words them, since a cached table is checked with them again.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import LOGPROB_FLOOR, LOGPROB_TOLERANCE, ExplorerError
from .index import _digest, new_keys, row_keys, sorted_index
from .progress import Progress
from .rows import _RESPONSE_MISSING, ProblemList, _vocab_problem, validate_rollout
from .sources import RolloutSource

_INT32_MAX = 2**31 - 1


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("line", pa.int64()),
            ("response_ids", pa.list_(pa.int32())),
            ("small_model_log_probs", pa.list_(pa.float32())),
            ("response", pa.string()),
            ("prompt_ids", pa.list_(pa.int32())),
        ]
    )


def _list_array(arrays: list[np.ndarray | None], dtype, value_type):
    """An Arrow list array from per-row numpy arrays (``None``: a null list), without Python-level element work."""
    import pyarrow as pa

    lengths = np.fromiter((0 if a is None else len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [a for a in arrays if a is not None and len(a)]
    values = np.concatenate(present).astype(dtype, copy=False) if present else np.zeros(0, dtype=dtype)
    nulls = np.fromiter((a is None for a in arrays), dtype=bool, count=len(arrays))
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(values, type=value_type), mask=pa.array(nulls) if nulls.any() else None
    )


def _ids_array(values: list[int] | None) -> tuple[np.ndarray | None, int | None]:
    """Token ids as int64, or the first id no int32 can hold (no vocabulary is that large)."""
    if values is None:
        return None, None
    try:
        arr = np.array(values, dtype=np.int64)
    except OverflowError:
        return None, next(v for v in values if not -(2**63) <= v < 2**63)
    if arr.size and (arr.min() < -_INT32_MAX - 1 or arr.max() > _INT32_MAX):
        return None, int(next(v for v in values if not -_INT32_MAX - 1 <= v <= _INT32_MAX))
    return arr, None


def _first_bad(offsets: np.ndarray, values: np.ndarray, vocab_size: int, n_rows: int) -> dict[int, int]:
    """``row -> its first token id outside [0, vocab_size)``, for the rows of a list column that have one."""
    bad = np.flatnonzero((values < 0) | (values >= vocab_size))
    if not bad.size:
        return {}
    rows = np.searchsorted(offsets[: n_rows + 1], bad, side="right") - 1
    uniq, first = np.unique(rows, return_index=True)
    return {int(r): int(values[bad[i]]) for r, i in zip(uniq, first) if 0 <= r < n_rows}


def _logprob_problems(batch) -> dict[int, str]:
    """``row -> problem`` for the rows of a batch whose stored log-probs are impossible (above
    :data:`LOGPROB_TOLERANCE`, infinite, or at vLLM's -inf :data:`LOGPROB_FLOOR`); vectorised over the batch."""
    col = batch.column("small_model_log_probs")
    values = col.values.to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((values > LOGPROB_TOLERANCE) | np.isinf(values) | (values <= LOGPROB_FLOOR))
    if not bad.size:
        return {}
    offsets = col.offsets.to_numpy()
    rows = np.searchsorted(offsets, bad, side="right") - 1
    uniq, first = np.unique(rows, return_index=True)
    found = {}
    for r, i in zip(uniq.tolist(), first.tolist()):
        row_values = values[offsets[r] : offsets[r + 1]]
        known = row_values[~np.isnan(row_values)]
        probabilities = bool(((known >= 0) & (known <= 1)).all())
        found[r] = (
            f"small_model_log_probs holds {float(values[bad[i]]):g} at token {int(bad[i] - offsets[r])}, impossible "
            f"for a log-probability (finite and <= 0; up to {LOGPROB_TOLERANCE:g} above 0 is rounding)"
            + (
                "; every value of the row lies in [0, 1]: probabilities stored instead of log(p)?"
                if probabilities
                else ""
            )
            + "."
        )
    return found


def option_problems(batch, vocab_size: int | None, require_response: bool) -> list[tuple[int, str]]:
    """``(row in batch, problem)`` for the checks that depend on the run, not the file (vocabulary size, response
    text needed), worded and ordered as :func:`validate_rollout` words them; vectorised over an Arrow batch."""
    n = batch.num_rows
    found: dict[int, str] = {}
    if require_response:
        for r in np.flatnonzero(batch.column("response").is_null().to_numpy(zero_copy_only=False)):
            found[int(r)] = _RESPONSE_MISSING
    if vocab_size is not None:
        for name in ("response_ids", "prompt_ids"):
            col = batch.column(name)
            offsets = col.offsets.to_numpy()
            values = col.values.to_numpy()
            for r, token in _first_bad(offsets, values, vocab_size, n).items():
                found.setdefault(r, _vocab_problem(name, token, vocab_size))
    return sorted(found.items())


@dataclass
class _Stats:
    rows: int = 0
    tokens: int = 0
    rows_with_prompt_id: int = 0
    rows_without_response: int = 0
    min_id: int | None = None  # over response_ids and prompt_ids; None when no ids are stored at all
    max_id: int | None = None
    rows_with_logprobs: int = 0  # rows whose small_model_log_probs are stored (not null)
    known_logprobs: int = 0  # stored log-prob values that are not NaN (null items read as NaN)

    def add(self, batch) -> None:
        self.rows += batch.num_rows
        self.rows_without_response += batch.column("response").null_count
        lps = batch.column("small_model_log_probs")
        self.rows_with_logprobs += batch.num_rows - lps.null_count
        self.known_logprobs += int(np.count_nonzero(~np.isnan(lps.values.to_numpy(zero_copy_only=False))))
        for name in ("response_ids", "prompt_ids"):
            values = batch.column(name).values.to_numpy()
            if name == "response_ids":
                self.tokens += values.size
            if values.size:
                low, high = int(values.min()), int(values.max())
                self.min_id = low if self.min_id is None else min(self.min_id, low)
                self.max_id = high if self.max_id is None else max(self.max_id, high)


class _Converter:
    """Streams a source into Arrow record batches and a key index, collecting every problem on the way."""

    def __init__(self, source: RolloutSource, vocab_size: int | None, require_response: bool, write):
        self.source, self.vocab_size, self.require_response, self.write = source, vocab_size, require_response, write
        self.structural = ProblemList(source.path)  # problems of the file itself: nothing is cached
        self.problems = ProblemList(source.path)  # every problem, structural or of this run's options
        self.stats = _Stats()
        self.keys = new_keys()

    def run(self) -> None:
        total, unit = self.source.total()
        progress = Progress(f"Converting rollouts {self.source.path}", total, unit)
        started = time.monotonic()
        for locs, items, done in self.source.batches():
            with _gc_paused():
                self._batch(locs, items)
            progress.update(done, self.stats.rows)
        if not self.stats.rows and not self.structural.count:
            raise ExplorerError(f"{self.source.path}: no rollouts found.")
        progress.finish(
            f"Converted rollouts {self.source.path}: {self.stats.rows:,} rows, {self.stats.tokens:,} response tokens "
            f"in {time.monotonic() - started:.1f} s."
        )

    def _row(self, loc: int, item: Any) -> tuple[dict[str, Any] | None, str | None, tuple | None]:
        """``(row, problem, (ids, prompt_ids))`` of one item; a fast-parsed line is re-read exactly when it fails."""
        row = self.source.parse(loc, item, exact=False)
        for attempt in (0, 1):
            if isinstance(row, str):
                return None, row, None
            problem = validate_rollout(row, logprob_values=False)  # values: vectorised per batch (_logprob_problems)
            exact_needed = isinstance(row.get("prompt_id"), float)  # orjson reads a > 64-bit integer as a float
            ids = prompt_ids = None
            if problem is None:
                ids, bad = _ids_array(row["response_ids"])
                if bad is None:
                    prompt_ids, bad = _ids_array(row.get("prompt_ids"))
                    name = "prompt_ids"
                else:
                    name = "response_ids"
                if bad is not None:
                    problem = f"{name} holds token id {bad}, beyond any vocabulary (token ids must be below 2**31)."
            if (problem is None and not exact_needed) or attempt or self.source.kind != "jsonl":
                break
            row = self.source.parse(loc, item, exact=True)
        if problem is not None:
            return None, f"{self.source.where(loc)}: {problem}", None
        return row, None, (ids, prompt_ids)

    def _batch(self, locs: list[int], items: list[Any]) -> None:
        import pyarrow as pa

        kept_locs, rows, ids, prompt_ids, errors = [], [], [], [], []
        for loc, item in zip(locs, items):
            row, problem, arrays = self._row(loc, item)
            if problem is not None:
                errors.append((loc, problem))
                continue
            kept_locs.append(loc)
            rows.append(row)
            ids.append(arrays[0])
            prompt_ids.append(arrays[1])
        for _, message in errors:
            self.structural.add(message)
        if rows:
            lps = []
            for row in rows:
                values = row.get("small_model_log_probs")
                # None items (unscored tokens) become NaN: the trainer reads NaN as "no sampling log-prob".
                lps.append(None if values is None else np.array(values, dtype=np.float64))
            batch = pa.RecordBatch.from_arrays(
                [
                    pa.array(kept_locs, type=pa.int64()),
                    _list_array(ids, np.int32, pa.int32()),
                    _list_array(lps, np.float32, pa.float32()),
                    pa.array([r.get("response") for r in rows], type=pa.string()),
                    _list_array(prompt_ids, np.int32, pa.int32()),
                ],
                schema=_schema(),
            )
            for r, p in _logprob_problems(batch).items():  # a problem of the file itself: nothing is cached
                self.structural.add(f"{self.source.where(kept_locs[r])}: {p}")
                errors.append((kept_locs[r], f"{self.source.where(kept_locs[r])}: {p}"))
            errors += [(kept_locs[r], f"{self.source.where(kept_locs[r])}: {p}") for r, p in self._options(batch)]
            first_row = self.stats.rows
            self.stats.add(batch)
            self._index(rows, first_row)
            if not self.structural.count:
                self.write(batch)
        for _, message in sorted(errors):
            self.problems.add(message)

    def _options(self, batch) -> list[tuple[int, str]]:
        return option_problems(batch, self.vocab_size, self.require_response)

    def _index(self, rows: list[dict[str, Any]], first_row: int) -> None:
        for i, row in enumerate(rows, start=first_row):
            if row.get("prompt_id") is not None:
                self.stats.rows_with_prompt_id += 1
            for kind, key in row_keys(row):
                hi, lo = _digest(key)
                his, los, idx = self.keys[kind]
                his.append(hi)
                los.append(lo)
                idx.append(i)

    def index_arrays(self) -> dict[str, np.ndarray]:
        """The prompt-key index of the rows converted so far (:func:`~.index.sorted_index`)."""
        return sorted_index(self.keys)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many lists of numbers.

    Such lists hold no reference cycles, yet each collection the allocations trigger walks every element of every
    young list: about a third of a conversion's time and half of a round's. Re-enabled on exit unless it was
    already off (another thread pausing it at the same time is harmless: the last one out re-enables it).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
