"""JSON-lines reading shared by every reader of user files: errors name the file and the line."""

from __future__ import annotations

import json
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
