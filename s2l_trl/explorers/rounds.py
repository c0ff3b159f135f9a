"""Explorer rows across generation rounds: requesting, prefetching, collecting and checkpointing them.

One `ExplorerRounds` object per trainer process owns everything about *when* an explorer is called; the trainer says
*what* to ask for (an `ExplorerRequest` per round) and receives the rows it holds (`CollectedRows`). Every process
asks its own explorer for the groups whose explorer slots it holds, so no answer is funnelled through one process
and nothing is broadcast: at paper scale a round is ~16k completions of up to 4k tokens, which one process would
otherwise parse and pickle for all.

Rules that keep runs reproducible:

* every process calls its explorer exactly once per mixed round (with no prompts when it holds no explorer slot),
  so explorers that count their calls (seeded draws per call: offline, server) stay aligned across processes;
* the explorer's `state_dict()` is remembered before each round's call; a checkpoint stores the one of the round a
  resumed run regenerates first, and a dropped prefetch is undone with it;
* explorers that sample with torch's global generator (`runs_in_background = False`) run in the foreground, inside a
  context the trainer supplies (S2L-PO: a forked generator seeded per round), never in a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jsonl import write_json_atomic
from ..preflight import InputError
from .base import GROUP_FIELD, Explorer, ExplorerError, ExplorerOutput, generate_checked

logger = logging.getLogger(__name__)

Row = tuple[list[int], "list[float] | None"]
# How often the cancel of a dropped call is made again until the call ends (see `ExplorerRounds._drop`).
_CANCEL_REPEAT_S = 0.05
# Written into every checkpoint folder: what a resumed run needs of the explorer beyond TRL's own state.
STATE_NAME = "s2l_state.json"


@dataclass(frozen=True)
class ExplorerRequest:
    """What one process asks its explorer for in one round: `n` rows for each of `groups`.

    Attributes:
        round: 0-based generation round.
        groups: global indices of the groups, in request order (one prompt each).
        prompt_ids: the groups' prompts in the explorer's tokens.
        n: rows per group (`G_w`).
        inputs: per group, the data-set fields an explorer may need to look its rows up (offline rollouts).
    """

    round: int
    groups: tuple[int, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    n: int
    inputs: tuple[dict[str, Any], ...] = ()

    def same_rows_as(self, other: ExplorerRequest) -> bool:
        """Whether `other` asks for exactly the rows this request asks for (a prefetch is reusable)."""
        return (self.round, self.groups, self.n, self.prompt_ids) == (
            other.round,
            other.groups,
            other.n,
            other.prompt_ids,
        )


@dataclass
class CollectedRows:
    """A round's explorer rows on this process, by `(global group, slot)`, and what producing them cost."""

    rows: dict[tuple[int, int], Row] = field(default_factory=dict)
    latency_s: float = 0.0  # wall time of the explorer's work
    wait_s: float = 0.0  # time the trainer blocked on it
    tokens: int = 0  # tokens of every row the explorer returned (some may serve another process's slots)
    failed_requests: int = 0  # explorer requests retried or resent (server backend)


@dataclass
class _Call:
    request: ExplorerRequest
    future: Future | None  # None: generated in the foreground at collect time


class Lookahead:
    """Wraps Transformers' epoch iterator so that generation batches can be peeked at before they are handed out.

    Items come out in the same order; `peek(k)` reads ahead without consuming. `next_micro_step` is the TRL
    micro-step of the next item handed out, set by the trainer after each pull.
    """

    def __init__(self, source: Iterator[Any]):
        self.source = source
        self.buffer: list[Any] = []
        self.next_micro_step = 0

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self) -> Any:
        return self.buffer.pop(0) if self.buffer else next(self.source)

    def peek(self, offset: int) -> Any:
        """The item `offset` places after the next one, or `None` when the epoch ends first."""
        while len(self.buffer) <= offset:
            try:
                self.buffer.append(next(self.source))
            except StopIteration:
                return None
        return self.buffer[offset]


class ExplorerRounds:
    """Requests, prefetches and collects one explorer's rows round by round, and checkpoints its random state.

    Args:
        explorer: the backend (see `Explorer`).
        prefetch: allow `prefetch` (ignored for foreground explorers and for explorers that sleep between calls,
            `sleeps_between_calls = True`: a prefetch would call them while the learner trains).
        foreground: `round -> context manager` wrapping a foreground explorer's call (default: none).
        logprobs_needed_by: the run's option that weighs explorer tokens with their sampling log-probs (e.g.
            `"explorer_importance_sampling='token_truncate'"`): a round whose explorer answer carries none (no
            log-probs, or NaN only) is then an error naming it, instead of a round whose weights are silently all 1.

    The trainer calls, per mixed round: `request(req)` before the learner generates, `collect(req, wanted)` after;
    optionally `prefetch(next_req)` once the round is scored; `state_dict(round)` when it saves a checkpoint and
    `load_state_dict(state)` when it resumes; `close()` at the end.
    """

    def __init__(
        self,
        explorer: Explorer,
        prefetch: bool = True,
        foreground: Callable[[int], contextlib.AbstractContextManager] | None = None,
        logprobs_needed_by: str | None = None,
    ):
        self.explorer = explorer
        self.logprobs_needed_by = logprobs_needed_by
        self.background = bool(getattr(explorer, "runs_in_background", True))
        # An explorer whose engine sleeps between calls (to leave its memory to training) must not be called while
        # the learner trains, which is when a prefetch runs.
        sleeps = bool(getattr(explorer, "sleeps_between_calls", False))
        if prefetch and self.background and sleeps:
            logger.info(
                "Explorer prefetch is off: the explorer's engine sleeps between calls (sleep mode), and a prefetch "
                "would wake it while the learner trains."
            )
        self.prefetch_enabled = prefetch and self.background and not sleeps
        self.foreground = foreground or (lambda _round: contextlib.nullcontext())
        self.lookahead: Lookahead | None = None
        self._calls: dict[int, _Call] = {}  # started (or planned) calls by round; at most the current and the next
        self._state_before: dict[int, Any] = {}  # explorer state before each pending round's call

    # ------------------------------------------------------------------ the epoch iterator
    def watch(self, epoch_iterator: Iterator[Any]) -> Lookahead:
        """The iterator Transformers should pull generation batches from (the same items, peekable)."""
        if self.lookahead is None or self.lookahead.source is not epoch_iterator:
            self.lookahead = Lookahead(epoch_iterator)
        return self.lookahead

    def peek(self, micro_step: int) -> Any:
        """The generation batch TRL will receive at `micro_step`, or `None` when it is unknown or past the epoch."""
        if self.lookahead is None:
            return None
        offset = micro_step - self.lookahead.next_micro_step
        return self.lookahead.peek(offset) if offset >= 0 else None

    # ------------------------------------------------------------------ one round
    def request(self, request: ExplorerRequest) -> None:
        """Start (or reuse the prefetched) call for `request.round`; a prefetch for other rows is dropped."""
        call = self._calls.pop(request.round, None)
        if call is not None and call.request.same_rows_as(request):
            self._calls[request.round] = call
            return
        if call is not None:
            logger.warning(
                "The prefetched explorer rows of round %d are for other prompts than the round's; dropping them.",
                request.round,
            )
            self._drop(call)
        self._start(request)

    def prefetch(self, request: ExplorerRequest) -> None:
        """Start the call of a later round while the learner trains on the current one (background explorers)."""
        if self.prefetch_enabled and request.round not in self._calls:
            self._start(request)

    def collect(self, request: ExplorerRequest, wanted: list[tuple[int, int]]) -> CollectedRows:
        """Wait for `request.round`'s rows and return the `wanted` `(group, slot)` ones (explorer answers are
        prompt-major: slot `s` of the group requested at position `k` is row `k * n + s`)."""
        call = self._calls.pop(request.round, None)
        if call is None or not call.request.same_rows_as(request):
            raise RuntimeError(f"collect() of round {request.round} without its request().")
        waited = time.perf_counter()
        if call.future is None:
            with self.foreground(request.round):
                output, latency = _timed_generate(self.explorer, request)
        else:
            output, latency = call.future.result()
        if self.logprobs_needed_by and output.completion_ids and not _has_logprobs(output):
            raise ExplorerError(
                f"{self.logprobs_needed_by} weighs explorer tokens with the explorer's sampling log-probs, but "
                f"{type(self.explorer).__name__} returned none in round {request.round} "
                f"({len(output.completion_ids)} completions, log-probs "
                f"{'None' if output.logprobs is None else 'all NaN'}): return them in ExplorerOutput.logprobs (one "
                "per completion token), or set explorer_importance_sampling='none' and explorer_off_policy_mask=False."
            )
        collected = CollectedRows(
            latency_s=latency,
            wait_s=time.perf_counter() - waited,
            tokens=sum(len(ids) for ids in output.completion_ids),
            failed_requests=getattr(output.stats, "failed_requests", 0) if output.stats is not None else 0,
        )
        position = {group: k for k, group in enumerate(request.groups)}
        for group, slot in wanted:
            if not 0 <= slot < request.n:
                raise ValueError(f"slot {slot} is not an explorer slot (G_w = {request.n}).")
            r = position[group] * request.n + slot
            logps = None if output.logprobs is None else output.logprobs[r]
            collected.rows[(group, slot)] = (output.completion_ids[r], logps)
        return collected

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, pending_round: int) -> Any:
        """The explorer's random state before the call of `pending_round` (the round a resumed run generates first),
        or its current state when that round has not been requested yet; `None` for stateless explorers."""
        state_fn = getattr(self.explorer, "state_dict", None)
        if not callable(state_fn):
            return None
        return self._state_before[pending_round] if pending_round in self._state_before else state_fn()

    def load_state_dict(self, state: Any) -> None:
        load_fn = getattr(self.explorer, "load_state_dict", None)
        if state is not None and callable(load_fn):
            load_fn(state)

    def save(self, checkpoint: str | os.PathLike, global_step: int, pending_round: int) -> None:
        """Write `STATE_NAME` into a checkpoint folder: the explorer's state before `pending_round`, the round a run
        resumed from this checkpoint generates first (so that it redraws the explorer rows the uninterrupted run
        drew)."""
        state = {
            "global_step": global_step,
            "next_round": pending_round,
            "explorer": type(self.explorer).__name__,  # whose state it is: another backend cannot continue it
            "explorer_state": self.state_dict(pending_round),
        }
        write_json_atomic(Path(checkpoint) / STATE_NAME, state)

    def restore(self, checkpoint: str | os.PathLike) -> None:
        """Load the explorer state `save` wrote into `checkpoint`. A checkpoint without one, or with the state of
        another explorer backend (a run resumed with another `explorer_mode`), is resumed with fresh explorer draws
        and a warning; a file that does not parse is an error naming it."""
        path = Path(checkpoint) / STATE_NAME
        if not path.exists():
            logger.warning(
                "%s has no %s: explorer draws after the resume differ from the original run.", checkpoint, STATE_NAME
            )
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError(f"expected a JSON object, got {type(saved).__name__}")
        except ValueError as exc:
            raise InputError(
                f"{path} does not load ({type(exc).__name__}: {exc}): the checkpoint's explorer state is damaged; "
                "resume from an earlier checkpoint, or delete the file to resume with fresh explorer draws."
            ) from exc
        state, backend, current = saved.get("explorer_state"), saved.get("explorer"), type(self.explorer).__name__
        if backend is not None and backend != current:
            reason = f"{path} holds the explorer state of {backend}, not of this run's {current}"
        else:
            try:
                self.load_state_dict(state)
                return
            except (KeyError, TypeError, ValueError) as exc:  # another backend's state, in a file that does not say
                reason = f"{path} holds an explorer state {current} cannot continue ({type(exc).__name__}: {exc})"
        logger.warning("%s (resumed with another explorer): dropped, explorer draws start afresh.", reason)

    def close(self) -> None:
        """Cancel what is in flight (explorers with `cancel()` stop at once) and close the explorer."""
        for call in self._calls.values():
            if call.future is not None and not call.future.cancel():
                _cancel(self.explorer)
        self._calls.clear()
        close_fn = getattr(self.explorer, "close", None)
        if callable(close_fn):
            close_fn()

    # ------------------------------------------------------------------ internals
    def _start(self, request: ExplorerRequest) -> None:
        state_fn = getattr(self.explorer, "state_dict", None)
        if callable(state_fn):
            self._state_before = {k: v for k, v in self._state_before.items() if k >= request.round - 1}
            self._state_before[request.round] = state_fn()
        future = None
        if self.background:
            future = _run_in_daemon_thread(f"s2l-explorer_{request.round}", _timed_generate, self.explorer, request)
        self._calls[request.round] = _Call(request, future)

    def _drop(self, call: _Call) -> None:
        """Forget a started call, then undo its draws so that the round's own call draws what it would have."""
        if call.future is not None and not call.future.cancel():
            # Already running: an explorer that can cancel stops at once; one that cannot is waited for, since it
            # advances the random state the round's own call must start from. Explorers clear their cancel flag when
            # a call starts, so a cancel landing after the worker thread started but before that is lost: it is made
            # again until the call ends (harmless once it has: the next call clears it, and starts only after this).
            can_cancel = callable(getattr(self.explorer, "cancel", None))
            while True:
                _cancel(self.explorer)
                with contextlib.suppress(Exception, CancelledError):
                    call.future.result(timeout=_CANCEL_REPEAT_S if can_cancel else None)
                if call.future.done():
                    break
        self.load_state_dict(self._state_before.get(call.request.round))


def _has_logprobs(output: ExplorerOutput) -> bool:
    """Whether any completion carries a known (non-NaN) log-prob; stops at the first, so a normal answer costs one
    value."""
    return output.logprobs is not None and any(v == v for lps in output.logprobs if lps for v in lps)


def _cancel(explorer: Explorer) -> None:
    cancel_fn = getattr(explorer, "cancel", None)
    if callable(cancel_fn):
        cancel_fn()


def _timed_generate(explorer: Explorer, request: ExplorerRequest) -> tuple[ExplorerOutput, float]:
    start = time.perf_counter()
    prompt_ids = [list(p) for p in request.prompt_ids]
    # Each prompt's group index in the round rides along (`GROUP_FIELD`), for backends that draw per group.
    inputs = [{**fields, GROUP_FIELD: group} for fields, group in zip(request.inputs, request.groups)]
    output = generate_checked(explorer, prompt_ids, request.n, inputs=inputs)
    return output, time.perf_counter() - start


def _run_in_daemon_thread(name: str, fn: Callable[..., Any], *args: Any) -> Future:
    """`fn(*args)` in a daemon thread: an interrupted run exits without waiting for an explorer request to finish
    (a `ThreadPoolExecutor`'s workers are joined at interpreter exit)."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # re-raised by `future.result()` in the trainer's thread
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


__all__ = ["CollectedRows", "ExplorerRequest", "ExplorerRounds", "Lookahead"]
