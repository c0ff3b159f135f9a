"""The server explorer's logger, shared by every module of this package, and what makes its progress lines seen.

Why a module of its own: start-up waits, rounds and dropped servers are reported from several modules, and a user (or
a test) who turns these lines up or down does it on one logger, ``s2l_trl.explorers.server``, the name they had when
the explorer was one module.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__package__)


class _FallbackHandler(logging.StreamHandler):
    """Prints this package's records (stderr) only while nothing else would: no handler on the loggers above it, as in
    a script that never configured logging. Once a handler exists above (``s2l-train`` puts one on the root logger,
    a user's ``logging.basicConfig`` too), that one prints them and this one stays silent: no line twice."""

    def emit(self, record: logging.LogRecord) -> None:
        parent = logger.parent if logger.propagate else None
        while parent is not None:
            if parent.handlers:
                return
            parent = parent.parent if parent.propagate else None
        super().emit(record)


_fallback = _FallbackHandler()
_fallback.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
logger.addHandler(_fallback)


def show_progress_logs(target: logging.Logger = logger) -> None:
    """Let ``target``'s progress lines (INFO) through unless someone chose a level for it or a logger above it below
    the root: Python's default (root at WARNING) would drop them, and TRL / Transformers set only their own loggers'
    levels. An explicit ``logging.getLogger("s2l_trl").setLevel(...)`` still wins."""
    node: logging.Logger | None = target
    while node is not None and node is not logging.root:
        if node.level != logging.NOTSET:
            return
        node = node.parent
    target.setLevel(logging.INFO)
