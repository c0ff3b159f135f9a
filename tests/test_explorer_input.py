"""Explorer input a run must not take silently (issue 26): explorer importance sampling without explorer log-probs,
explorer and learner completion caps that differ, offline rollouts sampled with a smaller cap; each refused before
training (or at the round where it is first seen) with one message naming the option, the value and the fix, in the
Python API and on the command line. The explorer is the fake vLLM server, a custom object or a rollout file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts

from s2l_trl import S2LConfig, S2LTrainer
from s2l_trl.cli.errors import run_cli
from s2l_trl.cli.train import cli as train_cli
from s2l_trl.devtools.fake_server import FakeServer
from s2l_trl.devtools.tiny import tiny_training_kwargs
from s2l_trl.explorers import ExplorerError, ExplorerOutput
from s2l_trl.rewards import accuracy_reward

REPO = Path(__file__).resolve().parents[1]
IS = "explorer_importance_sampling='token_truncate'"


def _trainer(tiny, args, **kwargs):
    return S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny), **kwargs)


# ---------------------------------------------------------------- explorer IS needs explorer log-probs
def test_a_server_without_log_probs_is_refused_at_start_when_is_is_on(tiny, tmp_path):
    with FakeServer(tiny["tokenizer"], mean_tokens=6, server_info=True, sampled_logprobs="none") as server:
        args = s2l_args(
            tmp_path,
            explorer_mode="server",
            explorer_server_base_url=server.base_url,
            explorer_importance_sampling="token_truncate",
        )
        with pytest.raises(ExplorerError) as info:
            _trainer(tiny, args)
        assert server.base_url in str(info.value) and "without log-probs" in str(info.value)
        assert "explorer_importance_sampling='none'" in str(info.value)
        assert server.generation_requests == 1  # the start-up probe: nothing was trained
        # Also for the off-policy mask, which reads them too.
        mask = s2l_args(
            tmp_path, explorer_mode="server", explorer_server_base_url=server.base_url, explorer_off_policy_mask=True
        )
        with pytest.raises(ExplorerError, match="without log-probs"):
            _trainer(tiny, mask)
    assert not (tmp_path / "out").exists()


def test_the_command_line_says_it_in_one_line(tiny, tmp_path):
    with FakeServer(tiny["tokenizer"], model=str(tiny["explorer"]), server_info=True, sampled_logprobs="none") as fake:
        argv = ["--config", str(REPO / "recipes/tiny/s2l_po/config_cpu.yaml"), "--explorer_server_timeout", "30"]
        argv += ["--model_name_or_path", str(tiny["learner"]), "--dataset_name", str(tiny["dataset"])]
        argv += ["--explorer_model", str(tiny["explorer"]), "--explorer_server_base_url", fake.base_url]
        argv += ["--explorer_importance_sampling", "token_truncate", "--output_dir", str(tmp_path / "out")]
        env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "s2l_trl.cli.train", *argv], capture_output=True, text=True, timeout=300, env=env
        )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("s2l-train: error:") and "without log-probs" in errors[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_offline_rollouts_without_log_probs_are_refused_at_start_when_is_is_on(tiny, tmp_path):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "no_lp.jsonl")  # small_model_log_probs: null
    with pytest.raises(ExplorerError) as info:
        _trainer(tiny, s2l_args(tmp_path, rollouts, explorer_importance_sampling="token_truncate"))
    message = str(info.value)
    assert message.startswith(IS) and "no_lp.jsonl" in message and "have no small_model_log_probs" in message
    _trainer(tiny, s2l_args(tmp_path, rollouts))  # nothing weighs them: fine


class _NoLogprobs:
    """A user's explorer that returns completions but no log-probs."""

    def generate(self, prompt_ids, n, inputs=None):
        return ExplorerOutput([[5, 6, 7] for _ in range(len(prompt_ids) * n)], logprobs=None)


def test_a_custom_explorer_without_log_probs_fails_the_first_round_when_is_is_on(tiny, tmp_path):
    args = s2l_args(tmp_path, explorer_importance_sampling="token_truncate", max_steps=2)
    trainer = _trainer(tiny, args, explorer=_NoLogprobs())
    with pytest.raises(ExplorerError) as info:
        trainer.train()
    message = str(info.value)
    assert "in the round of step 1" in message and f"{IS} weighs explorer tokens" in message
    assert "_NoLogprobs returned none in round 0" in message and trainer.state.global_step == 0
    plain = _trainer(tiny, s2l_args(tmp_path / "plain", max_steps=1), explorer=_NoLogprobs())
    plain.train()  # without IS the same explorer trains
    assert plain.state.global_step == 1


# ---------------------------------------------------------------- one truncation for both sources
def test_an_explorer_cap_below_max_completion_length_is_refused(caplog):
    kwargs = tiny_training_kwargs(output_dir="unused", max_completion_length=16)
    with pytest.raises(ValueError) as info:
        S2LConfig(**kwargs, explorer_max_tokens=4)
    message = str(info.value)
    assert "explorer_max_tokens=4 is smaller than max_completion_length=16" in message
    assert "Leave explorer_max_tokens unset" in message
    with caplog.at_level(logging.WARNING, logger="s2l_trl.config"):
        assert S2LConfig(**kwargs, explorer_max_tokens=64).explorer_max_tokens == 64
    assert "explorer_max_tokens=64 exceeds max_completion_length=16" in caplog.text and "48 tokens" in caplog.text
    assert S2LConfig(**kwargs).explorer_max_tokens == 16


def test_an_explorer_cap_below_max_completion_length_is_one_line_on_the_command_line(tiny, tmp_path, capsys):
    argv = ["--config", str(REPO / "recipes/tiny/s2l_po/config_cpu.yaml"), "--explorer_max_tokens", "4"]
    argv += ["--model_name_or_path", str(tiny["learner"]), "--dataset_name", str(tiny["dataset"])]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("s2l-train", train_cli, [*argv, "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0
    assert err.startswith("s2l-train: error: explorer_max_tokens=4 is smaller than max_completion_length=16")


def test_offline_rollouts_sampled_with_a_smaller_cap_are_refused_at_start(tiny, tmp_path):
    folder = tmp_path / "rollouts"
    folder.mkdir()
    rollouts = write_oracle_rollouts(tiny, folder / "rollouts.jsonl")
    (folder / "sample_config.json").write_text(json.dumps({"max_tokens": 6, "seed": 0}))
    with pytest.raises(ExplorerError) as info:
        _trainer(tiny, s2l_args(tmp_path, rollouts))
    message = str(info.value)
    assert "sampled with at most 6 completion tokens (max_tokens=6 in" in message
    assert "fewer than max_completion_length=16" in message and "s2l-sample --max_tokens 16" in message
    assert not (tmp_path / "out").exists()
    (folder / "sample_config.json").write_text(json.dumps({"max_tokens": 16, "seed": 0}))
    _trainer(tiny, s2l_args(tmp_path, rollouts))
