"""JSON-lines reading and writing shared by every reader of user files (errors name the file and the line) and every
writer of outputs (append and flush whole lines)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .preflight import InputError

try:  # a C JSON parser ~7x faster than `json` on long lines of numbers; optional (see `loads_jsonl_line_fast`)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

_UTF8_BOM = b"\xef\xbb\xbf"


def loads_jsonl_line(raw: bytes, where: str, error: type[Exception] = InputError) -> dict[str, Any]:
    """Parse one JSONL line (bytes, as read from the file) into an object; ``where`` (``<file>:<line>``) starts the
    message of ``error`` when the line is not UTF-8, not JSON, or not a JSON object."""
    raw = raw.rstrip(b"\r\n")  # json would call the end of line an "invalid control character" in a cut string
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{where}: the file is not UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line "
            f"({exc.reason}). JSON lines must be UTF-8: re-save the file as UTF-8 "
            "(e.g. `iconv -f <its encoding> -t UTF-8`)."
        ) from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: malformed JSON line ({exc.msg}).") from exc
    if not isinstance(row, dict):
        raise error(f"{where}: expected a JSON object, got {type(row).__name__}.")
    return row


def loads_jsonl_line_fast(raw: bytes, where: str, error: type[Exception] = InputError) -> dict[str, Any]:
    """:func:`loads_jsonl_line` through ``orjson`` when it is installed, for readers of very large files.

    Whatever ``orjson`` refuses (``NaN``, lone surrogates, bad bytes, bad JSON) goes through ``json``, so the result
    and the messages are ``json``'s. One difference is left to the caller: ``orjson`` reads an integer beyond 64
    bits as a float; re-parse with :func:`loads_jsonl_line` where such a value would matter.
    """
    if _orjson is not None:
        try:
            row = _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # json accepts more (NaN, Infinity, lone surrogates) and words the errors the project's way
        else:
            if isinstance(row, dict):
                return row
    return loads_jsonl_line(raw, where, error)


def iter_jsonl(path: str | Path, error: type[Exception] = InputError) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line; a line that is not UTF-8, not JSON or not an object
    raises ``error`` with ``<file>:<line>`` in its message. A UTF-8 byte-order mark at the start is skipped."""
    path = Path(path)
    # Bytes, decoded line by line: a text-mode reader fails on a bad byte with a bare UnicodeDecodeError, no line.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM) :]
            if not raw.strip():
                continue
            yield lineno, loads_jsonl_line(raw, f"{path}:{lineno}", error)


def read_jsonl(path: str | Path, error: type[Exception] = InputError) -> list[dict[str, Any]]:
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
