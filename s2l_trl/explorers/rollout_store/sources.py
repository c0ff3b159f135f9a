"""A rollout file or folder (JSONL, parquet, a `datasets` ``save_to_disk`` folder): what it is, its identity, and
its rows streamed in batches in file order.

Why a module of its own: how a source is read (raw JSONL lines parsed fast, then exactly where that matters; Arrow
batches for the others) and how a row is named in a message (``file:line`` or ``file (row n)``) are the same for the
small-file reader, the conversion and the run's checks on a cached table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...jsonl import loads_jsonl_line, loads_jsonl_line_fast
from ...preflight import MissingPathError
from ..base import ExplorerError
from .cache import STORE_VERSION
from .progress import Progress
from .rows import ProblemList, validate_rollout

# JSON text read per conversion batch: bounds the Python objects alive at once (~90 bytes per token).
_BATCH_BYTES = 16 * 2**20
_BATCH_ROWS = 1024  # rows per batch for parquet / `save_to_disk` sources
_HEAD_TAIL_BYTES = 2**20  # hashed from each end of a file for its identity


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
