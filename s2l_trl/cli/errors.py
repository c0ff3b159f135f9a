"""How every s2l-* command ends on bad input: one line on stderr naming the problem, exit status 2, no traceback.

Bad input is what the project reports as such: `s2l_trl.preflight.InputError` and its kin (a missing path, a full
disk), an explorer that cannot serve (`ExplorerError`), and anything raised while the command line and its YAML
are parsed into the argument dataclasses (argparse, and the configs' own validation in `__post_init__`: they only
read what the user gave). Any other exception, above all one raised once training runs, is a crash: its traceback
is printed and the exit status is 1, so that a bug is never passed off as a user error.

`--debug` on the command line (or `S2L_DEBUG=1` in the environment) re-raises bad input too, with the full
traceback. The Python API raises the same exceptions as they are.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from trl import TrlParser

from ..explorers.base import ExplorerError
from ..preflight import DiskFullError, InputError

# What the project raises for bad input or an environment it cannot use, with a message that says what to do.
INPUT_ERRORS: tuple[type[BaseException], ...] = (InputError, ExplorerError, DiskFullError)
# The functions of `TrlParser` / `HfArgumentParser` that turn the command line and YAML into dataclasses (running
# their `__post_init__` validation): an exception raised inside them comes from the user's arguments.
_PARSING_FUNCTIONS = frozenset(
    {"parse_args_and_config", "parse_args_into_dataclasses", "parse_dict", "parse_yaml_file", "parse_json_file"}
)

T = TypeVar("T")


class CliParser(TrlParser):
    """`TrlParser` whose usage errors (an unknown flag, ``max_steps: abc`` in a YAML recipe) are one line, not the
    usage of several hundred options followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def debug_requested(argv: list[str]) -> bool:
    """Whether the traceback was asked for (`--debug` in `argv`, which is removed from it, or `S2L_DEBUG=1`)."""
    flag = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    return flag or os.environ.get("S2L_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def is_input_error(exc: BaseException) -> bool:
    """Whether `exc` is bad input (see the module docstring) rather than a crash."""
    if isinstance(exc, INPUT_ERRORS):
        return True
    return isinstance(exc, Exception) and any(
        frame.f_code.co_name in _PARSING_FUNCTIONS for frame, _ in traceback.walk_tb(exc.__traceback__)
    )


def run_cli(prog: str, main: Callable[[list[str]], T], argv: list[str] | None = None) -> T:
    """Run `main(argv)` (argv defaults to the command line) as command `prog`: bad input ends the process with one
    line `prog: error: <message>` and exit status 2; Ctrl-C with `prog: interrupted` and status 130; anything else
    propagates (traceback, status 1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception as exc:
        if debug or not is_input_error(exc):
            raise
        print(f"{prog}: error:{_rank()} {_one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _rank() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f" [rank {os.environ.get('RANK', '0')}]" if world > 1 else ""


def _one_line(exc: Any) -> str:
    return str(exc).strip() or type(exc).__name__
