"""The rollout store: validated rollouts in a memory-mapped Arrow table with a prompt-key index, opened in memory
or through the cache, checked against the run's options, and read one round at a time.

Why a module of its own: this is what :class:`~s2l_trl.explorers.offline.OfflineExplorer` holds; it puts the other
modules' parts together (a source, its conversion, a cache entry, the index) and turns just the rows a round draws
into Python objects.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..base import ExplorerError
from .cache import _checksum, _fsync, _meta, _prune_other_versions, _safe, _try_lock, default_cache_dir
from .conversion import _Converter, _gc_paused, _schema, option_problems
from .index import find_rows
from .progress import Progress, logger
from .rows import ProblemList
from .sources import RolloutSource

# Files below this size are converted in memory at every start (well under a second) instead of being cached.
CACHE_MIN_BYTES = 32 * 2**20


class RolloutStore:
    """Validated rollouts in a memory-mapped Arrow table with a prompt-key index (see the package docstring).

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
        return find_rows(self._index, kind, key)

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
