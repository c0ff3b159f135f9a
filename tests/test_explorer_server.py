"""ServerExplorer: URL checks before any work, bounded start-up (non-vLLM URL, closed port, dead servers among live
ones, progress lines), the identity and log-probs checks, seeded draws that chunking / concurrency / retries do not
change, chunked generation over one or several servers with retries, cancellation, Ctrl-C and progress output.

Real-server tests run against the session's CPU `trl vllm-serve` (marker `server`), often behind fault-injecting
proxies; the others use the fake server (`s2l_trl.devtools.fake_server`), which answers at once.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from s2l_trl.devtools.fake_server import FakeServer
from s2l_trl.devtools.fault_proxy import FaultProxy
from s2l_trl.devtools.vllm_server import VLLMServerProcess, free_port
from s2l_trl.explorers import ExplorerError, SamplingSettings, ServerExplorer
from s2l_trl.explorers.server import ExplorerCancelled, classify_logprobs, parse_server_urls

REPO = Path(__file__).resolve().parents[1]
SAMPLING = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=6)  # unseeded: one HTTP request per chunk
SEEDED = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=6, seed=0)  # one HTTP request per prompt
FAST = {"progress": False, "backoff_factor": 0.05, "request_timeout": 60.0, "startup_timeout": 30.0}
QUICK = {k: v for k, v in FAST.items() if k not in ("startup_timeout", "progress")}


@pytest.fixture(scope="module")
def explorer_tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["explorer"])


@pytest.fixture(scope="module")
def foreign_tok(tmp_path_factory):
    """A tokenizer with another vocabulary (what a different explorer model would use)."""
    from s2l_trl.devtools.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("foreign") / "tok"
    build_tokenizer(path, vocab_size=400, seed=7)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture
def fake(explorer_tok):
    # server_info: its log-probs mode is read from /server_info, so no probe request reaches a proxy in front of it
    with FakeServer(explorer_tok, mean_tokens=5, pool_size=256, server_info=True) as server:
        yield server


def _prompts(tok, count: int) -> list[list[int]]:
    return [tok(f"What is {i} + {2 * i}?", add_special_tokens=False)["input_ids"] for i in range(count)]


# ---------------------------------------------------------------------------------------------------- URLs
def test_server_urls_are_normalised():
    assert parse_server_urls("http://127.0.0.1:8001/") == ["http://127.0.0.1:8001"]
    assert parse_server_urls(" http://node1:8001 , https://node-2.example.org:443/") == [
        "http://node1:8001",
        "https://node-2.example.org:443",
    ]
    assert parse_server_urls(["http://[::1]:8001", "http://localhost"]) == ["http://[::1]:8001", "http://localhost"]


@pytest.mark.parametrize(
    ("value", "shown", "problem"),
    [
        ("htp:/bad host", "'htp:/bad host'", "contains whitespace; it has no scheme"),
        ("127.0.0.1:8001", "'127.0.0.1:8001'", "no scheme (http:// or https://)"),
        ("http://a:8001,,http://b:8001", "'' (item 2 of 3 in 'http://a:8001,,http://b:8001')", "it is empty"),
        ("http://a:8001,", "'' (item 2 of 2 in 'http://a:8001,')", "it is empty (a stray comma?)"),
        ("", "explorer_server_base_url is empty", "give the explorer server's URL"),
        ("   ", "explorer_server_base_url is empty", "give the explorer server's URL"),
        ("http://bad host:8001", "'http://bad host:8001'", "contains whitespace"),
        ("http://host:99999", "'http://host:99999'", "Port out of range"),
        ("http://host:8001/v1", "'http://host:8001/v1'", "it has a path ('/v1')"),
        ("ftp://host:21", "'ftp://host:21'", "its scheme is 'ftp'"),
        ("http://b@d!:80", "'http://b@d!:80'", "is not a valid host name"),
    ],
)
def test_malformed_server_urls_are_refused_naming_option_value_and_fix(value, shown, problem):
    with pytest.raises(ValueError) as info:
        parse_server_urls(value)
    message = str(info.value)
    assert message.startswith("explorer_server_base_url") and shown in message and problem in message
    assert "e.g. http://127.0.0.1:8001" in message  # the fix
    with pytest.raises(ValueError, match="'http://a:1' appears twice in 'http://a:1,http://a:1/'; give each"):
        parse_server_urls("http://a:1,http://a:1/")


def test_a_url_without_scheme_gets_a_suggestion():
    with pytest.raises(ValueError, match=r"Did you mean 'http://node1:8001'\?"):
        parse_server_urls("node1:8001")


@pytest.mark.timeout(30)
def test_a_malformed_url_fails_before_any_server_is_contacted():
    with FaultProxy(None, answers={"/health": (200, "")}) as good:
        start = time.monotonic()
        with pytest.raises(ValueError, match="base_url: 'htp:/bad host'"):
            ServerExplorer(f"{good.base_url},htp:/bad host", startup_timeout=30)
        assert time.monotonic() - start < 1 and good.requests_seen == []


def test_the_config_checks_the_urls(tmp_path):
    from s2l_trl import S2LConfig

    base = {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "report_to": "none"}
    with pytest.raises(ValueError, match=r"explorer_server_base_url: '127.0.0.1:8001' is not a server URL"):
        S2LConfig(**base, explorer_server_base_url="127.0.0.1:8001")
    S2LConfig(**base, explorer_server_base_url="http://node1:8001,http://node2:8001")
    # Only server mode reads it.
    (tmp_path / "r.jsonl").touch()
    S2LConfig(**base, explorer_mode="offline", explorer_rollouts=str(tmp_path / "r.jsonl"), explorer_server_base_url="")


# ---------------------------------------------------------------------------------------------------- start-up
@pytest.mark.timeout(60)
def test_url_that_is_not_vllm_fails_fast_naming_what_it_answered():
    # TRL's start-up poll retries a non-200 /health forever; this must fail at once, well inside the time-out.
    with FaultProxy(None) as stub:
        start = time.monotonic()
        with pytest.raises(ExplorerError) as info:
            ServerExplorer(stub.base_url, startup_timeout=30)
        assert time.monotonic() - start < 5
    message = str(info.value)
    assert stub.base_url in message and "HTTP 404" in message and "Not Found" in message
    assert "not a vLLM server" in message


@pytest.mark.timeout(60)
def test_unhealthy_server_fails_within_the_startup_timeout():
    with FaultProxy(None, answers={"/health": (503, "engine dead")}) as stub:
        start = time.monotonic()
        with pytest.raises(ExplorerError) as info:
            ServerExplorer(stub.base_url, startup_timeout=2)
        assert time.monotonic() - start < 6
    assert stub.base_url in str(info.value) and "HTTP 503" in str(info.value) and "engine dead" in str(info.value)


@pytest.mark.timeout(60)
def test_healthy_url_without_models_endpoint_is_not_a_vllm_server():
    with FaultProxy(None, answers={"/health": (200, "")}) as stub, pytest.raises(ExplorerError) as info:
        ServerExplorer(stub.base_url, startup_timeout=5)
    message = str(info.value)
    assert stub.base_url in message and "/v1/models" in message and "HTTP 404" in message


@pytest.mark.timeout(60)
def test_closed_port_says_nothing_answered():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ExplorerError) as info:
        ServerExplorer(url, startup_timeout=2)
    assert time.monotonic() - start < 6
    message = str(info.value)
    assert url in message and "nothing answered (connection refused)" in message and "within 2 s" in message
    assert "answered /health" not in message


@pytest.mark.timeout(60)
def test_a_dead_server_among_live_ones_is_left_out_with_a_warning(fake, explorer_tok, caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    unhealthy = FaultProxy(None, answers={"/health": (503, "loading")}).start()
    try:
        with caplog.at_level(logging.INFO, logger="s2l_trl.explorers.server"):
            explorer = ServerExplorer(
                [dead, fake.base_url, unhealthy.base_url], SEEDED, startup_timeout=2.5, log_interval_s=1.0, **QUICK
            )
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2
        assert dead in warnings[0] and "connection refused" in warnings[0] and fake.base_url in warnings[0]
        assert unhealthy.base_url in warnings[1] and "HTTP 503" in warnings[1] and "loading" in warnings[1]
        # The wait said every second which servers it was waiting for, and why.
        waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Explorer start-up")]
        assert waits and all("1 of 3 server(s) healthy" in w for w in waits)
        assert dead in waits[0] and "connection refused" in waits[0] and "HTTP 503" in waits[0]
        assert explorer.base_url == fake.base_url and explorer.base_urls == [dead, fake.base_url, unhealthy.base_url]
        out = explorer.generate(_prompts(explorer_tok, 3), 2)
        assert len(out.completion_ids) == 6 and out.stats.servers == 1
        assert unhealthy.generation_requests == 0
        explorer.close()
    finally:
        unhealthy.stop()


@pytest.mark.timeout(60)
def test_start_up_fails_naming_every_url_when_none_is_healthy():
    a, b = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    with pytest.raises(ExplorerError) as info:
        ServerExplorer([a, b], startup_timeout=1.5)
    assert a in str(info.value) and b in str(info.value) and str(info.value).count("nothing answered") == 2


# ---------------------------------------------------------------------------------------------------- identity
def test_model_names_compare_by_their_last_component():
    from s2l_trl.explorers.server.startup_checks import _model_name

    assert _model_name("Qwen/Qwen3-1.7B-Base") == _model_name("/models/Qwen3-1.7B-Base/") == "qwen3-1.7b-base"
    snapshot = "/root/.cache/huggingface/hub/models--Qwen--Qwen3-1.7B-Base/snapshots/0123abcd"
    assert _model_name(snapshot) == "qwen3-1.7b-base"
    assert _model_name("Qwen/Qwen3-4B-Base") != _model_name("Qwen/Qwen3-1.7B-Base")


@pytest.mark.server
def test_identity_accepts_the_expected_explorer(explorer_server, tiny, explorer_tok):
    explorer = ServerExplorer(
        explorer_server.base_url, SAMPLING, expected_tokenizer=explorer_tok, expected_model=str(tiny["explorer"])
    )
    assert explorer.model == str(tiny["explorer"])


@pytest.mark.server
def test_identity_refuses_a_server_with_another_tokenizer(explorer_server, tiny, foreign_tok):
    with pytest.raises(ExplorerError) as info:
        ServerExplorer(explorer_server.base_url, SAMPLING, expected_tokenizer=foreign_tok)
    message = str(info.value)
    assert explorer_server.base_url in message and str(tiny["explorer"]) in message  # the served model
    assert foreign_tok.name_or_path in message and "tokenizer differs" in message  # the expected one


@pytest.mark.server
def test_identity_refuses_another_model_with_the_same_tokenizer(explorer_server, tiny, explorer_tok):
    # The learner shares the explorer's tokenizer: only the model name tells them apart.
    with pytest.raises(ExplorerError) as info:
        ServerExplorer(
            explorer_server.base_url, SAMPLING, expected_tokenizer=explorer_tok, expected_model=str(tiny["learner"])
        )
    assert str(tiny["explorer"]) in str(info.value) and str(tiny["learner"]) in str(info.value)
    # The same weights under another folder name: the name check can be turned off.
    ServerExplorer(
        explorer_server.base_url,
        SAMPLING,
        expected_tokenizer=explorer_tok,
        expected_model="/elsewhere/copy-of-explorer",
        check_model_name=False,
    )


@pytest.mark.server
def test_identity_check_without_a_tokenize_endpoint(explorer_server, explorer_tok, foreign_tok):
    # Where /tokenize is missing, the prompt ids of a one-token completion are compared instead.
    answers = {"/tokenize": (404, '{"detail":"Not Found"}')}
    with FaultProxy(explorer_server.base_url, answers=answers) as proxy:
        ServerExplorer(proxy.base_url, SAMPLING, expected_tokenizer=explorer_tok)
        with pytest.raises(ExplorerError, match="tokenizer differs"):
            ServerExplorer(proxy.base_url, SAMPLING, expected_tokenizer=foreign_tok)
        assert "POST /tokenize" in proxy.requests_seen and "POST /v1/completions" in proxy.requests_seen


# ---------------------------------------------------------------------------------------------------- log-probs
def test_log_probs_are_classified_from_two_temperatures():
    high = {"a": -1.0, "b": -1.5, "c": -3.0}
    assert classify_logprobs(high, {"a": -0.6, "b": -1.6, "c": -4.6}, 2.0) == "processed_logprobs"
    assert classify_logprobs(high, dict(high), 2.0) == "raw_logprobs"
    assert classify_logprobs({"a": 5.0, "b": 4.5}, {"a": 10.0, "b": 9.0}, 2.0) == "processed_logits"
    assert classify_logprobs({"a": -1.0, "b": -1.0}, {"a": -1.0, "b": -1.0}, 2.0).startswith("unknown")
    assert classify_logprobs(high, {"a": -1.0, "b": -1.75, "c": -4.0}, 2.0).startswith("unknown: log-prob differences")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_info", [False, True], ids=["probe", "server_info"])
@pytest.mark.parametrize("mode", ["processed_logprobs", "raw_logprobs", "raw_logits", "processed_logits"])
def test_log_probs_mode_is_checked_at_start_up(explorer_tok, caplog, mode, server_info):
    with FakeServer(explorer_tok, mean_tokens=4, logprobs_mode=mode, server_info=server_info) as fake:
        how = "GET /server_info" if server_info else "probe: top-5 log-probs"
        if mode == "processed_logprobs":
            explorer = ServerExplorer(fake.base_url, SEEDED, require_processed_logprobs=True, **FAST)
            assert (explorer.servers[0].logprobs_mode, explorer.servers[0].logprobs_mode_source[:21]) == (
                mode,
                how[:21],
            )
            return
        with pytest.raises(ExplorerError) as info:
            ServerExplorer(fake.base_url, SEEDED, require_processed_logprobs=True, **FAST)
        message = str(info.value)
        assert fake.base_url in message and f"are {mode!r}" in message and how in message
        assert "--logprobs-mode processed_logprobs" in message and "explorer_importance_sampling='none'" in message
        # Not needed (no explorer IS): a warning, since s2l/logp_gap reads them.
        with caplog.at_level(logging.WARNING, logger="s2l_trl.explorers.server"):
            explorer = ServerExplorer(fake.base_url, SEEDED, **FAST)
        assert fake.base_url in caplog.text and "s2l/logp_gap" in caplog.text and "--logprobs-mode" in caplog.text
        assert explorer.generate([[5, 6]], 2).logprobs is not None


@pytest.mark.timeout(60)
def test_log_probs_are_not_checked_where_raw_equals_processed(explorer_tok):
    with FakeServer(explorer_tok, logprobs_mode="raw_logprobs") as fake:
        plain = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=4, seed=0)
        ServerExplorer(fake.base_url, plain, require_processed_logprobs=True, **FAST)
        # No two-temperature probe; only the one-token request that checks answers carry log-probs at all.
        assert fake.generation_requests == 1
        fake.generation_requests = 0
        # Nor when no log-probs are asked for at all; then none come back.
        explorer = ServerExplorer(fake.base_url, SEEDED, request_logprobs=False, **FAST)
        assert fake.generation_requests == 0
        assert explorer.generate([[5, 6]], 2).logprobs is None
    with pytest.raises(ValueError, match="needs request_logprobs=True"):
        ServerExplorer("http://127.0.0.1:1", SEEDED, request_logprobs=False, require_processed_logprobs=True)


@pytest.mark.timeout(60)
def test_a_server_answering_without_log_probs_is_refused_when_they_weigh_tokens(explorer_tok):
    with FakeServer(explorer_tok, mean_tokens=4, server_info=True, sampled_logprobs="none") as fake:
        with pytest.raises(ExplorerError) as info:
            ServerExplorer(fake.base_url, SEEDED, require_processed_logprobs=True, **FAST)
        message = str(info.value)
        assert fake.base_url in message and "without log-probs" in message
        assert "explorer_importance_sampling='none'" in message and "explorer_off_policy_mask=False" in message
        assert fake.generation_requests == 1  # refused at start-up, by a one-token probe
        # Nothing weighs them: the explorer goes on, with no log-probs.
        assert ServerExplorer(fake.base_url, SEEDED, **FAST).generate([[5, 6]], 2).logprobs is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "fault, shown",
    [
        ("probabilities", r"lie in \[0, 1\], as probabilities do"),
        ("positive", r"above 0"),
        ("-inf", r"infinite \(or <= -9999"),
        ("short", r"log-probs for \d+ tokens"),
    ],
)
def test_impossible_log_probs_from_a_server_are_refused(explorer_tok, fault, shown):
    with FakeServer(explorer_tok, mean_tokens=5, server_info=True, sampled_logprobs=fault) as fake:
        # Explorer IS asked for: the start-up probe finds them.
        with pytest.raises(ExplorerError, match=shown) as info:
            ServerExplorer(fake.base_url, SEEDED, require_processed_logprobs=True, **FAST)
        assert fake.base_url in str(info.value)
        # Otherwise the first answer that holds them fails the call, naming the server (not silently trained on).
        explorer = ServerExplorer(fake.base_url, SEEDED, **{**FAST, "max_retries": 1})
        with pytest.raises(ExplorerError, match=shown) as info:
            explorer.generate(_prompts(explorer_tok, 2), 3)
        assert fake.base_url in str(info.value)
        explorer.close()


@pytest.mark.timeout(60)
def test_log_probs_within_rounding_of_zero_are_accepted(explorer_tok):
    """float32 / bf16 rounding can put a near-certain token's log-prob a hair above 0 (accepted up to 1e-3)."""
    with FakeServer(explorer_tok, mean_tokens=5, server_info=True) as fake:
        fake._pool_lps = [[5e-4] + lps[1:] for lps in fake._pool_lps]
        explorer = ServerExplorer(fake.base_url, SEEDED, require_processed_logprobs=True, **FAST)
        out = explorer.generate(_prompts(explorer_tok, 2), 3)
        assert all(lps[0] == 5e-4 for lps in out.logprobs if lps)
        explorer.close()


@pytest.mark.timeout(60)
def test_empty_completions_are_warned_about_once_per_call_with_counts(explorer_tok, caplog):
    with FakeServer(explorer_tok, mean_tokens=5, server_info=True, empty_completions=0.5) as fake:
        explorer = ServerExplorer(fake.base_url, SEEDED, **{**FAST, "prompts_per_request": 2})
        with caplog.at_level(logging.WARNING, logger="s2l_trl.explorers.server"):
            out = explorer.generate(_prompts(explorer_tok, 6), 4)
        empty = sum(1 for ids in out.completion_ids if not ids)
        assert 0 < empty < 24
        warnings = [r.getMessage() for r in caplog.records if "came back empty" in r.getMessage()]
        assert len(warnings) == 1 and f"{empty} of 24 completions" in warnings[0] and fake.base_url in warnings[0]
        explorer.close()


@pytest.mark.server
@pytest.mark.timeout(120)
def test_trl_vllm_serve_returns_processed_log_probs(explorer_server):
    explorer = ServerExplorer(explorer_server.base_url, SEEDED, require_processed_logprobs=True, **FAST)
    assert (explorer.servers[0].logprobs_mode, explorer.servers[0].logprobs_mode_source) == (
        "processed_logprobs",
        "GET /server_info",
    )
    # The probe reaches the same verdict on the real server when /server_info is missing (plain `vllm serve`).
    hidden = {"/server_info?config_format=json": (404, '{"detail":"Not Found"}')}
    with FaultProxy(explorer_server.base_url, answers=hidden) as proxy:
        explorer = ServerExplorer(proxy.base_url, SEEDED, require_processed_logprobs=True, **FAST)
    assert explorer.servers[0].logprobs_mode == "processed_logprobs"
    assert explorer.servers[0].logprobs_mode_source.startswith("probe")


@pytest.mark.server
@pytest.mark.slow  # a second real server: ~30 s to start on an idle 2-core machine
@pytest.mark.timeout(400)
def test_plain_vllm_serve_without_the_flag_is_refused(tiny, tmp_path, explorer_server):
    """A real `vllm serve` started without --logprobs-mode (vLLM's default: raw log-probs), as a user would."""
    server = VLLMServerProcess(
        tiny["explorer"], launcher="vllm", logprobs_mode=None, log_path=tmp_path / "raw.log", startup_timeout=300
    )
    assert "--logprobs-mode" not in server.command() and server.command()[2:4] == ["vllm.entrypoints.cli.main", "serve"]
    with server:
        with pytest.raises(ExplorerError) as info:
            ServerExplorer(server.base_url, SEEDED, require_processed_logprobs=True, **FAST)
        message = str(info.value)
        assert server.base_url in message and "'raw_logprobs'" in message and "probe" in message
        assert "--logprobs-mode processed_logprobs" in message
    assert VLLMServerProcess(tiny["explorer"], launcher="vllm").command()[-2:] == [
        "--logprobs-mode",
        "processed_logprobs",
    ]


# ---------------------------------------------------------------------------------------------------- seeds
def test_each_prompt_is_one_request_with_its_own_seed(fake, explorer_tok):
    prompts = _prompts(explorer_tok, 5)
    prompts[3] = prompts[1]  # identical prompts in one call get different seeds, hence independent draws
    with FaultProxy(fake.base_url) as proxy:
        explorer = ServerExplorer(proxy.base_url, SEEDED, prompts_per_request=2, request_logprobs=False, **FAST)
        out = explorer.generate(prompts, 4)
        explorer.generate(prompts, 4)
    assert all(len(r.prompts) == 1 and r.n == 4 for r in proxy.records) and len(proxy.records) == 10
    seeds = {r.seed for r in proxy.records}
    assert seeds == {explorer.prompt_seed(c, i) for c in (0, 1) for i in range(5)} and len(seeds) == 10
    assert out.completion_ids[4:8] != out.completion_ids[12:16]  # prompts 1 and 3 are the same text
    # The seed of a prompt depends on the base seed, the stream (one per training process) and the call.
    other = ServerExplorer(fake.base_url, SamplingSettings(seed=0), seed_stream=1, **FAST)
    assert other.prompt_seed(0, 0) != explorer.prompt_seed(0, 0)
    assert ServerExplorer(fake.base_url, SamplingSettings(seed=0), **FAST).prompt_seed(0, 0) == explorer.prompt_seed(
        0, 0
    )
    assert 0 <= explorer.prompt_seed(0, 0) < 2**62


def test_same_state_same_draws_whatever_the_chunking_concurrency_and_retries(fake, explorer_tok):
    prompts = _prompts(explorer_tok, 9)
    one = ServerExplorer(fake.base_url, SEEDED, prompts_per_request=1, max_concurrent_requests=1, **FAST)
    first, second = one.generate(prompts, 3), one.generate(prompts, 3)
    assert first.completion_ids != second.completion_ids  # the next call draws anew
    with FaultProxy(fake.base_url, fail={2: 500, 5: 503}, drop={7}) as flaky:
        other = ServerExplorer(
            [flaky.base_url, fake.base_url], SEEDED, prompts_per_request=4, max_concurrent_requests=3, **FAST
        )
        again = other.generate(prompts, 3)
    assert again.completion_ids == first.completion_ids and again.logprobs == first.logprobs
    assert again.stats.failed_requests >= 1
    # A saved state repeats the draws of the call after it.
    state = one.state_dict()
    assert state == {"seed": 0, "calls": 2}
    third = one.generate(prompts, 3)
    one.load_state_dict(state)
    assert one.generate(prompts, 3).completion_ids == third.completion_ids
    one.load_state_dict({"seed": 0, "calls": 0})
    assert one.generate(prompts, 3).completion_ids == first.completion_ids


def test_a_retry_resends_only_the_prompts_still_missing(fake, explorer_tok):
    prompts = _prompts(explorer_tok, 8)
    with FaultProxy(fake.base_url, fail={2: 500}) as proxy:
        explorer = ServerExplorer(proxy.base_url, SEEDED, prompts_per_request=4, max_concurrent_requests=1, **FAST)
        out = explorer.generate(prompts, 2)
    failed = proxy.records[1]
    assert failed.status == 500
    sent = [prompts.index(r.prompts[0]) for r in proxy.records]
    assert sorted(sent) == sorted([*range(8), sent[1]])  # every prompt once, the failed one twice
    assert len(out.completion_ids) == 16 and out.stats.failed_requests == 1 and out.stats.requests == 2


@pytest.mark.server
@pytest.mark.timeout(240)
def test_real_server_draws_repeat_whatever_the_chunking(explorer_server, explorer_tok):
    prompts = _prompts(explorer_tok, 12)
    prompts[5] = prompts[2]
    settings = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=24, seed=3)
    serial = ServerExplorer(
        explorer_server.base_url, settings, prompts_per_request=1, max_concurrent_requests=1, **FAST
    )
    a1, a2 = serial.generate(prompts, 4), serial.generate(prompts, 4)
    with FaultProxy(explorer_server.base_url, fail={3: 500}) as flaky:
        batched = ServerExplorer(
            [explorer_server.base_url, flaky.base_url],
            settings,
            prompts_per_request=5,
            max_concurrent_requests=4,
            **FAST,
        )
        b1, b2 = batched.generate(prompts, 4), batched.generate(prompts, 4)
    assert b1.completion_ids == a1.completion_ids and b2.completion_ids == a2.completion_ids
    assert a1.completion_ids != a2.completion_ids
    assert a1.completion_ids[8:12] != a1.completion_ids[20:24]  # prompt 5 repeats prompt 2, not its draws
    serial.load_state_dict({"seed": 3, "calls": 1})
    assert serial.generate(prompts, 4).completion_ids == a2.completion_ids


# ---------------------------------------------------------------------------------------------------- chunking
@pytest.mark.server
@pytest.mark.timeout(120)
def test_chunks_are_reassembled_in_prompt_order(explorer_server, explorer_tok):
    prompts = _prompts(explorer_tok, 7)
    # The first two requests to arrive are held back (long enough for a loaded 2-core machine) so that later ones
    # finish first: concurrent requests can reach the proxy out of dispatch order (CI saw the first chunk arrive
    # second), so holding back only request 1 could miss the first chunk.
    with FaultProxy(explorer_server.base_url, delay={1: 5.0, 2: 5.0}) as proxy:
        explorer = ServerExplorer(
            proxy.base_url, SAMPLING, prompts_per_request=2, max_concurrent_requests=4, **{**FAST, "progress": True}
        )
        out = explorer.generate(prompts, 3)
    records = proxy.records
    assert sorted((r.prompts for r in records), key=lambda ps: prompts.index(ps[0])) == [
        prompts[i : i + 2] for i in range(0, 7, 2)
    ]
    first = next(r for r in records if r.prompts[0] == prompts[0])
    assert first.answered_at > min(r.answered_at for r in records)  # later chunks came back before the first
    assert all(r.delivered and r.n == 3 and r.seed is None for r in records)
    # Row k*3 + j of the output is completion j of prompt k, as that prompt's request delivered it.
    delivered = {}
    for r in records:
        for i, p in enumerate(r.prompts):
            delivered[prompts.index(p)] = r.completion_ids[3 * i : 3 * i + 3]
    assert out.completion_ids == [c for k in range(7) for c in delivered[k]]
    assert len(out.logprobs) == 21 and all(len(lp) == len(c) for lp, c in zip(out.logprobs, out.completion_ids))
    assert out.stats.requests == 4 and out.stats.rows == 21
    assert out.stats.completion_tokens == sum(len(c) for c in out.completion_ids)
    assert out.stats.wall_s >= 5.0 and out.stats.tokens_per_s > 0


@pytest.mark.server
@pytest.mark.timeout(120)
def test_a_failed_chunk_is_retried_alone(explorer_server, explorer_tok):
    prompts = _prompts(explorer_tok, 8)
    with FaultProxy(explorer_server.base_url, fail={2: 500}) as proxy:
        explorer = ServerExplorer(proxy.base_url, SAMPLING, prompts_per_request=2, max_concurrent_requests=1, **FAST)
        out = explorer.generate(prompts, 2)
    assert proxy.generation_requests == 4 + 1  # the four chunks and one retry of the failed one
    failed = proxy.records[1]
    assert failed.status == 500 and not failed.delivered
    assert [r.prompts for r in proxy.records if r.prompts == failed.prompts] == [failed.prompts] * 2
    assert sum(r.delivered for r in proxy.records) == 4
    assert len(out.completion_ids) == 16 and out.stats.failed_requests == 1 and out.stats.requests == 4


@pytest.mark.server
@pytest.mark.timeout(120)
def test_a_timed_out_chunk_is_retried(explorer_server, explorer_tok):
    prompts = _prompts(explorer_tok, 4)
    with FaultProxy(explorer_server.base_url, delay={1: 8.0}) as proxy:
        explorer = ServerExplorer(proxy.base_url, SAMPLING, prompts_per_request=2, **{**FAST, "request_timeout": 3.0})
        out = explorer.generate(prompts, 2)
    assert proxy.generation_requests == 3 and proxy.records[2].prompts == proxy.records[0].prompts
    assert len(out.completion_ids) == 8 and out.stats.failed_requests == 1


@pytest.mark.server
@pytest.mark.timeout(60)
def test_a_rejected_request_fails_at_once(explorer_server, explorer_tok):
    with FaultProxy(explorer_server.base_url, fail={1: 400}) as proxy:
        explorer = ServerExplorer(proxy.base_url, SAMPLING, prompts_per_request=2, max_concurrent_requests=1, **FAST)
        with pytest.raises(ExplorerError) as info:
            explorer.generate(_prompts(explorer_tok, 4), 2)
    assert proxy.base_url in str(info.value) and "HTTP 400" in str(info.value) and "prompts 0-1" in str(info.value)
    assert proxy.generation_requests == 1


@pytest.mark.server
@pytest.mark.timeout(60)
def test_retries_are_bounded_and_the_error_names_the_server(explorer_server, explorer_tok):
    with FaultProxy(explorer_server.base_url, fail=dict.fromkeys(range(1, 20), 503)) as proxy:
        explorer = ServerExplorer(
            proxy.base_url, SAMPLING, prompts_per_request=4, max_retries=2, max_concurrent_requests=1, **FAST
        )
        with pytest.raises(ExplorerError) as info:
            explorer.generate(_prompts(explorer_tok, 4), 2)
    assert proxy.generation_requests == 3  # one try and two retries
    assert proxy.base_url in str(info.value) and "HTTP 503" in str(info.value) and "failed 3 times" in str(info.value)


# ---------------------------------------------------------------------------------------------------- servers
@pytest.mark.server
@pytest.mark.timeout(120)
def test_a_server_that_dies_mid_round_is_dropped_and_no_row_is_lost(explorer_server, explorer_tok, caplog):
    prompts = _prompts(explorer_tok, 10)
    with (
        FaultProxy(explorer_server.base_url) as healthy,
        FaultProxy(explorer_server.base_url, die_at=3) as dying,
    ):
        explorer = ServerExplorer(
            f"{healthy.base_url},{dying.base_url}", SAMPLING, prompts_per_request=1, max_concurrent_requests=2, **FAST
        )
        assert explorer.base_urls == [healthy.base_url, dying.base_url]
        with caplog.at_level(logging.WARNING, logger="s2l_trl.explorers.server"):
            out = explorer.generate(prompts, 2)
        assert dying.dead and dying.generation_requests >= 3
        assert f"Explorer server {dying.base_url} dropped" in caplog.text
        # Every prompt was delivered exactly once, by one server or the other, and the output is what was delivered.
        delivered = [r for proxy in (healthy, dying) for r in proxy.records if r.delivered]
        assert sorted(prompts.index(r.prompts[0]) for r in delivered) == list(range(10))
        by_prompt = {prompts.index(r.prompts[0]): r.completion_ids for r in delivered}
        assert out.completion_ids == [c for k in range(10) for c in by_prompt[k]]
        assert any(r.delivered for r in dying.records)  # it did serve part of the round before dying
        assert out.stats.servers == 1 and out.stats.requests == 10
        # Later rounds use the remaining server only.
        before = dying.generation_requests
        assert len(explorer.generate(prompts[:3], 2).completion_ids) == 6
        assert dying.generation_requests == before


@pytest.mark.server
@pytest.mark.timeout(120)
def test_the_round_fails_naming_every_server_when_none_is_left(explorer_server, explorer_tok):
    with FaultProxy(explorer_server.base_url, die_at=1) as a, FaultProxy(explorer_server.base_url, die_at=1) as b:
        explorer = ServerExplorer([a.base_url, b.base_url], SAMPLING, prompts_per_request=2, max_retries=1, **FAST)
        with pytest.raises(ExplorerError) as info:
            explorer.generate(_prompts(explorer_tok, 4), 2)
    message = str(info.value)
    assert a.base_url in message and b.base_url in message and "no other explorer server is left" in message
    # One was dropped when it could not be reached; the last one stays (a round needs one) until its retries run out.
    assert message.count(" (live, last error: ") == 1 and message.count(" (dropped, last error: ") == 1


# ---------------------------------------------------------------------------------------------------- interrupts
def _in_thread(fn, *args):
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_cancel_stops_the_call_in_flight_and_the_explorer_stays_usable(fake):
    with FaultProxy(fake.base_url, delay=dict.fromkeys(range(1, 5), 30.0)) as proxy:
        explorer = ServerExplorer(proxy.base_url, SEEDED, prompts_per_request=2, **FAST)
        thread, box = _in_thread(explorer.generate, [[5, 6]] * 4, 2)
        _wait_for(lambda: proxy.generation_requests == 4)
        start = time.monotonic()
        explorer.cancel()
        thread.join(5)
        assert time.monotonic() - start < 2 and isinstance(box.get("error"), ExplorerCancelled)
        assert "cancelled" in str(box["error"])
        assert all(s.in_flight == 0 and s.in_flight_rows == 0 for s in explorer.servers)
        # The next call runs (requests 5+ are not delayed), and the cancelled call's index is used up.
        assert len(explorer.generate([[5, 6]] * 3, 2).completion_ids) == 6 and explorer.calls == 2


@pytest.mark.timeout(60)
def test_close_cancels_what_is_in_flight(fake):
    with FaultProxy(fake.base_url, delay={1: 30.0}) as proxy:
        explorer = ServerExplorer(proxy.base_url, SEEDED, **FAST)
        thread, box = _in_thread(explorer.generate, [[5, 6]], 2)
        _wait_for(lambda: proxy.generation_requests == 1)
        start = time.monotonic()
        explorer.close()
        thread.join(5)
        assert time.monotonic() - start < 3 and isinstance(box.get("error"), ExplorerCancelled)
        with pytest.raises(ExplorerError, match="closed"):
            explorer.generate([[5, 6]], 2)
        explorer.close()  # idempotent


@pytest.mark.server
@pytest.mark.timeout(180)
def test_cancelling_aborts_the_generation_on_the_vllm_server(explorer_server, explorer_tok):
    def running() -> float:
        metrics = httpx.get(f"{explorer_server.base_url}/metrics", timeout=10).text
        return sum(
            float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("vllm:num_requests_running")
        )

    # 1,024 sequences of up to 400 tokens: ~30 s of work for the tiny CPU server (~9k tokens/s), cancelled at once.
    long = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=400, seed=0)
    explorer = ServerExplorer(explorer_server.base_url, long, prompts_per_request=64, request_logprobs=False, **FAST)
    thread, box = _in_thread(explorer.generate, _prompts(explorer_tok, 64), 16)
    _wait_for(lambda: running() > 0, timeout=60)
    explorer.cancel()
    thread.join(5)
    assert isinstance(box.get("error"), ExplorerCancelled)
    _wait_for(lambda: running() == 0, timeout=10)  # vLLM aborted them


_GENERATE_SCRIPT = """
import faulthandler, signal, sys
# Ctrl-C as a terminal delivers it, whatever signal state the test process hands down (an ignored or blocked SIGINT
# is inherited across exec); SIGUSR1 dumps every thread's stack, for the failure message.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
faulthandler.register(signal.SIGUSR1, all_threads=True)
from concurrent.futures import ThreadPoolExecutor
from s2l_trl.explorers import SamplingSettings, ServerExplorer

url, where = sys.argv[1], sys.argv[2]
explorer = ServerExplorer(url, SamplingSettings(max_tokens=4, seed=0), progress=False, request_timeout=600)
print("ready", flush=True)
if where == "main":
    explorer.generate([[5, 6, 7]] * 4, 2)
else:  # a worker thread, the main thread waiting on it (a plain executor's workers are joined at exit)
    pool = ThreadPoolExecutor(1)
    pool.submit(explorer.generate, [[5, 6, 7]] * 4, 2).result()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["main", "worker"])
def test_ctrl_c_during_a_request_exits_within_seconds(fake, where):
    with FaultProxy(fake.base_url, delay=dict.fromkeys(range(1, 10), 300.0)) as proxy:
        child = subprocess.Popen(
            [sys.executable, "-c", _GENERATE_SCRIPT, proxy.base_url, where],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        inherited = (signal.getsignal(signal.SIGINT), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        elapsed = float("inf")
        try:
            _wait_for(lambda: proxy.generation_requests >= 1, timeout=60)
            start = time.monotonic()
            child.send_signal(signal.SIGINT)
            child.wait(timeout=15)
            elapsed = time.monotonic() - start
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGUSR1)  # where it hangs, into its stderr
            time.sleep(2)
        finally:
            if child.poll() is None:
                child.kill()
        stderr = child.stderr.read()
    assert elapsed < 5, (
        f"took {elapsed:.1f} s to exit after Ctrl-C (this process's SIGINT handler and blocked signals: {inherited}); "
        f"the child's stderr, with its threads' stacks:\n{stderr[-6000:]}"
    )
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr


# ---------------------------------------------------------------------------------------------------- progress
@pytest.mark.timeout(60)
def test_progress_lines_during_a_round(explorer_tok, caplog):
    with FakeServer(explorer_tok, mean_tokens=5, latency_s=0.6) as fake:
        explorer = ServerExplorer(
            fake.base_url, SEEDED, prompts_per_request=2, max_concurrent_requests=1, log_interval_s=0.5, **QUICK
        )
        with caplog.at_level(logging.INFO, logger="s2l_trl.explorers.server"):
            explorer.generate(_prompts(explorer_tok, 6), 2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Explorer: ")]
    rounds = [line for line in lines if "requests done" in line]
    assert len(rounds) >= 2 and all(re.match(r"Explorer: \d/3 requests done, \d/6 prompts after ", x) for x in rounds)
    assert any(
        line.startswith(("Explorer: 1/3 requests done, 2/6", "Explorer: 2/3 requests done, 4/6")) for line in rounds
    )
    assert any("the servers generate" in line for line in rounds)  # from the fake's /metrics
    assert lines[-1].startswith("Explorer: 6 prompts x n=2 in 3 requests (0 retried) over 1 server(s)")


_PROGRESS_SCRIPT = """
import logging, sys
from s2l_trl.explorers import SamplingSettings, ServerExplorer

url, setup = sys.argv[1], sys.argv[2]
if setup == "quiet":
    logging.getLogger("s2l_trl").setLevel(logging.WARNING)
explorer = ServerExplorer(url, SamplingSettings(max_tokens=4, seed=0), prompts_per_request=1,
                          max_concurrent_requests=1, log_interval_s=0.3, startup_timeout=3)
explorer.generate([[5, 6], [7, 8], [9, 10]], 2)  # logging never configured: a plain script
# What s2l-train does (before it builds the trainer): a root handler on stdout, the root level left at WARNING.
logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
print("-- basicConfig --", flush=True)
print("-- basicConfig --", file=sys.stderr, flush=True)
explorer.generate([[5, 6], [7, 8], [9, 10]], 2)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("setup", ["default", "quiet"])
def test_progress_lines_reach_a_script_and_s2l_train(explorer_tok, setup):
    dead = f"http://127.0.0.1:{free_port()}"
    with FakeServer(explorer_tok, mean_tokens=4, latency_s=0.5, server_info=True) as fake:
        done = subprocess.run(
            [sys.executable, "-c", _PROGRESS_SCRIPT, f"{fake.base_url},{dead}", setup],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=100,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    start_up = [line for line in output.splitlines() if "Explorer start-up: 1 of 2 server(s) healthy" in line]
    rounds = [line for line in output.splitlines() if "requests done" in line]
    if setup == "quiet":
        assert not start_up and not rounds  # an explicit level on the package wins
        assert f"Explorer server {dead} is not used" in output  # warnings still show
        return
    # Unconfigured, the lines go to stderr; once a root handler exists, through it only (never twice).
    out_before, out_after = done.stdout.split("-- basicConfig --")
    err_before, err_after = done.stderr.split("-- basicConfig --")
    assert start_up and all(line in err_before for line in start_up)
    assert "requests done" in err_before and "requests done" not in out_before
    assert "requests done" in out_after and "requests done" not in err_after
