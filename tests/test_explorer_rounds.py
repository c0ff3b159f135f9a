"""`ExplorerRounds` without a trainer: requests, prefetch, collect, drops, checkpoints, threads."""

from __future__ import annotations

import contextlib
import math
import threading
import time

import pytest

from s2l_trl.explorers import ExplorerError, ExplorerOutput
from s2l_trl.explorers.rounds import ExplorerRequest, ExplorerRounds, Lookahead


class CountingExplorer:
    """Answers row `k` of prompt `p` with `[p[0], call, k]`; its state is the call counter (like a seeded backend)."""

    def __init__(self, runs_in_background: bool = True):
        self.runs_in_background = runs_in_background
        self.calls = 0
        self.log: list[tuple[int, tuple, str, bool]] = []  # (call, prompts, thread name, daemon)

    def generate(self, prompt_ids, n, inputs=None):
        call, self.calls = self.calls, self.calls + 1
        thread = threading.current_thread()
        self.log.append((call, tuple(tuple(p) for p in prompt_ids), thread.name, thread.daemon))
        ids = [[p[0], call, k] for p in prompt_ids for k in range(n)]
        return ExplorerOutput(completion_ids=ids, logprobs=[[-1.0] * 3 for _ in ids])

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def req(round_, groups, n=2, first_token=None):
    tokens = first_token if first_token is not None else [100 + g for g in groups]
    return ExplorerRequest(
        round=round_, groups=tuple(groups), prompt_ids=tuple((t, 1) for t in tokens), n=n, inputs=({},) * len(groups)
    )


def test_collect_returns_the_wanted_slots_of_each_group():
    explorer = CountingExplorer()
    rounds = ExplorerRounds(explorer)
    r = req(0, [5, 7], n=3)
    rounds.request(r)
    got = rounds.collect(r, [(7, 0), (5, 2), (7, 2)])
    # Prompt-major answers: slot s of the group at request position k is row k * n + s.
    assert got.rows == {
        (7, 0): ([107, 0, 0], [-1.0] * 3),
        (5, 2): ([105, 0, 2], [-1.0] * 3),
        (7, 2): ([107, 0, 2], [-1.0] * 3),
    }
    assert got.tokens == 6 * 3 and got.latency_s >= 0 and got.wait_s >= 0
    with pytest.raises(RuntimeError, match="without its request"):
        rounds.collect(r, [])


def test_background_explorers_run_in_a_daemon_thread_and_foreground_ones_in_the_callers_context():
    background = CountingExplorer()
    rounds = ExplorerRounds(background)
    rounds.request(req(3, [0]))
    rounds.collect(req(3, [0]), [(0, 0)])
    # A daemon thread: an interrupted run exits without waiting for a slow request.
    assert background.log[0][2:] == ("s2l-explorer_3", True)

    entered = []

    @contextlib.contextmanager
    def seeded(round_index):
        entered.append(round_index)
        yield

    foreground = CountingExplorer(runs_in_background=False)
    rounds = ExplorerRounds(foreground, foreground=seeded)
    assert not rounds.prefetch_enabled
    rounds.request(req(4, [0]))
    assert foreground.log == []  # nothing runs before collect: the learner generates first
    rounds.collect(req(4, [0]), [(0, 0)])
    assert entered == [4] and foreground.log[0][2] == threading.current_thread().name


def test_a_prefetched_call_is_reused_once_and_never_repeated():
    explorer = CountingExplorer()
    rounds = ExplorerRounds(explorer)
    rounds.prefetch(req(1, [2, 3]))
    rounds.prefetch(req(1, [2, 3]))  # already in flight: not started again
    rounds.request(req(1, [2, 3]))
    got = rounds.collect(req(1, [2, 3]), [(3, 1)])
    assert got.rows[(3, 1)][0] == [103, 0, 1]
    assert explorer.calls == 1


def test_a_mismatched_prefetch_is_dropped_and_its_draws_undone():
    explorer = CountingExplorer()
    rounds = ExplorerRounds(explorer)
    rounds.prefetch(req(1, [2, 3]))
    with_right_rows = req(1, [4, 5])
    rounds.request(with_right_rows)
    got = rounds.collect(with_right_rows, [(4, 0), (5, 1)])
    # The round's own call starts from the state the dropped one started from: call index 0, not 1.
    assert got.rows[(4, 0)][0] == [104, 0, 0] and got.rows[(5, 1)][0] == [105, 0, 1]
    assert [entry[1] for entry in explorer.log][-1] == ((104, 1), (105, 1))


class BlockingExplorer(CountingExplorer):
    """Blocks in `generate` until released; `cancel()` releases it at once (as a cancellable server would)."""

    def __init__(self, cancellable: bool):
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()
        if cancellable:
            self.cancel = self.release.set

    def generate(self, prompt_ids, n, inputs=None):
        if not self.log:  # only the first call blocks
            self.calls += 1
            self.log.append((0, tuple(tuple(p) for p in prompt_ids), "", True))
            self.started.set()
            if not self.release.wait(30):
                raise TimeoutError("never released")
            raise RuntimeError("cancelled")
        return super().generate(prompt_ids, n, inputs)


def test_a_dropped_prefetch_is_cancelled_not_waited_for():
    explorer = BlockingExplorer(cancellable=True)
    rounds = ExplorerRounds(explorer)
    rounds.prefetch(req(1, [2]))
    assert explorer.started.wait(10)
    start = time.perf_counter()
    rounds.request(req(1, [9]))
    got = rounds.collect(req(1, [9]), [(9, 0)])
    assert time.perf_counter() - start < 5  # the blocked call would have held it for 30 s
    assert got.rows[(9, 0)][0] == [109, 0, 0]  # and its draws were undone


class LateCancelExplorer(CountingExplorer):
    """Like `LocalExplorer` and `ServerExplorer`: `generate` clears its cancel flag when it starts and then checks it at
    every step. The cancel of a dropped prefetch lands in between (the worker thread has started, `generate` has not
    cleared the flag yet): this explorer's `cancel()` lets its `generate` go on only once the flag is set."""

    def __init__(self):
        super().__init__()
        self.cancelled = threading.Event()
        self.cancel_landed = threading.Event()
        self.started = threading.Event()
        self.outcome = None

    def cancel(self):
        self.cancelled.set()
        self.cancel_landed.set()

    def generate(self, prompt_ids, n, inputs=None):
        if self.log:
            return super().generate(prompt_ids, n, inputs)
        self.calls += 1
        self.log.append((0, tuple(tuple(p) for p in prompt_ids), "", True))
        self.started.set()
        assert self.cancel_landed.wait(10)
        self.cancelled.clear()  # what `generate` does first: a cancel that landed before it is lost ...
        if self.cancelled.wait(10):  # ... unless it is made again while the call runs (10 s: a whole call)
            self.outcome = "cancelled"
            raise RuntimeError("cancelled")
        self.outcome = "ran to the end"
        return ExplorerOutput(completion_ids=[[0]] * (len(prompt_ids) * n))


def test_a_cancel_landing_before_the_call_clears_its_flag_is_not_lost():
    explorer = LateCancelExplorer()
    rounds = ExplorerRounds(explorer)
    rounds.prefetch(req(1, [2]))
    assert explorer.started.wait(10)
    start = time.perf_counter()
    rounds.request(req(1, [9]))  # other prompts: the prefetch is dropped and cancelled
    took = time.perf_counter() - start
    assert explorer.outcome == "cancelled" and took < 5, (explorer.outcome, took)
    got = rounds.collect(req(1, [9]), [(9, 0)])
    assert got.rows[(9, 0)][0] == [109, 0, 0]  # the round's own call starts from the undone state


def test_checkpoint_state_is_the_one_before_the_pending_round():
    explorer = CountingExplorer()
    rounds = ExplorerRounds(explorer)
    for r in range(3):
        rounds.request(req(r, [0]))
        rounds.collect(req(r, [0]), [(0, 0)])
    rounds.prefetch(req(3, [0]))
    rounds.request(req(3, [0]))
    rounds.collect(req(3, [0]), [(0, 0)])
    # A checkpoint inside round 3 (regenerated on resume) stores the state before its call; one after it, the current.
    assert rounds.state_dict(3) == {"calls": 3}
    assert rounds.state_dict(4) == {"calls": 4}
    fresh = CountingExplorer()
    resumed = ExplorerRounds(fresh)
    resumed.load_state_dict(rounds.state_dict(3))
    resumed.request(req(3, [0]))
    assert resumed.collect(req(3, [0]), [(0, 1)]).rows[(0, 1)][0] == [100, 3, 1]
    assert ExplorerRounds(object.__new__(Stateless)).state_dict(0) is None


class Stateless:
    def generate(self, prompt_ids, n, inputs=None):
        return ExplorerOutput([[1]] * (len(prompt_ids) * n))


def test_lookahead_peeks_without_changing_the_order():
    rounds = ExplorerRounds(CountingExplorer())
    source = iter(range(10))
    look = rounds.watch(source)
    assert isinstance(look, Lookahead) and rounds.watch(source) is look
    look.next_micro_step = 4  # the next item handed out is micro-step 4
    assert rounds.peek(6) == 2 and rounds.peek(4) == 0 and rounds.peek(3) is None
    assert [next(look) for _ in range(4)] == [0, 1, 2, 3]
    assert rounds.peek(100) is None  # past the end of the epoch
    assert list(look) == [4, 5, 6, 7, 8, 9]


def test_close_cancels_in_flight_calls():
    explorer = BlockingExplorer(cancellable=True)
    closed = []
    explorer.close = lambda: closed.append(True)
    rounds = ExplorerRounds(explorer)
    rounds.prefetch(req(1, [2]))
    assert explorer.started.wait(10)
    rounds.close()
    assert explorer.release.is_set() and closed == [True]


def test_checkpoint_file_round_trip(tmp_path, caplog):
    from s2l_trl.explorers.rounds import STATE_NAME

    explorer = CountingExplorer()
    rounds = ExplorerRounds(explorer)
    for r in range(2):
        rounds.request(req(r, [0]))
        rounds.collect(req(r, [0]), [(0, 0)])
    rounds.save(tmp_path, global_step=4, pending_round=1)  # inside round 1: its state before, not the current one
    assert (tmp_path / STATE_NAME).exists()
    fresh = CountingExplorer()
    ExplorerRounds(fresh).restore(tmp_path)
    assert fresh.calls == 1
    with caplog.at_level("WARNING"):
        ExplorerRounds(CountingExplorer()).restore(tmp_path / "elsewhere")
    assert "explorer draws after the resume differ" in caplog.text


class FixedExplorer:
    """Answers every row with three tokens and the given log-probs (a user's own explorer object)."""

    def __init__(self, logprobs):
        self.logprobs = logprobs

    def generate(self, prompt_ids, n, inputs=None):
        ids = [[7, 8, 9] for _ in range(len(prompt_ids) * n)]
        return ExplorerOutput(ids, None if self.logprobs is None else [list(self.logprobs) for _ in ids])


@pytest.mark.parametrize(
    "logprobs, shown",
    [
        ([-0.1, -0.2], "2 log-probs for the 3 tokens of completion 0"),
        ([-0.1, -0.2, -0.3, -0.4], "4 log-probs for the 3 tokens of completion 0"),
        ([0.5, 0.9, 0.2], r"lie in \[0, 1\], as probabilities do"),
        ([-0.1, float("-inf"), -0.2], "infinite"),
        ([-0.1, 2.5, -0.2], "above 0"),
    ],
    ids=["short", "long", "probabilities", "-inf", "positive"],
)
def test_a_custom_explorers_impossible_log_probs_fail_the_round_naming_it(logprobs, shown):
    rounds = ExplorerRounds(FixedExplorer(logprobs))
    r = req(0, [1], n=2)
    rounds.request(r)
    with pytest.raises(ExplorerError, match=shown) as info:
        rounds.collect(r, [(1, 0)])
    assert "The explorer FixedExplorer returned" in str(info.value)


def test_unknown_log_probs_and_rounding_above_zero_are_accepted():
    rounds = ExplorerRounds(FixedExplorer([float("nan"), -0.1, 5e-4]))
    r = req(0, [1], n=2)
    rounds.request(r)
    ids, lps = rounds.collect(r, [(1, 1)]).rows[(1, 1)]
    assert ids == [7, 8, 9] and math.isnan(lps[0]) and lps[1:] == [-0.1, 5e-4]


@pytest.mark.parametrize("logprobs", [None, [float("nan")] * 3], ids=["none", "all-nan"])
def test_a_round_without_log_probs_fails_when_a_weight_needs_them(logprobs):
    needed = "explorer_importance_sampling='token_truncate'"
    rounds = ExplorerRounds(FixedExplorer(logprobs), logprobs_needed_by=needed)
    r = req(3, [1, 2], n=2)
    rounds.request(r)
    with pytest.raises(ExplorerError) as info:
        rounds.collect(r, [(1, 0)])
    message = str(info.value)
    assert message.startswith(needed) and "FixedExplorer returned none in round 3 (4 completions" in message
    assert "explorer_importance_sampling='none' and explorer_off_policy_mask=False" in message
    # Nothing weighs them: the round goes on (rows without log-probs).
    plain = ExplorerRounds(FixedExplorer(logprobs))
    plain.request(r)
    assert plain.collect(r, [(1, 0)]).rows[(1, 0)][0] == [7, 8, 9]
    # One known value in the round is enough (rows of unknown tokens are weight 1 by design).
    partial = ExplorerRounds(FixedExplorer([float("nan"), float("nan"), -0.3]), logprobs_needed_by=needed)
    partial.request(r)
    partial.collect(r, [(1, 0)])
