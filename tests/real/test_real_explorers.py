"""Check 1 of the real-model tier: explorer = learner = SmolLM2-135M-Instruct through every explorer backend that runs
here, on MATH500 prompts through the real chat template, at the learner's temperature.

The trainer logs `s2l/logp_gap`, the mean of (learner - explorer) log-prob over explorer tokens, and weighs them by
`exp(gap)` (explorer importance sampling). With the same model on both sides:
- at top-p 1 the two distributions are the same: the gap is ~0 and the weights ~1 (float32 on both sides);
- at top-p 0.95 the explorer's (processed) log-probs are renormalised over the nucleus, so each token's gap is
  `log M_t`, the log of the nucleus mass the learner's own distribution gives at that position (M_t in [0.95, 1]):
  the gap is negative, and its size is predicted by an independent forward pass of the learner (real_utils.nucleus).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import real_utils as ru

from s2l_trl.devtools.vllm_server import CPU_ENV

TOP_PS = [1.0, 0.95]


def _check(record: dict, top_p: float) -> dict:
    s = ru.summarize(record)
    metrics = record["metrics"]
    assert s["tokens"] >= 10, s
    # The trainer's metrics are the means over exactly these tokens.
    assert metrics["s2l/logp_gap"] == pytest.approx(s["gap"], abs=1e-6)
    assert metrics["s2l/explorer_is_weight/mean"] == pytest.approx(s["is_weight"], abs=1e-5)
    # TRL's learner log-probs (padded batch) are the learner's log-probs of the explorer's tokens (our own forward).
    assert s["own_vs_trl"] < 1e-3, s
    # Every token the explorer sampled lies in the learner's nucleus: the explorer samples the learner's distribution.
    assert s["outside_nucleus"] == 0.0, s
    # Per token, the gap is the log nucleus mass (0 at top-p 1); float32 on both sides, kernels differ.
    assert s["max_token_error"] < 5e-3, s
    if top_p == 1.0:
        assert abs(s["gap"]) < 1e-3, s
        assert s["is_weight"] == pytest.approx(1.0, abs=1e-3), s
    else:
        assert s["predicted_gap"] < -0.005, s  # the nucleus leaves out real mass on these tokens
        assert math.log(top_p) - 1e-3 <= s["gap"] < -0.005, s  # the sign and the bound M_t >= top_p
        assert s["gap"] == pytest.approx(s["predicted_gap"], rel=0.05, abs=2e-4), s
    return s


@pytest.fixture(scope="module")
def data(shared_eval_data, tmp_path_factory):
    return ru.math500_subset(shared_eval_data, tmp_path_factory.mktemp("math500") / "train.jsonl", 1)


def _config(tmp_path, real_models, top_p, **overrides):
    return ru.step_kwargs(tmp_path / "out", explorer_model=str(real_models.smollm2), explorer_top_p=top_p, **overrides)


@pytest.mark.parametrize("top_p", TOP_PS)
def test_trl_vllm_serve_explorer_equals_learner(real_models, smollm2_trl_server, data, tmp_path, top_p):
    server = smollm2_trl_server()
    config = _config(tmp_path, real_models, top_p, explorer_mode="server", explorer_server_base_url=server.base_url)
    _check(ru.record_step(str(real_models.smollm2), str(data), config), top_p)


@pytest.mark.parametrize("top_p", TOP_PS)
def test_offline_rollouts_of_s2l_sample_equal_learner(real_models, smollm2_trl_server, data, tmp_path, top_p):
    """Rollouts written by `s2l-sample` (from the `trl vllm-serve` explorer, on the trainer's own data arguments),
    then read back by the offline explorer: stored log-probs keep the same relation to the learner's."""
    from s2l_trl.cli.sample import main as sample_main

    server = smollm2_trl_server()
    rollouts = sample_main(
        [
            "--model_path", str(real_models.smollm2), "--output_dir", str(tmp_path / "rollouts"),
            "--dataset_name", str(data), "--backend", "server", "--server_base_url", server.base_url,
            "--num_generations", "2", "--temperature", str(ru.TEMPERATURE), "--top_p", str(top_p),
            "--max_tokens", str(ru.COMPLETION_TOKENS), "--seed", "0",
        ]
    )  # fmt: skip
    config = _config(tmp_path, real_models, top_p, explorer_mode="offline", explorer_rollouts=str(rollouts))
    _check(ru.record_step(str(real_models.smollm2), str(data), config), top_p)


@pytest.mark.parametrize("top_p", TOP_PS)
def test_local_explorer_equals_learner(real_models, data, tmp_path, top_p):
    config = _config(tmp_path, real_models, top_p, explorer_mode="local")
    _check(ru.record_step(str(real_models.smollm2), str(data), config), top_p)


@pytest.mark.real_full
@pytest.mark.parametrize("top_p", TOP_PS)
def test_vllm_serve_processed_logprobs_explorer_equals_learner(real_models, real_servers, data, tmp_path, top_p):
    """Plain `vllm serve --logprobs-mode processed_logprobs` (what remains once TRL 2.0 drops `trl vllm-serve`)."""
    server = real_servers.get(real_models.smollm2, "vllm")
    config = _config(tmp_path, real_models, top_p, explorer_mode="server", explorer_server_base_url=server.base_url)
    _check(ru.record_step(str(real_models.smollm2), str(data), config), top_p)


@pytest.mark.real_full
def test_in_process_vllm_explorer_equals_learner(real_models, real_servers, data, tmp_path):
    """The in-process `vllm` explorer (its engine in a child process), at both top-p values, in a child process of
    its own so that vLLM's state never touches pytest's."""
    real_servers.stop()  # one vLLM engine at a time
    vllm = {
        "explorer_mode": "vllm",
        "explorer_vllm_max_model_length": 2048,
        "explorer_vllm_kwargs": {"dtype": "float32", "enforce_eager": True},
    }
    for top_p in TOP_PS:
        spec = {"model": str(real_models.smollm2), "dataset": str(data)}
        spec["config"] = _config(tmp_path / str(top_p), real_models, top_p, **vllm)
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        result = tmp_path / f"result-{top_p}.json"
        done = subprocess.run(
            [sys.executable, str(ru.HERE / "real_utils.py"), str(result), str(tmp_path / "spec.json")],
            env={**CPU_ENV, **os.environ},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        _check(json.loads(result.read_text()), top_p)
