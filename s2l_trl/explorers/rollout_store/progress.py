"""The rollout store's logger, and the progress lines of a long pass over rollouts (conversion, validation, checks).

Why a module of its own: every part of the package reports on one logger, ``s2l_trl.explorers.rollout_store``, the
name it had when the store was one module, and a conversion of tens of GB must show it moves whether or not the user
configured logging.
"""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger(__package__)

# Seconds between two progress lines of a long conversion / validation.
PROGRESS_INTERVAL_S = 10.0


class Progress:
    """A progress line about every :data:`PROGRESS_INTERVAL_S` seconds of a long pass over rollouts.

    Lines go to this package's logger (``s2l_trl.explorers.rollout_store``) at INFO when that level is enabled
    (``logging.basicConfig(level="INFO")``); otherwise to stderr, as `datasets` shows its progress bars, so that a user
    who configured no logging (the Python API, or ``s2l-train`` at its default log level) still sees a long conversion
    move. ``datasets``' switch (``HF_DATASETS_DISABLE_PROGRESS_BARS=1`` / ``datasets.disable_progress_bars()``)
    silences the stderr lines.
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
