"""The prompt-key index of a rollout table: each row's lookup keys, hashed to 128 bits, sorted with the rows that
hold them, and looked up by binary search.

Why a module of its own: the index is what the main process keeps of a paper-scale file (a few bytes per row, the
rows themselves stay memory-mapped), and how rows are found for a data-set prompt (by ``prompt_id``, whole prompt,
plain-prompt text, last user turn) is decided here, once for conversion and lookup.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any

import numpy as np

from .rows import prompt_key, prompt_text_key

KEY_ID, KEY_PROMPT, KEY_TEXT, KEY_USER = "prompt_id", "prompt", "text", "user"
_KEY_KINDS = (KEY_ID, KEY_PROMPT, KEY_TEXT, KEY_USER)


def _digest(text: str) -> tuple[int, int]:
    d = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def row_keys(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``(kind, key)`` lookup keys of one valid row: its whole prompt, its ``prompt_id`` when stored, the text of a
    plain-string prompt, and the last user turn of every prompt."""
    prompt = row["prompt"]
    keys = [(KEY_PROMPT, prompt_key(prompt))]
    if row.get("prompt_id") is not None:
        keys.append((KEY_ID, str(row["prompt_id"])))
    if isinstance(prompt, str):
        keys.append((KEY_TEXT, prompt_text_key(prompt)))
    keys.append((KEY_USER, prompt_text_key(prompt)))  # tells an edited problem from another template
    return keys


def new_keys() -> dict[str, tuple[array, array, array]]:
    """Per key kind, growing arrays of the keys' hashes (high and low 64 bits) and of their rows."""
    return {kind: (array("Q"), array("Q"), array("q")) for kind in _KEY_KINDS}


def sorted_index(keys: dict[str, tuple[array, array, array]]) -> dict[str, np.ndarray]:
    """Per key kind of ``keys`` (:func:`new_keys`): sorted unique hashes (``hi``, ``lo``), each one's ``start`` /
    ``count`` in ``rows``."""
    out = {}
    for kind, (his, los, idx) in keys.items():
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


def find_rows(index: dict[str, np.ndarray], kind: str, key: str) -> np.ndarray:
    """The rows (file order) of ``index`` (:func:`sorted_index`) whose key of ``kind`` is ``key``; empty when none."""
    hi, lo = _digest(key)
    his = index[f"{kind}_hi"]
    i = int(np.searchsorted(his, np.uint64(hi)))
    los = index[f"{kind}_lo"]
    while i < len(his) and his[i] == hi:  # a 64-bit collision is all but impossible; still, compare 128 bits
        if los[i] == lo:
            start, count = index[f"{kind}_start"][i], index[f"{kind}_count"][i]
            return index[f"{kind}_rows"][start : start + count]
        i += 1
    return index[f"{kind}_rows"][:0]
