"""A hung explorer server fails a round in seconds-to-minutes, not request_timeout x (1 + retries) (issue 26): its
vLLM token counters stop moving while it holds requests. Fake vLLM servers (in-process threads) stand in for it."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from s2l_trl.devtools.fake_server import FakeServer
from s2l_trl.explorers import ExplorerError, SamplingSettings, ServerExplorer
from s2l_trl.explorers.server.servers import poll_token_counters

SAMPLING = SamplingSettings(max_tokens=8, seed=0)
# Request time-out and retries alone would hold the hung round for 5 + 1 + 5 s: the stall check must beat that.
SLOW = dict(request_timeout=5.0, max_retries=1, backoff_factor=1.0, log_interval_s=30.0)


def _explorer(urls, stall_timeout):
    return ServerExplorer(urls, SAMPLING, stall_timeout=stall_timeout, prompts_per_request=1, **SLOW)


def test_a_hung_server_fails_the_call_with_an_error_that_names_it():
    with FakeServer(mean_tokens=6, vocab_size=64) as server:
        explorer = _explorer(server.base_url, stall_timeout=1.0)
        try:
            assert len(explorer.generate([[1, 2, 3]], 2).completion_ids) == 2  # a live server: fine
            server.latency_s = 20.0  # from now on every generation request hangs (its tokens were counted at once)
            start = time.monotonic()
            with pytest.raises(ExplorerError) as info:
                explorer.generate([[1, 2, 3], [4, 5]], 2)
            elapsed = time.monotonic() - start
        finally:
            explorer.close()
    message = str(info.value)
    assert f"The explorer server at {server.base_url} made no progress for " in message
    assert "vllm:generation_tokens_total and vllm:prompt_tokens_total stayed at" in message
    assert "looks hung" in message and "raise explorer_stall_timeout" in message
    assert elapsed < 4.0, elapsed


def test_a_hung_server_is_dropped_and_the_round_finishes_on_the_others(caplog):
    with FakeServer(mean_tokens=6, vocab_size=64) as hung, FakeServer(mean_tokens=6, vocab_size=64) as live:
        explorer = _explorer([hung.base_url, live.base_url], stall_timeout=1.0)
        hung.latency_s = 20.0
        try:
            with caplog.at_level(logging.WARNING, logger="s2l_trl.explorers.server"):
                start = time.monotonic()
                out = explorer.generate([[1, 2], [3, 4], [5, 6], [7, 8]], 2)
                elapsed = time.monotonic() - start
            alive = [s.alive for s in explorer.servers]
        finally:
            explorer.close()
    assert len(out.completion_ids) == 8 and all(out.completion_ids)
    assert alive == [False, True]
    assert f"Explorer server {hung.base_url} dropped after it made no progress" in caplog.text
    assert elapsed < 4.0, elapsed


def test_a_slow_server_that_makes_progress_is_not_hung():
    """Long requests are fine as long as the counters move: here a request takes 2.5 s, twice the stall time-out,
    while another client's requests keep the server's token counter moving."""
    with FakeServer(mean_tokens=6, vocab_size=64) as server:
        explorer = _explorer(server.base_url, stall_timeout=1.2)
        server.latency_s = 2.5
        busy = True

        def other_client():
            while busy:
                with server._lock:
                    server.generated_tokens += 10  # what another client's generation does to the counter
                time.sleep(0.2)

        thread = threading.Thread(target=other_client, daemon=True)
        thread.start()
        try:
            assert len(explorer.generate([[1, 2, 3]], 2).completion_ids) == 2
        finally:
            busy = False
            thread.join()
            explorer.close()


def test_the_stall_check_can_be_turned_off():
    with FakeServer(mean_tokens=6, vocab_size=64) as server:
        explorer = _explorer(server.base_url, stall_timeout=0)
        server.latency_s = 1.5
        try:
            assert len(explorer.generate([[1, 2, 3]], 2).completion_ids) == 2
        finally:
            explorer.close()


@pytest.mark.server
def test_a_real_vllm_server_exposes_the_counters_the_stall_check_reads(explorer_server):
    """The premise of the check: `trl vllm-serve` (vLLM's own server) has both token counters, and they move with
    a request's work."""
    explorer = ServerExplorer(explorer_server.base_url, SAMPLING, stall_timeout=180, log_interval_s=30.0)
    try:
        server = explorer.servers[0]
        assert server.has_counters and server.work_counter is not None
        before = server.work_counter
        explorer.generate([[1, 2, 3]], 2)
        explorer._transport.run(poll_token_counters(explorer._transport, server))
        assert server.work_counter > before
    finally:
        explorer.close()
