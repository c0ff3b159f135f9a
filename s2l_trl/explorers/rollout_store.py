"""Offline rollouts as a memory-mapped Arrow table: converted once per version of the file, validated while streaming,
indexed by prompt, and read one round at a time.

Why: as Python lists a rollout costs ~87 bytes of heap per stored token (~49 GB for the paper's 17.4k prompts x 16
samples x ~2k tokens). Here the token ids and log-probs live in an Arrow IPC file that is memory-mapped (page cache,
shared, evictable), the main process holds only a prompt -> rows index (a few bytes per *row*), and a round turns
just the rows it draws into Python lists.

Layout of a cache entry (a folder in ``cache_dir``, named after the source file and its identity):

* ``rows.arrow``: one row per rollout, in file order (Arrow IPC stream, the format `datasets` memory-maps):
  ``line`` (JSONL line number, or row number for parquet / `save_to_disk`), ``response_ids`` (list<int32>),
  ``small_model_log_probs`` (list<float32>, NaN for unscored tokens, null when not stored), ``response`` (string),
  ``prompt_ids`` (list<int32>);
* ``index.npz``: per lookup key kind (``prompt_id``, whole prompt, user text of plain-string prompts, user text of
  every prompt), the sorted 128-bit hashes of the keys and, for each, the rows holding it (file order); a zip whose
  members carry CRC-32 checksums, checked as it loads;
* ``meta.json``: what was converted (source, identity, counts, token-id range, log-prob counts, and an XXH3-128
  checksum of ``rows.arrow``, verified whenever the entry is opened), written last: an entry without it is torn and
  is converted again.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonl import loads_jsonl_line, loads_jsonl_line_fast
from ..preflight import MissingPathError
from .base import LOGPROB_FLOOR, LOGPROB_TOLERANCE, ExplorerError, logprob_problem

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
MAX_LISTED_ERRORS = 20
_RESPONSE_MISSING = "response (the completion text) is needed to re-tokenize it for the learner, and is missing."
_INT32_MAX = 2**31 - 1

# Bump when the cache layout or what conversion checks changes: entries of another version are converted again.
STORE_VERSION = 2
# Files below this size are converted in memory at every start (well under a second) instead of being cached.
CACHE_MIN_BYTES = 32 * 2**20
# Seconds between two progress lines of a long conversion / validation.
PROGRESS_INTERVAL_S = 10.0
# JSON text read per conversion batch: bounds the Python objects alive at once (~90 bytes per token).
_BATCH_BYTES = 16 * 2**20
_BATCH_ROWS = 1024  # rows per batch for parquet / `save_to_disk` sources
_HEAD_TAIL_BYTES = 2**20  # hashed from each end of a file for its identity

KEY_ID, KEY_PROMPT, KEY_TEXT, KEY_USER = "prompt_id", "prompt", "text", "user"
_KEY_KINDS = (KEY_ID, KEY_PROMPT, KEY_TEXT, KEY_USER)
_CHECKSUM_BLOCK = 64 * 2**20  # bytes hashed per update when checksumming rows.arrow


# ---------------------------------------------------------------------------------------------------------- schema
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


# ---------------------------------------------------------------------------------------------------------- sources
class _LineError(ValueError):
    pass


@dataclass
class RolloutSource:
    """A rollout file or folder: where its rows are, how to name one in a message, and how to stream them."""

    path: Path
    kind: str  # "jsonl" | "parquet" | "dataset"
    data_path: Path  # the folder datasets loads (a split of a `DatasetDict` folder), or the file

    @classmethod
    def open(cls, path: str | Path) -> RolloutSource:
        """Check ``path`` names something rollouts can be read from; one message naming the option otherwise."""
        path = Path(path)
        if not path.exists():
            raise MissingPathError(
                f"explorer_rollouts {str(path)!r} does not exist; expected a JSONL file (as `s2l-sample` writes), a "
                ".parquet file or a folder written by `datasets.Dataset.save_to_disk`."
            )
        if not path.is_dir():
            return cls(path, "parquet" if path.suffix == ".parquet" else "jsonl", path)
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            return cls(path, "dataset", path)
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
            if len(splits) == 1:
                return cls(path, "dataset", path / splits[0])
            raise ExplorerError(
                f"explorer_rollouts: {str(path)!r} holds a `datasets` DatasetDict with the splits {splits}; name one "
                f"of them, e.g. explorer_rollouts={str(path / splits[0])!r}."
            )
        entries = sorted(p.name for p in path.iterdir())
        jsonl = [name for name in entries if name.endswith((".jsonl", ".parquet"))]
        if not entries:
            found = "it is empty"
        elif jsonl:
            found = f"it holds {', '.join(jsonl[:3])}{' ...' if len(jsonl) > 3 else ''}: pass that file instead"
        else:
            found = f"it holds {', '.join(entries[:3])}{' ...' if len(entries) > 3 else ''}"
        raise ExplorerError(
            f"explorer_rollouts: {str(path)!r} is a folder that `datasets.Dataset.save_to_disk` did not write "
            f"({found}). Expected a JSONL file (one rollout per line, as `s2l-sample` writes), a .parquet file, "
            "or a folder written by `save_to_disk` (with state.json and dataset_info.json)."
        )

    @property
    def files(self) -> list[Path]:
        if self.data_path.is_dir():
            return sorted(p for p in self.data_path.rglob("*") if p.is_file())
        return [self.data_path]

    def where(self, loc: int) -> str:
        return f"{self.path}:{loc}" if self.kind == "jsonl" else f"{self.path} (row {loc})"

    def total(self) -> tuple[int, str]:
        """How much there is to read, and in what unit (for progress lines)."""
        if self.kind == "jsonl":
            return self.path.stat().st_size, "bytes"
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows, "rows"
        import datasets

        return datasets.load_from_disk(str(self.data_path)).num_rows, "rows"

    def identity(self) -> str:
        """A cheap identity of the source's content: size, modification time (ns) and a hash of the first and last
        MiB of every file, plus the store version.

        Hashing the whole content would read the whole file (tens of GB at paper scale, a minute or more) at every
        start, defeating the cache. Every ordinary rewrite (s2l-sample appending, an editor, a copy without
        ``cp -p``) changes the size or the mtime, and a change near either end changes the hashed bytes; what is not
        seen is a same-size edit in the middle with the mtime set back by hand. Moving the file keeps its identity
        (and its cache entry).
        """
        h = hashlib.blake2b(digest_size=16)
        h.update(f"s2l-rollouts:{STORE_VERSION}:{self.kind}".encode())
        for file in self.files:
            st = file.stat()
            rel = file.relative_to(self.data_path) if self.data_path.is_dir() else file.name
            h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            with file.open("rb") as f:
                h.update(f.read(_HEAD_TAIL_BYTES))
                if st.st_size > 2 * _HEAD_TAIL_BYTES:
                    f.seek(st.st_size - _HEAD_TAIL_BYTES)
                    h.update(f.read(_HEAD_TAIL_BYTES))
        return h.hexdigest()

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def batches(self) -> Iterator[tuple[list[int], list[Any], int]]:
        """``(locations, rows, progress)`` batches in file order. JSONL rows come as raw line bytes (parse them with
        :meth:`parse`), others as dicts; ``progress`` counts bytes (JSONL) or rows read so far."""
        if self.kind == "jsonl":
            yield from self._jsonl_batches()
            return
        import pyarrow as pa

        if self.kind == "parquet":
            import pyarrow.parquet as pq

            tables = (pa.Table.from_batches([b]) for b in pq.ParquetFile(self.path).iter_batches(_BATCH_ROWS))
        else:
            import datasets

            tables = datasets.load_from_disk(str(self.data_path)).with_format("arrow").iter(_BATCH_ROWS)
        done = 0
        for table in tables:
            rows = table.to_pylist()
            yield list(range(done, done + len(rows))), rows, done + len(rows)
            done += len(rows)

    def _jsonl_batches(self) -> Iterator[tuple[list[int], list[bytes], int]]:
        lineno, done = 0, 0
        with self.path.open("rb") as f:
            while True:
                lines = f.readlines(_BATCH_BYTES)
                if not lines:
                    return
                locs, raws = [], []
                for raw in lines:
                    lineno += 1
                    done += len(raw)
                    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]
                    if raw.strip():
                        locs.append(lineno)
                        raws.append(raw)
                yield locs, raws, done

    def parse(self, loc: int, item: Any, exact: bool) -> dict[str, Any] | str:
        """A row as a dict, or the full message (``<where>: ...``) of a line that is not a JSON object."""
        if self.kind != "jsonl":
            return item
        try:
            loads = loads_jsonl_line if exact else loads_jsonl_line_fast
            return loads(item, self.where(loc), _LineError)
        except _LineError as exc:
            return str(exc)


def iter_validated_rows(
    source: RolloutSource, vocab_size: int | None = None, require_response: bool = False
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for every row of ``source`` (exact JSON values), after every row was validated: all problems
    are raised together (:class:`ProblemList`). Holds the whole file: the small-file path (see `read_rollouts`)."""
    problems = ProblemList(source.path)
    located = []
    progress = Progress(f"Reading rollouts {source.path}", *source.total())
    for locs, items, done in source.batches():
        progress.update(done, len(located))
        for loc, item in zip(locs, items):
            row = source.parse(loc, item, exact=True)
            if isinstance(row, str):
                problems.add(row)
                continue
            problem = validate_rollout(row, vocab_size=vocab_size, require_response=require_response)
            if problem:
                problems.add(f"{source.where(loc)}: {problem}")
            located.append((source.where(loc), row))
    if not located and not problems.count:
        raise ExplorerError(f"{source.path}: no rollouts found.")
    problems.raise_if_any()
    yield from located


# ---------------------------------------------------------------------------------------------------------- progress
class Progress:
    """A progress line about every :data:`PROGRESS_INTERVAL_S` seconds of a long pass over rollouts.

    Lines go to this module's logger at INFO when that level is enabled (``logging.basicConfig(level="INFO")``);
    otherwise to stderr, as `datasets` shows its progress bars, so that a user who configured no logging (the Python
    API, or ``s2l-train`` at its default log level) still sees a long conversion move. ``datasets``' switch
    (``HF_DATASETS_DISABLE_PROGRESS_BARS=1`` / ``datasets.disable_progress_bars()``) silences the stderr lines.
    """

    def __init__(self, what: str, total: int, unit: str):
        self.what, self.total, self.unit = what, total, unit
        self.start = self.last = time.monotonic()
        self.reported = False

    def update(self, done: int, rows: int | None = None) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last, self.reported = now, True
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", ~{(self.total - done) / rate:.0f} s left" if rate > 0 and self.total >= done else ""
        percent = f"{100 * done / max(self.total, 1):.0f}%"
        if self.unit == "bytes":
            amount = f"{done / 1e9:.2f} / {self.total / 1e9:.2f} GB ({percent}), {rows or 0:,} rows"
            speed = f"{rate / 1e6:.0f} MB/s"
        else:
            amount = f"{done:,} / {self.total:,} rows ({percent})"
            speed = f"{rate:,.0f} rows/s"
        self.emit(f"{self.what}: {amount}, {speed}{left}")

    def finish(self, message: str) -> None:
        """The closing line: always logged at INFO, and shown like a progress line when progress was shown."""
        if self.reported:
            self.emit(message)
        else:
            logger.info(message)

    @staticmethod
    def emit(message: str) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info(message)
            return
        from datasets.utils import are_progress_bars_disabled

        if not are_progress_bars_disabled():
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [s2l_trl] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------- conversion
def _digest(text: str) -> tuple[int, int]:
    d = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


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
        self.keys = {kind: (array("Q"), array("Q"), array("q")) for kind in _KEY_KINDS}

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
            prompt = row["prompt"]
            keys = [(KEY_PROMPT, prompt_key(prompt))]
            if row.get("prompt_id") is not None:
                keys.append((KEY_ID, str(row["prompt_id"])))
                self.stats.rows_with_prompt_id += 1
            if isinstance(prompt, str):
                keys.append((KEY_TEXT, prompt_text_key(prompt)))
            keys.append((KEY_USER, prompt_text_key(prompt)))  # tells an edited problem from another template
            for kind, key in keys:
                hi, lo = _digest(key)
                his, los, idx = self.keys[kind]
                his.append(hi)
                los.append(lo)
                idx.append(i)

    def index_arrays(self) -> dict[str, np.ndarray]:
        """Per key kind: sorted unique hashes (``hi``, ``lo``), each one's ``start`` / ``count`` in ``rows``."""
        out = {}
        for kind, (his, los, idx) in self.keys.items():
            hi = np.frombuffer(his, dtype=np.uint64) if len(his) else np.zeros(0, np.uint64)
            lo = np.frombuffer(los, dtype=np.uint64) if len(los) else np.zeros(0, np.uint64)
            rows = np.frombuffer(idx, dtype=np.int64) if len(idx) else np.zeros(0, np.int64)
            order = np.lexsort((rows, lo, hi))  # by key, then file order within a key
            hi, lo, rows = hi[order], lo[order], rows[order]
            new = np.ones(len(hi), dtype=bool)
            new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
            starts = np.flatnonzero(new)
            out[f"{kind}_hi"], out[f"{kind}_lo"] = hi[starts].copy(), lo[starts].copy()
            out[f"{kind}_start"] = starts.astype(np.int64)
            out[f"{kind}_count"] = np.diff(np.append(starts, len(hi))).astype(np.int64)
            out[f"{kind}_rows"] = rows.copy()
        return out


# ---------------------------------------------------------------------------------------------------------- the store
def default_cache_dir() -> Path:
    """``$HF_DATASETS_CACHE/s2l_rollouts`` (``~/.cache/huggingface/datasets/s2l_rollouts`` by default)."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "s2l_rollouts"


class RolloutStore:
    """Validated rollouts in a memory-mapped Arrow table with a prompt-key index (see the module docstring).

    Use :meth:`open`; then :meth:`lookup` the rows of a prompt and :meth:`read` just the rows a round draws.
    ``rows_read`` counts the rows turned into Python objects so far.
    """

    def __init__(self, source: RolloutSource, table, index: dict[str, np.ndarray], meta: dict[str, Any]):
        self.source, self.table, self.meta = source, table, meta
        self.path = source.path
        self.cache_path: Path | None = None
        self.rows_read = 0
        self._index = index
        self._chunk_starts = np.cumsum([0] + [len(c) for c in table.column("line").chunks])
        # Zero-copy numpy views into the (memory-mapped) buffers, one per record batch.
        self._cols: dict[str, list[tuple]] = {}
        for name in ("response_ids", "small_model_log_probs", "prompt_ids"):
            views = []
            for chunk in table.column(name).chunks:
                nulls = chunk.is_null().to_numpy(zero_copy_only=False) if chunk.null_count else None
                views.append((chunk.offsets.to_numpy(), chunk.values.to_numpy(), nulls))
            self._cols[name] = views
        self._responses = table.column("response").chunks

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | Path,
        vocab_size: int | None = None,
        require_response: bool = False,
        cache_dir: str | Path | None = None,
        cache: bool | None = None,
    ) -> RolloutStore:
        """Open (converting once, then from the cache) and validate the rollouts at ``path``.

        Args:
            path: JSONL file, parquet file or `save_to_disk` folder.
            vocab_size / require_response: the run's checks (see :func:`validate_rollout`); applied to every row,
                also when the table comes from the cache.
            cache_dir: where converted tables are kept (default :func:`default_cache_dir`).
            cache: keep the converted table on disk and memory-map it; ``None`` does so for sources of at least
                :data:`CACHE_MIN_BYTES` (smaller ones convert in memory in well under a second).
        """
        source = RolloutSource.open(path)
        if cache is None:
            cache = source.size_bytes() >= CACHE_MIN_BYTES
        if not cache:
            return cls._convert_in_memory(source, vocab_size, require_response)
        return cls._open_cached(
            source, Path(cache_dir) if cache_dir else default_cache_dir(), vocab_size, require_response
        )

    @classmethod
    def _convert_in_memory(cls, source, vocab_size, require_response) -> RolloutStore:
        import pyarrow as pa

        batches = []
        conv = _Converter(source, vocab_size, require_response, batches.append)
        conv.run()
        conv.problems.raise_if_any()
        table = pa.Table.from_batches(batches, schema=_schema())
        return cls(source, table, conv.index_arrays(), _meta(source, None, conv.stats))

    @classmethod
    def _open_cached(cls, source, cache_dir: Path, vocab_size, require_response) -> RolloutStore:
        from filelock import FileLock

        identity = source.identity()
        name = f"{_safe(source.path.name)}-{identity[:20]}"
        entry = cache_dir / name
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(cache_dir / f"{name}.lock"))
        except OSError as exc:
            raise ExplorerError(
                f"Cannot write the converted rollouts of {source.path} to {cache_dir} ({exc}): pass a writable "
                "cache_dir to OfflineExplorer, or point HF_DATASETS_CACHE to a writable folder."
            ) from exc
        store = cls._load_entry(source, entry, identity)
        if store is None:
            if not _try_lock(lock):
                lock.acquire(poll_interval=1.0)  # another process converts the same file: wait, then read its entry
            try:
                store = cls._load_entry(source, entry, identity)
                if store is None:
                    cls._convert_to(source, entry, identity, vocab_size, require_response)
                    _prune_other_versions(cache_dir, source, keep=name)
                    store = cls._load_entry(source, entry, identity)
            finally:
                lock.release()
            if store is None:  # pragma: no cover - the entry was written a moment ago
                raise ExplorerError(f"The converted rollouts at {entry} could not be read back.")
        store.check(vocab_size, require_response)
        return store

    @classmethod
    def _convert_to(cls, source, entry: Path, identity: str, vocab_size, require_response) -> None:
        """Convert into a temporary folder beside ``entry`` and rename it into place when complete: a killed
        conversion leaves no entry (its temporary folder is removed by the next one)."""
        import pyarrow as pa

        for stale in entry.parent.glob(f".{entry.name}.tmp-*"):  # torn conversions (we hold the entry's lock)
            shutil.rmtree(stale, ignore_errors=True)
        if entry.exists():  # incomplete or unreadable: _load_entry said so
            shutil.rmtree(entry, ignore_errors=True)
        tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with pa.OSFile(str(tmp / "rows.arrow"), "wb") as sink, pa.ipc.new_stream(sink, _schema()) as writer:
                conv = _Converter(source, vocab_size, require_response, writer.write_batch)
                conv.run()
            if conv.structural.count:  # a broken file is not cached (the run's own checks come after caching)
                conv.problems.raise_if_any()
            with open(tmp / "index.npz", "wb") as f:
                np.savez(f, **conv.index_arrays())
            meta = _meta(source, identity, conv.stats)
            meta["rows_arrow_bytes"] = (tmp / "rows.arrow").stat().st_size
            meta["rows_arrow_xxh3_128"] = _checksum(tmp / "rows.arrow")
            for file in ("rows.arrow", "index.npz"):
                _fsync(tmp / file)
            with open(tmp / "meta.json", "w") as f:
                json.dump(meta, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.rename(tmp, entry)
            except OSError:
                if not (entry / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process (no working lock here) published it first
            _fsync(entry.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("Cached the converted rollouts of %s at %s.", source.path, entry)

    @classmethod
    def _load_entry(cls, source, entry: Path, identity: str) -> RolloutStore | None:
        """The store of a complete cache entry, or ``None`` (absent, torn, or of another version)."""
        import pyarrow as pa

        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            rows_path = entry / "rows.arrow"
            if meta.get("identity") != identity or rows_path.stat().st_size != meta["rows_arrow_bytes"]:
                raise ValueError("does not match its meta.json")
            mapped = pa.memory_map(str(rows_path), "r")
            if _checksum(mapped) != meta["rows_arrow_xxh3_128"]:  # a same-size change (a bad disk, an edit)
                raise ValueError("rows.arrow does not match the checksum recorded when it was converted")
            table = pa.ipc.open_stream(mapped).read_all()
            if table.num_rows != meta["rows"]:
                raise ValueError(f"holds {table.num_rows} rows, meta.json says {meta['rows']}")
            with np.load(entry / "index.npz") as npz:
                index = {k: npz[k] for k in npz.files}
        except Exception as exc:  # a cache is never worth a failed run: convert again
            logger.warning("Ignoring the unreadable rollout cache %s (%s); converting again.", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        store = cls(source, table, index, meta)
        store.cache_path = entry
        logger.info("Loaded %s rollouts of %s from the cache %s.", f"{meta['rows']:,}", source.path, entry)
        return store

    def check(self, vocab_size: int | None, require_response: bool) -> None:
        """Apply the run's checks to a cached table: from the stored token-id range and response count when they
        settle it, else by a vectorised pass that names every offending ``file:line``."""
        m = self.meta
        ids_ok = vocab_size is None or m["min_id"] is None or (m["min_id"] >= 0 and m["max_id"] < vocab_size)
        if ids_ok and not (require_response and m["rows_without_response"]):
            return
        problems = ProblemList(self.path)
        progress = Progress(f"Checking rollouts {self.path}", self.table.num_rows, "rows")
        lines = self.table.column("line")
        done = 0
        for batch in self.table.to_batches():
            batch_lines = lines.slice(done, batch.num_rows).to_numpy()
            for r, problem in option_problems(batch, vocab_size, require_response):
                problems.add(f"{self.source.where(int(batch_lines[r]))}: {problem}")
            done += batch.num_rows
            progress.update(done)
        problems.raise_if_any()

    # ------------------------------------------------------------------ reading
    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def has_keys(self, kind: str) -> bool:
        return len(self._index[f"{kind}_hi"]) > 0

    def lookup(self, kind: str, key: str) -> np.ndarray:
        """The rows (file order) whose key of ``kind`` is ``key``; empty when none."""
        hi, lo = _digest(key)
        his = self._index[f"{kind}_hi"]
        i = int(np.searchsorted(his, np.uint64(hi)))
        los = self._index[f"{kind}_lo"]
        while i < len(his) and his[i] == hi:  # a 64-bit collision is all but impossible; still, compare 128 bits
            if los[i] == lo:
                start, count = self._index[f"{kind}_start"][i], self._index[f"{kind}_count"][i]
                return self._index[f"{kind}_rows"][start : start + count]
            i += 1
        return self._index[f"{kind}_rows"][:0]

    def _locate(self, row: int) -> tuple[int, int]:
        chunk = int(np.searchsorted(self._chunk_starts, row, side="right")) - 1
        return chunk, row - int(self._chunk_starts[chunk])

    def _list(self, name: str, chunk: int, local: int) -> np.ndarray | None:
        offsets, values, nulls = self._cols[name][chunk]
        if nulls is not None and nulls[local]:
            return None
        return values[offsets[local] : offsets[local + 1]]

    def read(self, rows: Iterable[int], fields: tuple[str, ...]) -> list[dict[str, Any]]:
        """Python objects of just ``rows``: ``response_ids`` / ``prompt_ids`` (lists of ints, ``None`` when not
        stored), ``small_model_log_probs`` (floats, NaN for unscored tokens; ``None`` when not stored),
        ``response`` (text or ``None``)."""
        rows = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64)
        chunks = np.searchsorted(self._chunk_starts, rows, side="right") - 1
        locals_ = rows - self._chunk_starts[chunks]
        out = []
        with _gc_paused():
            for chunk, local in zip(chunks.tolist(), locals_.tolist()):
                item = {}
                for name in fields:
                    if name == "response":
                        item[name] = self._responses[chunk][local].as_py()
                    else:
                        values = self._list(name, chunk, local)
                        item[name] = None if values is None else values.tolist()
                out.append(item)
        self.rows_read += len(out)
        return out

    def longest_responses(self, eos_token_ids: Iterable[int]) -> tuple[int, int, int]:
        """``(L, rows, unfinished)``: the longest stored response's length in tokens, how many rows have that length,
        and how many of those do not end in one of ``eos_token_ids``. Unfinished rows that are all exactly L long,
        with none longer, are what a sampler capped at L tokens leaves. Vectorised over the offsets."""
        eos = np.asarray(sorted(set(eos_token_ids)), dtype=np.int64)
        longest, at_longest, unfinished = 0, 0, 0
        for offsets, values, nulls in self._cols["response_ids"]:
            lengths = np.diff(offsets)
            if nulls is not None:
                lengths = np.where(nulls, 0, lengths)
            if not lengths.size or lengths.max() < longest:
                continue
            top = int(lengths.max())
            if top > longest:
                longest, at_longest, unfinished = top, 0, 0
            rows = np.flatnonzero(lengths == top)
            if top == 0:
                at_longest += rows.size
                continue
            last = values[offsets[rows + 1] - 1]
            at_longest += rows.size
            unfinished += int(np.count_nonzero(~np.isin(last, eos)))
        return longest, at_longest, unfinished

    def last_response_id(self, row: int) -> int | None:
        """The last stored response token id of ``row`` (``None`` for an empty completion)."""
        chunk, local = self._locate(int(row))
        values = self._list("response_ids", chunk, local)
        return int(values[-1]) if values is not None and len(values) else None

    def close(self) -> None:
        """Drop the table and its views (the memory map closes once nothing refers to it)."""
        self._cols, self._responses, self.table = {}, [], None


def _meta(source: RolloutSource, identity: str | None, stats: _Stats) -> dict[str, Any]:
    return {
        "version": STORE_VERSION,
        "source": str(source.path.resolve()),
        "kind": source.kind,
        "identity": identity,
        "rows": stats.rows,
        "response_tokens": stats.tokens,
        "rows_with_prompt_id": stats.rows_with_prompt_id,
        "rows_without_response": stats.rows_without_response,
        "min_id": stats.min_id,
        "max_id": stats.max_id,
        "rows_with_logprobs": stats.rows_with_logprobs,
        "known_logprobs": stats.known_logprobs,
    }


def _checksum(source) -> str:
    """XXH3-128 of a file (a path) or a memory-mapped Arrow file, read in blocks: ~9 GB/s once in the page cache, so
    the cost of verifying a cache entry is reading it from disk (see scripts/benchmark_offline_store.py)."""
    import xxhash  # a dependency of `datasets`

    h = xxhash.xxh3_128()
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            while block := f.read(_CHECKSUM_BLOCK):
                h.update(block)
    else:
        source.seek(0)
        while block := source.read_buffer(_CHECKSUM_BLOCK):
            if not block.size:
                break
            h.update(memoryview(block))
        source.seek(0)
    return h.hexdigest()


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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so that a published entry survives a machine crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _try_lock(lock) -> bool:
    """Take ``lock`` at once when free; otherwise say who we wait for and return ``False``."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        Progress.emit(f"Waiting for another process to finish converting the rollouts (lock {lock.lock_file}).")
        return False


def _prune_other_versions(cache_dir: Path, source: RolloutSource, keep: str) -> None:
    """Remove the cache entries of earlier versions of the same source file: one entry per file, not one per edit."""
    resolved = str(source.path.resolve())
    for meta_path in cache_dir.glob("*/meta.json"):
        entry = meta_path.parent
        if entry.name == keep:
            continue
        try:
            if json.loads(meta_path.read_text()).get("source") == resolved:
                shutil.rmtree(entry, ignore_errors=True)
                logger.info("Removed the stale rollout cache %s (its source changed).", entry)
        except (OSError, ValueError):
            continue
