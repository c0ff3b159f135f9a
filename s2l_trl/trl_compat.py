"""The TRL releases s2l-trl is tested against, and a warning outside them.

`S2LTrainer` overrides private seams of `GRPOTrainer` (`_generate_and_score_completions`, `_generate_single_turn`,
`_calculate_rewards`, `_compute_loss`, `_prepare_inputs`, `_save_checkpoint`, `_load_optimizer_and_scheduler`) and
reads a few attributes of TRL's vLLM generation object. `tests/test_trl_seams.py` checks their signatures against the
installed TRL; CI runs the trainer tests on the newest and the oldest release of this range.
"""

from __future__ import annotations

import logging

from packaging.version import Version

logger = logging.getLogger(__name__)

# Inclusive lower bound, exclusive upper bound: the minor releases CI runs (keep in sync with pyproject.toml).
TESTED_TRL = (Version("1.15.0"), Version("1.17.0"))


def trl_version() -> Version:
    import trl

    return Version(trl.__version__)


def is_tested_trl(version: Version | None = None) -> bool:
    """Whether ``version`` (default: the installed TRL) lies in the tested range."""
    version = trl_version() if version is None else version
    return TESTED_TRL[0] <= version < TESTED_TRL[1]


def warn_if_untested_trl() -> None:
    """Log a warning once when the installed TRL is outside the tested range (the seams may have moved)."""
    global _warned
    if _warned or is_tested_trl():
        return
    _warned = True
    logger.warning(
        "s2l-trl is tested with trl >= %s, < %s; found trl %s. S2LTrainer overrides private GRPOTrainer methods, "
        "so check tests/test_trl_seams.py against this release.",
        TESTED_TRL[0],
        TESTED_TRL[1],
        trl_version(),
    )


_warned = False
