"""`s2l-train`: recipe parsing, S2L-PO and plain-GRPO runs on the tiny models, the model card it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_utils import write_oracle_rollouts
from trl import GRPOConfig

from s2l_trl import S2LConfig
from s2l_trl.cli.train import cli, parse_args

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def test_trainer_kind_is_read_from_recipe_or_flag():
    def kind(*argv):
        script_args, training_args, _ = parse_args(list(argv))
        return script_args.trainer, type(training_args)

    grpo, s2l = RECIPES / "grpo" / "config_cpu.yaml", RECIPES / "s2l_po" / "config_cpu.yaml"
    assert kind("--config", str(grpo)) == ("grpo", GRPOConfig)
    assert kind(f"--config={s2l}") == ("s2l", S2LConfig)
    assert kind("--config", str(grpo), "--trainer", "s2l") == ("s2l", S2LConfig)
    assert kind(f"--config={grpo}", "--trainer=s2l") == ("s2l", S2LConfig)
    # Flags of the training arguments are left for the second pass, whatever their position.
    script_args, training_args, _ = parse_args(["--max_steps", "3", "--config", str(grpo), "--split", "dev"])
    assert (training_args.max_steps, script_args.dataset_train_split) == (3, "dev")
    with pytest.raises(ValueError, match="trainer must be 's2l' or 'grpo', got 'ppo'"):
        cli(["--trainer", "ppo"])


def _overrides(tiny, out: Path) -> list[str]:
    return [
        "--model_name_or_path",
        str(tiny["learner"]),
        "--dataset_name",
        str(tiny["dataset"]),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--disable_tqdm",
        "true",
    ]


def test_s2l_train_offline_run_writes_model_and_s2l_card(tiny, tmp_path, capsys):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "oracle.jsonl")
    out = tmp_path / "run"
    cli(
        [
            "--config",
            str(RECIPES / "s2l_po" / "config_cpu.yaml"),
            *_overrides(tiny, out),
            "--explorer_mode",
            "offline",
            "--explorer_rollouts",
            str(rollouts),
            "--explorer_model",
            str(tiny["explorer"]),
        ]
    )
    assert (out / "model.safetensors").exists() or (out / "adapter_model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "S2L-PO provenance" in card and str(tiny["explorer"]) in card
    state = json.loads((out / "trainer_state.json").read_text())
    alphas = [h["s2l/alpha"] for h in state["log_history"] if "s2l/alpha" in h]
    assert alphas == pytest.approx([1.0, 2 / 3])
    # The oracle explorer's answers are boxed and right: both reward functions pay on explorer rows.
    rewards = [h["s2l/reward/explorer"] for h in state["log_history"] if "s2l/reward/explorer" in h]
    assert rewards == pytest.approx([2.0, 2.0])
    assert "[s2l] step    1 | alpha  1.000" in capsys.readouterr().out


def test_s2l_train_grpo_baseline_runs_without_explorer(tiny, tmp_path):
    out = tmp_path / "grpo"
    cli(["--config", str(RECIPES / "grpo" / "config_cpu.yaml"), *_overrides(tiny, out)])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert not any("s2l/alpha" in h for h in state["log_history"])
