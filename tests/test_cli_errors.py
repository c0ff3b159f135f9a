"""What the command line calls bad input (one line, exit 2) and what it calls a crash (traceback, exit 1), and the
input checks of issue 26 that are made before any work starts, in the CLI and the Python API alike."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts

from s2l_trl import S2LConfig, S2LTrainer
from s2l_trl.cli.errors import run_cli
from s2l_trl.cli.train import cli, make_parser
from s2l_trl.devtools.tiny import tiny_training_kwargs
from s2l_trl.devtools.vllm_server import free_port
from s2l_trl.preflight import InputError
from s2l_trl.rewards import accuracy_reward

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def _config(tmp_path, **overrides) -> S2LConfig:
    return S2LConfig(**tiny_training_kwargs(output_dir=str(tmp_path / "out"), **overrides))


# ---------------------------------------------------------------- run_cli: bad input vs crash
def test_run_cli_calls_only_the_projects_input_errors_bad_input(capsys):
    def bad_input(argv):
        raise InputError("max_steps is wrong; use 3")

    with pytest.raises(SystemExit) as exit_info:
        run_cli("s2l-x", bad_input, [])
    assert exit_info.value.code == 2 and capsys.readouterr().err == "s2l-x: error: max_steps is wrong; use 3\n"

    # A ValueError / OSError raised while the run works is a bug or a crash: its traceback is shown, never exit 2.
    for crash in (ValueError("shape mismatch"), OSError("disk gone"), KeyError("requests_served")):

        def run(argv, crash=crash):
            raise crash

        with pytest.raises(type(crash)):
            run_cli("s2l-x", run, [])


def test_errors_raised_while_parsing_the_arguments_are_bad_input(tmp_path, capsys):
    """A config's own validation (here GRPOConfig's, inside the parser) is about the user's arguments: one line."""
    argv = ["--config", str(RECIPES / "grpo" / "config_cpu.yaml"), "--num_generations", "3"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("s2l-train", cli, [*argv, "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("s2l-train: error: ") and len(err.strip().splitlines()) == 1 and "num_generations" in err


def test_a_bad_integer_in_a_recipe_is_one_line_not_the_usage(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text((RECIPES / "grpo" / "config_cpu.yaml").read_text().replace("max_steps: 6", "max_steps: abc"))
    with pytest.raises(SystemExit) as exit_info:
        make_parser("grpo").parse_args_and_config(args=["--config", str(recipe)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "s2l-train: error: argument --max_steps/--max-steps: invalid int value: 'abc' (see s2l-train --help)"
    ]


def test_a_crash_once_training_runs_keeps_its_traceback(tiny, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    def broken_train(self, *args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(GRPOTrainer, "train", broken_train)
    argv = ["--config", str(RECIPES / "grpo" / "config_cpu.yaml"), "--model_name_or_path", str(tiny["learner"])]
    argv += ["--dataset_name", str(tiny["dataset"]), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="an internal bug"):
        run_cli("s2l-train", cli, argv)


# ---------------------------------------------------------------- explorer time-outs and servers
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"explorer_request_timeout": 0}, r"explorer_request_timeout must be > 0 seconds, got 0"),
        ({"explorer_server_timeout": -5}, r"explorer_server_timeout must be >= 0 seconds, got -5"),
        ({"explorer_stall_timeout": -1}, r"explorer_stall_timeout must be >= 0 seconds, got -1"),
    ],
)
def test_explorer_timeouts_are_validated(tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        _config(tmp_path, **overrides)


@pytest.mark.parametrize(
    "learner, explorer",
    [
        ({"vllm_server_base_url": "http://localhost:8001/"}, "http://127.0.0.1:8001"),
        ({"vllm_server_base_url": "http://127.0.0.1:8001"}, "http://node1:9000,http://LOCALHOST:8001"),
        ({}, "http://127.0.0.1:8000"),  # TRL's default learner server: vllm_server_host 0.0.0.0, port 8000
        ({"vllm_server_host": "node1", "vllm_server_port": 80}, "http://node1"),
    ],
)
def test_the_learner_server_must_not_be_an_explorer_server(tmp_path, learner, explorer):
    with pytest.raises(InputError, match=r"The learner's vLLM server .* is the explorer server .*overwrite the frozen"):
        _config(tmp_path, use_vllm=True, vllm_mode="server", explorer_server_base_url=explorer, **learner)


def test_a_learner_server_of_its_own_is_accepted(tmp_path):
    _config(
        tmp_path,
        use_vllm=True,
        vllm_mode="server",
        vllm_server_base_url="http://127.0.0.1:8000",
        explorer_server_base_url="http://127.0.0.1:8001,http://node2:8000",
    )


def test_a_mix_longer_than_the_run_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="s2l_trl.config"):
        _config(tmp_path, max_steps=3, mix_steps=100)
    assert "mix_steps=100 (T_mix) exceeds max_steps=3" in caplog.text and "alpha=0.98" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2l_trl.config"):
        _config(tmp_path, max_steps=8, mix_steps=8)
    assert "exceeds" not in caplog.text


def test_the_vllm_explorer_memory_share_is_said_not_to_apply_on_cpu(tmp_path, caplog):
    from s2l_trl.explorers.factory import training_vllm_kwargs

    args = _config(tmp_path, explorer_mode="vllm", explorer_model="org/x", explorer_vllm_gpu_memory_utilization=0.0001)
    with caplog.at_level(logging.WARNING, logger="s2l_trl.explorers.factory"):
        training_vllm_kwargs(args, "cpu", 0)
    assert "explorer_vllm_gpu_memory_utilization=0.0001 does not apply on cpu" in caplog.text
    assert "VLLM_CPU_KVCACHE_SPACE" in caplog.text


# ---------------------------------------------------------------- models and data
def test_an_explorer_model_that_cannot_be_had_is_refused_at_once(tiny, tmp_path, monkeypatch):
    """A server explorer's tokenizer decides whether its ids are learner ids: a Hub id neither cached nor reachable is
    refused in seconds (one request), not assumed to match after huggingface_hub's retries."""
    from huggingface_hub import constants

    rollouts = write_oracle_rollouts(tiny, tmp_path / "r.jsonl")
    missing = s2l_args(tmp_path, rollouts, explorer_model=".tiny/no-such-explorer")  # a path, never a Hub id
    with pytest.raises(InputError, match=r"explorer_model '.tiny/no-such-explorer' looks like a local path but does"):
        S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=missing, train_dataset=tiny_dataset(tiny))
    args = s2l_args(tmp_path, rollouts, explorer_model="nobody/no-such-explorer")
    with pytest.raises(InputError, match=r"explorer_model 'nobody/no-such-explorer' .* offline \(HF_HUB_OFFLINE=1\)"):
        S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    start = time.monotonic()
    unreachable = r"explorer_model .* the Hub cannot be reached .*used as learner ids unchecked"
    with pytest.raises(InputError, match=unreachable):
        S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    assert time.monotonic() - start < 10


def test_a_split_that_a_single_file_does_not_have_is_refused(tiny):
    from s2l_trl.data import PromptDataArguments, load_train_dataset

    args = PromptDataArguments(dataset_name=str(tiny["dataset"]), dataset_train_split="validation")
    with pytest.raises(InputError, match=r"dataset_train_split 'validation' does not apply to .*addition.jsonl"):
        load_train_dataset(args)


def test_a_saved_dataset_dict_must_have_the_split(tiny, tmp_path):
    from datasets import DatasetDict

    from s2l_trl.data import PromptDataArguments, load_train_dataset

    DatasetDict({"train": tiny_dataset(tiny), "test": tiny_dataset(tiny).select(range(2))}).save_to_disk(tmp_path / "d")
    args = PromptDataArguments(dataset_name=str(tmp_path / "d"), dataset_train_split="test")
    assert len(load_train_dataset(args)) == 2
    args.dataset_train_split = "validation"
    with pytest.raises(InputError, match=r"'validation' is not a split of .* \['test', 'train'\]"):
        load_train_dataset(args)


def test_an_iterable_dataset_trains_with_the_explorer(tiny, tmp_path):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "r.jsonl")
    streamed = tiny_dataset(tiny).to_iterable_dataset()
    args = s2l_args(tmp_path, rollouts, max_steps=2, mix_steps=2)
    trainer = S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=streamed)
    trainer.train()
    history = trainer.state.log_history
    assert [h["s2l/explorer_rows_per_group"] for h in history if "s2l/alpha" in h] == [4, 0]
    assert [h["s2l/reward/explorer"] for h in history if "s2l/reward/explorer" in h] == [1.0]


def test_s2l_eval_without_the_hub_names_data_dir_at_once(monkeypatch):
    from huggingface_hub import constants

    from s2l_trl.evaluation.data import load_benchmark

    start = time.monotonic()
    with pytest.raises(InputError, match=r"aime24.*not in the local cache.*HF_HUB_OFFLINE=1.*--data_dir"):
        load_benchmark("aime24")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(InputError, match=r"aime24.*the Hub cannot be reached.*--data_dir"):
        load_benchmark("aime24")
    assert time.monotonic() - start < 20
