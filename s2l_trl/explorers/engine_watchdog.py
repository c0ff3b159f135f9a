"""A watchdog that stops an in-process vLLM engine's processes when the process that started them dies.

vLLM runs its engine core (and its workers) in child processes. When the training process is killed (SIGKILL,
SIGTERM's default action, an OOM kill, a crashed node agent) nothing of its own runs any more, so those children
are re-parented and keep running, holding their share of the GPU. A thread cannot help (it dies with its process),
and a parent-death signal would have to be set inside vLLM's child; so a small process of its own watches instead:

* started by :class:`EngineWatchdog` *before* the engine is built, in a session of its own (a signal to the
  trainer's process group does not reach it);
* while the engine is being built it notes the processes the trainer starts (so a kill during the engine's start-up
  is covered too); once built, the trainer tells it the engine's exact processes (PID and start time, so a reused PID
  is never mistaken for them);
* it polls ``os.getppid()``: when the trainer is gone it sends SIGTERM to those processes and their children, waits
  ``grace`` seconds, then SIGKILLs what is left, and exits; it exits quietly when told the engine was closed, or when
  the engine's processes are all gone.

This file runs as a script (``python engine_watchdog.py --parent PID``) and imports nothing of `s2l_trl`, so it starts
in a fraction of a second; the trainer talks to it over its stdin (lines ``watch PID:START ...`` and ``stop``).
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time
from typing import Any


class EngineWatchdog:
    """The trainer's side: start the watchdog, tell it the engine's processes, stop it when the engine is closed."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    @classmethod
    def start(cls, poll_s: float = 0.2, grace_s: float = 10.0) -> EngineWatchdog:
        """Start watching this process (the engine is built next: the processes it already has are not the
        engine's)."""
        import psutil

        existing = ",".join(str(p.pid) for p in psutil.Process().children()) or "none"
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--parent", str(os.getpid()), "--existing", existing]
            + ["--poll", str(poll_s), "--grace", str(grace_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # outside the trainer's process group: a group kill must not take it along
            text=True,
        )
        return cls(process)

    def watch(self, pids: list[int]) -> None:
        """The engine is built: watch exactly these processes (and their children) from now on."""
        import psutil

        entries = []
        for pid in pids:
            try:
                entries.append(f"{pid}:{psutil.Process(pid).create_time()!r}")
            except psutil.NoSuchProcess:
                pass
        self._send(f"watch {' '.join(entries)}")

    def stop(self) -> None:
        """The engine was closed (or never started): the watchdog exits without touching anything."""
        if self.process.poll() is None:
            self._send("stop")
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()

    def _send(self, line: str) -> None:
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):  # the watchdog is gone already
            pass


# ---------------------------------------------------------------------- the watchdog process
def _parse(entry: str) -> Any:
    import psutil

    pid, _, start = entry.partition(":")
    try:
        process = psutil.Process(int(pid))
        return process if abs(process.create_time() - float(start)) < 1e-3 else None
    except (psutil.NoSuchProcess, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--existing", default="none", help="the parent's children before the engine (not its own)")
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args(argv)
    me = os.getpid()
    before = {int(pid) for pid in args.existing.split(",") if pid.isdigit()}
    try:
        parent = psutil.Process(args.parent)
    except psutil.NoSuchProcess:
        parent = None
    seen: dict[int, Any] = {}  # processes the trainer started while its engine was being built
    watched: list[Any] | None = None  # the engine's processes, once the trainer has said
    stdin_open = True
    while os.getppid() == args.parent:
        if watched is None and parent is not None:
            try:
                for child in parent.children():
                    if child.pid not in before and child.pid != me:
                        seen.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                break
        if watched is not None and not any(p.is_running() for p in watched):
            return 0  # the engine is gone (closed without a word): nothing left to guard
        if not stdin_open:
            time.sleep(args.poll)
            continue
        ready, _, _ = select.select([sys.stdin], [], [], args.poll)
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:  # the trainer closed its end
            stdin_open = False
        elif line.startswith("stop"):
            return 0
        elif line.startswith("watch"):
            watched = [p for p in map(_parse, line.split()[1:]) if p is not None]
    # The trainer is gone: stop its engine.
    targets = list(watched if watched is not None else seen.values())
    for process in list(targets):
        try:
            targets += process.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    targets = [p for p in {p.pid: p for p in targets}.values() if p.is_running()]
    if not targets:
        return 0
    try:
        print(
            f"s2l-trl: training process {args.parent} is gone; stopping its vLLM explorer engine "
            f"(PIDs {', '.join(str(p.pid) for p in targets)}).",
            file=sys.stderr,
            flush=True,
        )
    except (BrokenPipeError, OSError):  # its stderr was the trainer's, now closed
        pass
    for process in targets:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(targets, timeout=args.grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
