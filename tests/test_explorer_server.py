"""ServerExplorer: bounded start-up (non-vLLM URL, closed port), the explorer identity check, and chunked generation
over one or several servers with retries, against the session's real CPU vLLM server behind fault-injecting proxies.
"""

from __future__ import annotations

import logging
import time

import pytest

from s2l_trl.devtools.fault_proxy import FaultProxy
from s2l_trl.devtools.vllm_server import free_port
from s2l_trl.explorers import ExplorerError, SamplingSettings, ServerExplorer

SAMPLING = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=6, seed=0)
FAST = {"progress": False, "backoff_factor": 0.05, "request_timeout": 60.0, "startup_timeout": 30.0}


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


def _prompts(tok, count: int) -> list[list[int]]:
    return [tok(f"What is {i} + {2 * i}?", add_special_tokens=False)["input_ids"] for i in range(count)]


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


# ---------------------------------------------------------------------------------------------------- identity
def test_model_names_compare_by_their_last_component():
    from s2l_trl.explorers.server import _model_name

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


# ---------------------------------------------------------------------------------------------------- chunking
@pytest.mark.server
@pytest.mark.timeout(120)
def test_chunks_are_reassembled_in_prompt_order(explorer_server, explorer_tok):
    prompts = _prompts(explorer_tok, 7)
    # The first request is held back (long enough for a loaded 2-core machine) so that the later ones finish first.
    with FaultProxy(explorer_server.base_url, delay={1: 5.0}) as proxy:
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
    assert all(r.delivered and r.n == 3 for r in records)
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
