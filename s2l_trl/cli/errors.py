"""How every s2l-* command ends on bad input: one line on stderr naming the problem, exit status 2, no traceback.

`--debug` on the command line (or `S2L_DEBUG=1` in the environment) re-raises instead, with the full traceback. The
Python API raises the same exceptions (`s2l_trl.preflight.InputError` and friends) as they are.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from ..explorers.base import ExplorerError

# What bad input or a bad environment raises: configuration and data checks (ValueError, InputError), missing or
# unwritable paths and a full disk (OSError), an explorer that cannot serve (ExplorerError), a missing extra.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ExplorerError, ImportError)

T = TypeVar("T")


def debug_requested(argv: list[str]) -> bool:
    """Whether the traceback was asked for (`--debug` in `argv`, which is removed from it, or `S2L_DEBUG=1`)."""
    flag = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    return flag or os.environ.get("S2L_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def run_cli(prog: str, main: Callable[[list[str]], T], argv: list[str] | None = None) -> T:
    """Run `main(argv)` (argv defaults to the command line) as command `prog`: bad input ends the process with one
    line `prog: error: <message>` and exit status 2; Ctrl-C with `prog: interrupted` and status 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except INPUT_ERRORS as exc:
        if debug:
            raise
        print(f"{prog}: error:{_rank()} {_one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _rank() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f" [rank {os.environ.get('RANK', '0')}]" if world > 1 else ""


def _one_line(exc: Any) -> str:
    return str(exc).strip() or type(exc).__name__
