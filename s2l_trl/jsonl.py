"""JSON-lines reading and writing shared by every reader of user files (errors name the file and the line) and every
writer of outputs (append and flush whole lines)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line; a malformed line or a non-object raises ``error``
    with ``<file>:<line>`` in its message."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: malformed JSON line ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}.")
            yield lineno, row


def read_jsonl(path: str | Path, error: type[Exception] = ValueError) -> list[dict[str, Any]]:
    """All objects of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, error)]


def drop_torn_tail(path: str | Path) -> bool:
    """Cut a last line that a killed writer left without its newline; return whether one was cut.

    Appending writers flush whole lines, so anything after the last newline is a half-written record.
    """
    path = Path(path)
    data = path.read_bytes()
    complete_end = data.rfind(b"\n") + 1
    if complete_end == len(data):
        return False
    with path.open("r+b") as f:
        f.truncate(complete_end)
    return True


class JsonlWriter:
    """Appends JSON objects to a JSONL file, one line each, flushing after every :meth:`write` call.

    The one writer of the project's JSONL outputs (evaluation raw files, `s2l-sample` rollouts): records written by
    one call reach the file together, so a killed run leaves whole lines plus at most one torn last line, which
    :func:`drop_torn_tail` removes before a resumed run appends again. Use it as a context manager::

        with JsonlWriter(path) as out:
            out.write(record)            # one object
            out.write(rec_a, rec_b)      # several objects, flushed together

    Args:
        path: the file; its parent folder must exist.
        mode: ``"a"`` (default) appends; ``"w"`` starts the file afresh.
    """

    def __init__(self, path: str | Path, mode: str = "a"):
        if mode not in ("a", "w"):
            raise ValueError(f"mode must be 'a' or 'w', got {mode!r}.")
        self.path = Path(path)
        self._file = self.path.open(mode, encoding="utf-8")

    def write(self, *records: dict[str, Any]) -> None:
        """Write ``records`` as lines and flush them to the operating system."""
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl_atomic(path: str | Path, records) -> Path:
    """Write ``records`` to ``path`` through a temporary file renamed over it: readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with JsonlWriter(tmp, mode="w") as out:
            for record in records:
                out.write(record)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, payload: Any, indent: int | None = 2) -> Path:
    """Write one JSON document through a synced temporary file renamed over ``path``: a crash leaves the old file or
    the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(payload, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path
