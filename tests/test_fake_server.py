"""The fake explorer server of the scale lab (`s2l_trl.devtools.fake_server`): vLLM-shaped answers, seeded draws,
realistic lengths, and a ServerExplorer that uses it like a real server (identity check included)."""

from __future__ import annotations

import httpx
import pytest

from s2l_trl.devtools.fake_server import FakeServer, FakeServerProcess, benchmark
from s2l_trl.explorers import SamplingSettings, ServerExplorer


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["explorer"])


def _post(server, **payload) -> dict:
    r = httpx.post(f"{server.base_url}/v1/completions", json=payload, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_answers_are_shaped_like_vllm_and_cut_at_max_tokens(tok):
    with FakeServer(tok, mean_tokens=8, length_spread=0.8, pool_size=64) as fake:
        assert httpx.get(f"{fake.base_url}/health").status_code == 200
        assert httpx.get(f"{fake.base_url}/v1/models").json()["data"][0]["id"] == fake.model
        text = "What is 12 + 7?"
        tokens = httpx.post(f"{fake.base_url}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
        assert tokens["tokens"] == tok(text, add_special_tokens=False)["input_ids"]
        prompts = [[5, 6, 7], [8, 9]]
        answer = _post(fake, prompt=prompts, n=3, max_tokens=10, logprobs=0, return_token_ids=True, seed=1)
        choices = answer["choices"]
        assert [c["index"] for c in choices] == list(range(6))
        assert [c["prompt_token_ids"] for c in choices] == [prompts[0]] * 3 + [prompts[1]] * 3
        for c in choices:
            ids, lps = c["token_ids"], c["logprobs"]["token_logprobs"]
            assert 1 <= len(ids) <= 10 and len(lps) == len(ids) and all(lp <= 0 for lp in lps)
            assert c["logprobs"]["tokens"] == [f"token_id:{t}" for t in ids]
            if c["finish_reason"] == "stop":  # ends in EOS, the only EOS of the completion
                assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
            else:
                assert c["finish_reason"] == "length" and len(ids) == 10 and tok.eos_token_id not in ids
        assert answer["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in choices)
        # Lengths scatter around the mean: over many draws both endings occur.
        many = _post(fake, prompt=[[1]], n=64, max_tokens=10, seed=3)["choices"]
        assert {c["finish_reason"] for c in many} == {"stop", "length"}
        assert fake.generation_requests == 2
        metrics = httpx.get(f"{fake.base_url}/metrics").text
        generated = sum(len(c["token_ids"] or []) for c in choices)  # the second request returned no ids
        assert "vllm:generation_tokens_total" in metrics and float(metrics.split()[-1]) >= generated


def test_seeded_requests_repeat_and_children_follow_vllms_seed_plus_k(tok):
    with FakeServer(tok, mean_tokens=6, pool_size=256) as fake:

        def ids(**kw):
            return [c["token_ids"] for c in _post(fake, return_token_ids=True, max_tokens=12, **kw)["choices"]]

        assert ids(prompt=[[4, 5]], n=4, seed=10) == ids(prompt=[[4, 5]], n=4, seed=10)
        assert ids(prompt=[[4, 5]], n=4, seed=10)[1:] == ids(prompt=[[4, 5]], n=3, seed=11)  # child k: seed + k
        assert ids(prompt=[[4, 5]], n=4, seed=10) != ids(prompt=[[4, 5]], n=4, seed=99)
        assert ids(prompt=[[4, 5]], n=4, seed=10) != ids(prompt=[[4, 6]], n=4, seed=10)  # the prompt matters


def test_server_explorer_gets_the_right_shapes_from_it(tok):
    prompts = [tok(f"What is {i} + {i + 3}?", add_special_tokens=False)["input_ids"] for i in range(37)]
    with FakeServer(tok, mean_tokens=20, pool_size=64) as fake:
        explorer = ServerExplorer(
            fake.base_url,
            SamplingSettings(max_tokens=24, seed=5),
            expected_tokenizer=tok,  # the identity probe goes through the fake's /tokenize
            expected_model=fake.model,
            require_processed_logprobs=True,
            prompts_per_request=8,
            max_concurrent_requests=2,
            progress=False,
        )
        out = explorer.generate(prompts, 4)
        explorer.close()
    assert len(out.completion_ids) == 37 * 4 and len(out.logprobs) == 37 * 4
    assert all(1 <= len(c) <= 24 for c in out.completion_ids)
    assert all(len(lp) == len(c) for lp, c in zip(out.logprobs, out.completion_ids))
    assert any(c[-1] == tok.eos_token_id for c in out.completion_ids)
    assert any(len(c) == 24 and c[-1] != tok.eos_token_id for c in out.completion_ids)
    assert out.stats.rows == 148 and out.stats.prompts == 37 and out.stats.requests == 5
    assert out.stats.completion_tokens == sum(map(len, out.completion_ids))
    # One per prompt (seeded), plus the two log-probs mode probes and the one that checks answers carry log-probs.
    assert fake.generation_requests == 37 + 3


def test_the_process_variant_and_its_benchmark(tiny):
    with FakeServerProcess(tiny["explorer"], mean_tokens=64, pool_size=16) as fake:
        assert httpx.get(f"{fake.base_url}/health").status_code == 200
        figures = benchmark(fake.base_url, prompts=8, n=4, max_tokens=128, prompts_per_request=2)
        process = fake.process
    assert process.poll() is not None  # stopped by its PID
    assert figures["completion_tokens"] > 0 and figures["tokens_per_s"] > 0 and figures["bytes_per_token"] > 10
