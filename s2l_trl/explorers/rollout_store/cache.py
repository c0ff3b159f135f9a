"""Cache entries on disk: where they live, what their ``meta.json`` records, the checksum that vouches for
``rows.arrow``, the lock two processes converting one file share, and the pruning of entries of earlier versions.

Why a module of its own: these are the file-system rules that make an entry safe to memory-map (written completely
or not at all, verified when opened, one per source file); :class:`~.store.RolloutStore` applies them in order.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .progress import Progress, logger

if TYPE_CHECKING:
    from .conversion import _Stats
    from .sources import RolloutSource

# Bump when the cache layout or what conversion checks changes: entries of another version are converted again.
STORE_VERSION = 2
_CHECKSUM_BLOCK = 64 * 2**20  # bytes hashed per update when checksumming rows.arrow


def default_cache_dir() -> Path:
    """``$HF_DATASETS_CACHE/s2l_rollouts`` (``~/.cache/huggingface/datasets/s2l_rollouts`` by default)."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "s2l_rollouts"


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
