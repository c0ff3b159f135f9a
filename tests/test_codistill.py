"""CoDistill-GRPO (s2l_trl.codistill): the KD reward, the importance weights, both updates, save / resume."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_utils import digit_reward, logged, tiny_dataset
from trl import GRPOConfig, GRPOTrainer

from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer, objectives
from s2l_trl.devtools.tiny import tiny_training_kwargs
from s2l_trl.mixing import explorer_is_weights

FAST = dict(max_completion_length=8)


def codistill(tiny, tmp_path, large=None, small=None, **overrides) -> CoDistillTrainer:
    kwargs = tiny_training_kwargs(output_dir=str(tmp_path / "out"), max_steps=1, **FAST)
    kwargs.update(overrides)
    return CoDistillTrainer(
        str(large or tiny["learner"]),
        [digit_reward],
        args=CoDistillConfig(small_model=str(small or tiny["explorer"]), **kwargs),
        train_dataset=tiny_dataset(tiny),
    )


# ---------------------------------------------------------------- pure functions
def _rows(large: float, small: float):
    large_logps = torch.full((2, 3), large)
    small_logps = torch.full((2, 3), small)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rows = torch.tensor([True, True])
    return large_logps, small_logps, mask, rows


def test_identical_models_give_zero_kd_reward_and_unit_weights():
    large, small, mask, rows = _rows(math.log(0.3), math.log(0.3))
    assert torch.equal(objectives.kd_token_rewards(large, small, mask, rows), torch.zeros(2, 3))
    assert torch.equal(objectives.kd_sequence_rewards(torch.zeros(2, 3), mask), torch.zeros(2))
    assert torch.equal(objectives.ratio_values(large, small, mask, rows), torch.ones(5))
    for mode in ("token_truncate", "token_mask"):
        weight, _ = explorer_is_weights(large, small, mask, rows, mode, None, 2.0)
        assert torch.equal(weight, torch.ones(2, 3))


def test_large_model_preferring_sampled_tokens_gives_positive_kd_and_clipped_or_masked_weights():
    # pi_large = 0.5, pi_small = 0.125 on every sampled token: KD reward log 4 per token, IS ratio 4.
    large, small, mask, rows = _rows(math.log(0.5), math.log(0.125))
    tokens = objectives.kd_token_rewards(large, small, mask, rows)
    assert tokens[mask.bool()] == pytest.approx([math.log(4.0)] * 5)
    assert tokens[~mask.bool()].tolist() == [0.0]  # padding earns nothing
    assert objectives.kd_sequence_rewards(tokens, mask).tolist() == pytest.approx([math.log(4.0)] * 2)
    assert objectives.kd_token_rewards(large, small, mask, rows, clip=1.0)[mask.bool()].tolist() == [1.0] * 5
    other = torch.tensor([True, False])  # a row the small model did not sample earns no KD reward
    assert objectives.kd_token_rewards(large, small, mask, other)[1].tolist() == [0.0] * 3
    assert objectives.ratio_values(large, small, mask, rows).tolist() == pytest.approx([4.0] * 5)
    truncated, _ = explorer_is_weights(large, small, mask, rows, "token_truncate", None, 2.0)
    assert truncated[mask.bool()].tolist() == [2.0] * 5
    masked, _ = explorer_is_weights(large, small, mask, rows, "token_mask", None, 2.0)
    assert masked[mask.bool()].tolist() == [0.0] * 5
    dense = objectives.dense_small_advantages(torch.tensor([1.0, -1.0]), tokens, 0.5)
    assert dense[0, 0].item() == pytest.approx(1.0 + 0.5 * math.log(4.0))


def test_config_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="kd_mode.*'dense'"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, kd_mode="dense")
    with pytest.raises(ValueError, match="kd_coef.*-1"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, kd_coef=-1.0)
    with pytest.raises(ValueError, match="beta=0.04"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, beta=0.04)
    args = CoDistillConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (args.mix_schedule, args.mix_alpha_start, args.explorer_importance_sampling) == (
        "constant",
        1.0,
        "token_truncate",
    )
    assert args.explorer_importance_sampling_clip_max == 2.0


# ---------------------------------------------------------------- trainer
def test_identical_weights_in_a_run_give_zero_kd_reward_and_unit_weights(tiny, tmp_path):
    trainer = codistill(tiny, tmp_path, small=tiny["learner"])
    trainer.train()
    assert logged(trainer, "codistill/kd_reward")[0] == pytest.approx(0.0, abs=1e-4)
    for stat in ("min", "mean", "max"):
        for name in ("is_weight", "is_weight_raw"):
            assert logged(trainer, f"codistill/{name}/{stat}")[0] == pytest.approx(1.0, abs=1e-4)


def test_kd_coef_zero_small_model_matches_plain_grpo(tiny, tmp_path):
    """With kd_coef = 0 the small model's update is GRPOTrainer's on the small model: same samples, losses, metrics."""
    common = tiny_training_kwargs(max_steps=2, **FAST)
    grpo = GRPOTrainer(
        str(tiny["explorer"]),
        [digit_reward],
        args=GRPOConfig(output_dir=str(tmp_path / "g"), **common),
        train_dataset=tiny_dataset(tiny),
    )
    grpo.train()
    cod = CoDistillTrainer(
        str(tiny["learner"]),
        [digit_reward],
        args=CoDistillConfig(output_dir=str(tmp_path / "c"), small_model=str(tiny["explorer"]), kd_coef=0.0, **common),
        train_dataset=tiny_dataset(tiny),
    )
    cod.train()
    assert any(abs(v) > 0 for v in logged(grpo, "grad_norm")), "the comparison needs a non-trivial gradient"
    pairs = {
        "small/loss": "loss",
        "small/grad_norm": "grad_norm",
        "small/entropy": "entropy",
        "small/learning_rate": "learning_rate",
        "codistill/reward/small": "reward",
        "completions/mean_length": "completions/mean_length",
        "small/clip_ratio/region_mean": "clip_ratio/region_mean",
    }
    for ours, theirs in pairs.items():
        assert logged(cod, ours) == pytest.approx(logged(grpo, theirs), rel=1e-6, abs=1e-7), ours
    for p_small, p_grpo in zip(cod.small_model.parameters(), grpo.model.parameters()):
        torch.testing.assert_close(p_small, p_grpo)


def test_a_step_trains_both_models_and_the_large_model_generates_nothing(tiny, tmp_path):
    trainer = codistill(tiny, tmp_path)
    calls = {"large": 0, "small": 0}
    for name, model in (("large", trainer.model), ("small", trainer.small_model)):
        original = model.generate

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        model.generate = counted
    before = {
        "large": [p.detach().clone() for p in trainer.model.parameters()],
        "small": [p.detach().clone() for p in trainer.small_model.parameters()],
    }
    trainer.train()
    assert calls == {"large": 0, "small": 1}
    assert logged(trainer, "s2l/learner_rows_generated") == [0.0]
    for name, model in (("large", trainer.model), ("small", trainer.small_model)):
        changed = [not torch.equal(a, b) for a, b in zip(before[name], model.parameters())]
        assert any(changed), f"the {name} model did not change"
    for key in ("codistill/kd_reward", "codistill/reward/small", "codistill/is_weight/max", "small/loss"):
        assert len(logged(trainer, key)) == 1, key
    assert logged(trainer, "codistill/is_weight/max")[0] <= 2.0
    trainer.save_model()
    out = tmp_path / "out"
    for sub in ("large_model", "small_model"):
        assert (out / sub / "model.safetensors").exists(), sub
        assert "CoDistill-GRPO provenance" in (out / sub / "README.md").read_text(), sub


def test_small_model_samples_and_trains_for_the_whole_run_by_default(tiny, tmp_path):
    # Longer than S2L-PO's default T_mix (8): CoDistill's default schedule must not end before the run does.
    trainer = codistill(tiny, tmp_path, max_steps=10)
    assert trainer.args.mix_steps == 10
    trainer.train()
    assert logged(trainer, "s2l/learner_rows_generated") == [0.0] * 10
    assert len(logged(trainer, "small/loss")) == 10


def test_schedules_that_stop_the_small_model_early_are_warned_about(tmp_path, caplog):
    base = dict(small_model="/small", **tiny_training_kwargs(output_dir=str(tmp_path)))
    base.pop("max_steps", None)
    with caplog.at_level("WARNING", logger="s2l_trl.codistill.config"):
        assert CoDistillConfig(**base, max_steps=50).mix_steps == 50
        assert not caplog.records
        assert CoDistillConfig(**base, max_steps=50, mix_steps=10).mix_steps == 10
        assert "stops training there" in caplog.text and "mix_steps=10 < max_steps=50" in caplog.text
        caplog.clear()
        CoDistillConfig(**base, max_steps=-1, num_train_epochs=1, mix_schedule="linear")
        assert "set mix_steps to the run's number of steps" in caplog.text


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, {}, "FSDP"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, {}, "DeepSpeed"),
        ({}, {"fsdp": "full_shard"}, "FSDP"),
    ],
)
def test_sharded_launches_are_refused_before_any_model_is_loaded(tmp_path, monkeypatch, env, args, named):
    config = CoDistillConfig(small_model="/nonexistent/small", **tiny_training_kwargs(output_dir=str(tmp_path)))
    # Set after __post_init__: Transformers' own DeepSpeed / FSDP set-up wants the package and a GPU.
    for key, value in args.items():
        setattr(config, key, value)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=f"DDP \\(or one process\\) only; {named} was requested"):
        CoDistillTrainer("/nonexistent/large", [digit_reward], args=config, train_dataset=[{"prompt": "1+1"}])


def _state(trainer):
    return {
        "large": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "small": {k: v.detach().clone() for k, v in trainer.small_model.state_dict().items()},
        "small_lr": trainer.small_lr_scheduler.get_last_lr()[0],
        "small_opt_steps": [s["step"].item() for s in trainer.small_optimizer.state_dict()["state"].values()],
        "step": trainer.state.global_step,
    }


def test_save_and_resume_restores_both_models_optimizers_schedule_and_step(tiny, tmp_path):
    common = dict(max_steps=2, save_strategy="steps", save_steps=1, small_learning_rate=3e-4, kd_coef=0.5)
    full = codistill(tiny, tmp_path / "full", **common)
    full.train()
    checkpoint = tmp_path / "full" / "out" / "checkpoint-1"
    assert (checkpoint / "small_model" / "optimizer.pt").exists()
    resumed = codistill(tiny, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = _state(full), _state(resumed)
    assert b["step"] == a["step"] == 2
    assert b["small_lr"] == a["small_lr"]
    assert b["small_opt_steps"] == a["small_opt_steps"]
    for model in ("large", "small"):
        for key in a[model]:
            torch.testing.assert_close(b[model][key], a[model][key], msg=f"{model}: {key}")


def test_s2l_codistill_cli_trains_the_tiny_recipe_and_saves_both_models(tiny, tmp_path):
    import json
    from pathlib import Path

    from s2l_trl.cli.codistill import cli

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "codistill" / "config_cpu.yaml"
    out = tmp_path / "out"
    cli(
        [
            "--config",
            str(recipe),
            "--model_name_or_path",
            str(tiny["learner"]),
            "--small_model",
            str(tiny["explorer"]),
            "--dataset_name",
            str(tiny["dataset"]),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
        ]
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [h["s2l/alpha"] for h in state["log_history"] if "s2l/alpha" in h] == [1.0, 1.0]
    assert all("codistill/kd_reward" in h and "small/loss" in h for h in state["log_history"] if "loss" in h)
    for sub in ("large_model", "small_model"):
        assert (out / sub / "config.json").exists() and (out / sub / "README.md").exists()
