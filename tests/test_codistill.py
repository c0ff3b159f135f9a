"""CoDistill-GRPO (s2l_trl.codistill): the KD reward, the importance weights, one module and one optimizer for both
models, mixed precision, steps without small rows, ignored settings, save / resume, and the KD update's direction."""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from trainer_utils import digit_reward, logged, tiny_dataset
from trl import GRPOConfig, GRPOTrainer

from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer, objectives
from s2l_trl.codistill.module import CoDistillModule
from s2l_trl.devtools.tiny import tiny_training_kwargs
from s2l_trl.mixing import explorer_is_weights
from s2l_trl.preflight import InputError
from s2l_trl.schedule import SCHEDULES

FAST = dict(max_completion_length=8)
SCRIPTS = Path(__file__).parent / "scripts"


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
    known = objectives.known_tokens(large, small, mask, rows)
    dense = objectives.dense_small_advantages(torch.tensor([1.0, -1.0]), tokens, known, 0.5)
    assert dense[0, 0].item() == pytest.approx(1.0 + 0.5 * math.log(4.0))
    assert dense[0, 2].item() == 1.0  # padding: the sequence advantage only


def test_config_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="kd_mode.*'dense'"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, kd_mode="dense")
    with pytest.raises(ValueError, match="kd_baseline.*'median'"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, kd_baseline="median")
    with pytest.raises(ValueError, match="kd_coef.*-1"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, kd_coef=-1.0)
    with pytest.raises(ValueError, match="beta=0.04"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, beta=0.04)
    with pytest.raises(ValueError, match="cast_lm_head_to_fp32=True"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, cast_lm_head_to_fp32=True)
    args = CoDistillConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (args.mix_schedule, args.mix_alpha_start, args.explorer_importance_sampling) == (
        "constant",
        1.0,
        "token_truncate",
    )
    assert args.explorer_importance_sampling_clip_max == 2.0
    assert args.kd_baseline == "mean"


# ---------------------------------------------------------------- case 4: settings that would be ignored
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(explorer_temperature=0.3), r"explorer_temperature=0.3 differs from temperature=1.0"),
        (dict(explorer_top_p=0.9), r"explorer_top_p=0.9 differs from top_p=1.0"),
        (dict(explorer_max_tokens=4), r"explorer_max_tokens=4 differs from max_completion_length=8"),
        (dict(explorer_mode="offline"), r"explorer_mode='offline' is ignored by CoDistill"),
        (dict(explorer_server_base_url="http://10.0.0.1:8001"), r"explorer_server_base_url=.* is ignored"),
        (dict(explorer_rollouts="/data/rollouts.jsonl"), r"explorer_rollouts=.* is ignored"),
        (dict(explorer_model="/other/model"), r"explorer_model='/other/model' differs from small_model"),
    ],
)
def test_settings_codistill_would_ignore_are_refused(tmp_path, overrides, named):
    with pytest.raises(ValueError, match=named):
        CoDistillConfig(
            small_model="/small", output_dir=str(tmp_path), use_cpu=True, max_completion_length=8, **overrides
        )


def test_sampling_settings_that_agree_are_accepted_and_follow_trl(tmp_path):
    args = CoDistillConfig(
        small_model="/small", output_dir=str(tmp_path), use_cpu=True, temperature=0.6, explorer_temperature=0.6
    )
    assert args.explorer_temperature == 0.6 and args.explorer_top_p == args.top_p
    assert CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, temperature=0.8).explorer_temperature == 0.8


def test_mix_schedule_help_lists_exactly_the_schedules_that_run(tmp_path):
    text = CoDistillConfig.__dataclass_fields__["mix_schedule"].metadata["help"]
    assert "step" not in text.replace("steps", "")
    for name in SCHEDULES:
        assert repr(name) in text or f'"{name}"' in text, name
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, mix_schedule=name, max_steps=4, mix_steps=4)


@pytest.mark.parametrize("explorer_is", ["token_truncate", "none"])
def test_a_small_model_with_another_tokenizer_is_refused_first_and_leaves_no_output_dir(
    tiny, tmp_path, foreign_explorer, explorer_is
):
    """The real cause comes first (not the IS advice), before the small model loads or TRL creates output_dir."""
    from s2l_trl.preflight import InputError

    with pytest.raises(InputError, match=r"small_model='.*explorer' does not share the tokenizer of model="):
        codistill(tiny, tmp_path, small=foreign_explorer, explorer_importance_sampling=explorer_is)
    assert not (tmp_path / "out").exists()


def test_a_small_model_larger_than_the_large_one_is_refused_from_the_configs(tiny, tmp_path, caplog, monkeypatch):
    """Swapped arguments: refused before either model's weights are read, naming both parameter counts; the same
    size is warned about (a legitimate ablation, but nothing saved)."""
    from s2l_trl.codistill import config as codistill_config
    from s2l_trl.preflight import InputError

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the size check")

    with monkeypatch.context() as patch:
        patch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_weights)
        with pytest.raises(InputError) as info:
            codistill(tiny, tmp_path, large=tiny["explorer"], small=tiny["learner"])
    large = codistill_config.parameter_count(str(tiny["explorer"]))
    small = codistill_config.parameter_count(str(tiny["learner"]))
    assert 0 < large < small
    message = str(info.value)
    assert f"has {small:,} parameters, more than model=" in message and f"({large:,})" in message
    assert "Swap the two" in message and not (tmp_path / "out").exists()
    with caplog.at_level("WARNING", logger="s2l_trl.codistill.config"):
        codistill_config.check_model_sizes(str(tiny["learner"]), str(tiny["learner"]))
    assert "has as many parameters as model=" in caplog.text


# ---------------------------------------------------------------- case 2: the KD sign, by hand
def test_kd_sign_and_scale_on_a_hand_computed_two_token_example(tiny, tmp_path, monkeypatch):
    """One group of 4 small-model rows with two tokens each. Token 0: pi_large 0.5, pi_small 0.25 (the large model
    prefers it: r = log 2). Token 1: pi_large 0.1, pi_small 0.4 (r = log 0.25). The baseline is the mean r,
    (log 2 + log 0.25) / 2 = -log(2) / 2, so with kd_coef 0.5 token 0 gains 0.5 * 1.5 log 2 and token 1 loses as much,
    on top of each row's verifiable advantage. The large model's advantages get the weights min(pi_l / pi_s, 2)."""
    trainer = codistill(tiny, tmp_path, kd_coef=0.5)
    large = torch.log(torch.tensor([[0.5, 0.1]] * 4))
    small = torch.log(torch.tensor([[0.25, 0.4]] * 4))
    monkeypatch.setattr(trainer, "_learner_logps", lambda output: large.clone())
    monkeypatch.setattr(trainer, "_small_logps", lambda output: small.clone())
    output = {"completion_mask": torch.ones(4, 2, dtype=torch.long), "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5])}
    rnd = SimpleNamespace(explorer=None, rewards_per_func=torch.tensor([[1.0], [0.0], [0.75], [0.25]]))
    trainer._explorer_off_policy_terms(output, rnd, torch.ones(4, dtype=torch.bool))

    kd = 0.5 * 1.5 * math.log(2.0)
    expected_small = torch.tensor(
        [[1.0 + kd, 1.0 - kd], [-1.0 + kd, -1.0 - kd], [0.5 + kd, 0.5 - kd], [-0.5 + kd, -0.5 - kd]]
    )
    torch.testing.assert_close(output["codistill_small_advantages"], expected_small)
    expected_large = torch.tensor([1.0, -1.0, 0.5, -0.5]).unsqueeze(1) * torch.tensor([[2.0, 0.25]])
    torch.testing.assert_close(output["advantages"], expected_large)
    assert output["codistill_small_num_items"].item() == 8
    assert logged_now(trainer, "codistill/kd_reward") == pytest.approx(-math.log(2.0) / 2)


def test_large_row_weight_bounds_keep_the_large_model_off_implausible_rows(tiny, tmp_path, monkeypatch):
    """Rows 0-1: the large model prefers each token 2:1 (geometric-mean weight 2); rows 2-3: 1:10 (0.1). With bounds
    [0.5, inf] the large model's advantages vanish on rows 2-3 only; the small model's are untouched."""
    with pytest.raises(ValueError, match=r"large_row_weight_bounds.*\[2.0, 1.0\]"):
        CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, large_row_weight_bounds=[2.0, 1.0])
    trainer = codistill(
        tiny, tmp_path, large_row_weight_bounds=[0.5, float("inf")], explorer_importance_sampling="none"
    )
    large = torch.log(torch.tensor([[0.4, 0.4]] * 2 + [[0.02, 0.02]] * 2))
    small = torch.log(torch.tensor([[0.2, 0.2]] * 2 + [[0.2, 0.2]] * 2))
    monkeypatch.setattr(trainer, "_learner_logps", lambda output: large.clone())
    monkeypatch.setattr(trainer, "_small_logps", lambda output: small.clone())
    verifiable = torch.tensor([1.0, -1.0, 0.5, -0.5])
    output = {"completion_mask": torch.ones(4, 2, dtype=torch.long), "advantages": verifiable.clone()}
    rnd = SimpleNamespace(explorer=None, rewards_per_func=torch.tensor([[1.0], [0.0], [0.75], [0.25]]))
    trainer._explorer_off_policy_terms(output, rnd, torch.ones(4, dtype=torch.bool))
    kept = output["advantages"].expand(4, 2)  # (B, 1) without IS weights: TRL broadcasts it over the tokens
    torch.testing.assert_close(kept, torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0]]))
    assert logged_now(trainer, "codistill/large_rows_kept") == 0.5
    assert (output["codistill_small_advantages"][2:] != 0).all()


def logged_now(trainer, key: str) -> float:
    return trainer._metrics["train"][key][-1]


# ---------------------------------------------------------------- one module, one optimizer
def test_both_models_are_one_module_with_one_optimizer_and_their_own_lr_decay_and_schedule(tiny, tmp_path):
    trainer = codistill(
        tiny,
        tmp_path,
        max_steps=4,
        learning_rate=1e-4,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        small_learning_rate=3e-4,
        small_lr_scheduler_type="constant",
        small_weight_decay=0.1,
    )
    assert isinstance(trainer.model, CoDistillModule)
    assert trainer.model.large is trainer.large_model and trainer.model.small is trainer.small_model
    trainer.train()
    groups = trainer.optimizer.param_groups
    roles = trainer._optimizer_roles
    assert sorted(set(roles)) == ["large", "small"] and len(groups) == len(roles)
    ids = {role: {id(p) for g, r in zip(groups, roles) if r == role for p in g["params"]} for role in set(roles)}
    assert ids["large"] == {id(p) for p in trainer.large_model.parameters() if p.requires_grad}
    assert ids["small"] == {id(p) for p in trainer.small_model.parameters() if p.requires_grad}
    assert max(g["weight_decay"] for g, r in zip(groups, roles) if r == "small") == 0.1
    assert max(g["weight_decay"] for g, r in zip(groups, roles) if r == "large") == 0.0
    # Linear decay to 0 for the large model, constant 3e-4 for the small one, logged at each step.
    assert logged(trainer, "small/learning_rate") == pytest.approx([3e-4] * 4)
    assert logged(trainer, "learning_rate") == pytest.approx([1e-4, 0.75e-4, 0.5e-4, 0.25e-4])


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
        assert logged(cod, ours) == pytest.approx(logged(grpo, theirs), rel=1e-5, abs=1e-7), ours
    for p_small, p_grpo in zip(cod.small_model.parameters(), grpo.model.parameters()):
        torch.testing.assert_close(p_small, p_grpo)


def test_a_step_trains_both_models_and_the_large_model_generates_nothing(tiny, tmp_path):
    trainer = codistill(tiny, tmp_path, log_completions=True)
    calls = {"large": 0, "small": 0}
    for name, model in (("large", trainer.large_model), ("small", trainer.small_model)):
        original = model.generate

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        model.generate = counted
    before = {
        "large": [p.detach().clone() for p in trainer.large_model.parameters()],
        "small": [p.detach().clone() for p in trainer.small_model.parameters()],
    }
    trainer.train()
    assert calls == {"large": 0, "small": 1}
    assert logged(trainer, "s2l/learner_rows_generated") == [0.0]
    for name, model in (("large", trainer.large_model), ("small", trainer.small_model)):
        changed = [not torch.equal(a, b) for a, b in zip(before[name], model.parameters())]
        assert any(changed), f"the {name} model did not change"
    for key in ("codistill/kd_reward", "codistill/reward/small", "codistill/is_weight/max", "small/loss"):
        assert len(logged(trainer, key)) == 1, key
    assert logged(trainer, "codistill/is_weight/max")[0] <= 2.0
    # TRL's completions table names the rows by the model that sampled them.
    assert (
        list(pd.read_parquet(tmp_path / "out" / "completions" / "completions_00001.parquet")["source"]) == ["small"] * 8
    )
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


# ---------------------------------------------------------------- case 3: steps without small rows
class _Snapshots:
    """Records one model's weights and its optimizer state after every optimizer step (the small one by default)."""

    def __init__(self, model: str = "small_model"):
        self.model = model
        self.weights, self.states = [], []

    def attach(self, trainer):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                params = list(getattr(trainer, outer.model).parameters())
                outer.weights.append([p.detach().clone() for p in params])
                opt = trainer.optimizer
                outer.states.append(
                    [{k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else {} for p in params]
                )

        trainer.add_callback(Callback())
        return self


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0])
def test_steps_without_small_rows_leave_the_small_model_and_its_optimizer_state_alone(tiny, tmp_path, max_grad_norm):
    # T_mix = 1 < max_steps = 3: the small model samples (and trains) in step 1 only.
    trainer = codistill(tiny, tmp_path, max_steps=3, mix_steps=1, max_grad_norm=max_grad_norm, weight_decay=0.1)
    snaps = _Snapshots().attach(trainer)
    large_after_1 = []
    trainer.train()
    assert logged(trainer, "s2l/explorer_rows_per_group") == [4.0, 0.0, 0.0]
    assert len(logged(trainer, "small/loss")) == 1 and trainer.small_optimizer_steps == 1
    for step in (1, 2):
        for a, b in zip(snaps.weights[0], snaps.weights[step]):
            assert torch.equal(a, b), "the small model moved in a step without small rows (momentum / weight decay)"
        for a, b in zip(snaps.states[0], snaps.states[step]):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "its optimizer state moved"
    del large_after_1
    assert logged(trainer, "learning_rate")[-1] >= 0 and len(logged(trainer, "grad_norm")) == 3


# ---------------------------------------------------------------- large_skip_zero_gradient
class _ConstantAfterFirstRound:
    """A reward with distinct values in the first round (a non-zero large-model gradient) and one value for every row
    after it: every advantage is 0, so the large model's gradient is exactly zero, while the small model's KD reward
    (kd_coef > 0) still trains it."""

    __name__ = "constant_after_first_round"

    def __init__(self):
        self.calls = 0

    def __call__(self, completions, **kwargs):
        self.calls += 1
        return [float(i) if self.calls == 1 else 0.5 for i in range(len(completions))]


def _skip_run(tiny, tmp_path, **overrides):
    kwargs = tiny_training_kwargs(output_dir=str(tmp_path / "out"), max_steps=2, **FAST, **overrides)
    return CoDistillTrainer(
        str(tiny["learner"]),
        [_ConstantAfterFirstRound()],
        args=CoDistillConfig(small_model=str(tiny["explorer"]), **kwargs),
        train_dataset=tiny_dataset(tiny),
    )


# AdamW, step 1 with a gradient, step 2 without. Off: step 2 still moves the large model, by momentum alone (no
# weight decay), and advances its Adam state. On: step 2 leaves the weights (weight decay 0.1 included) and the state
# bit-identical.
@pytest.mark.parametrize(("skip", "weight_decay"), [(True, 0.1), (False, 0.0)])
def test_large_skip_zero_gradient_leaves_the_large_model_and_its_optimizer_state_alone(
    tiny, tmp_path, skip, weight_decay
):
    trainer = _skip_run(tiny, tmp_path, large_skip_zero_gradient=skip, weight_decay=weight_decay)
    initial = [p.detach().clone() for p in trainer.large_model.parameters()]
    large, small = _Snapshots("large_model").attach(trainer), _Snapshots().attach(trainer)
    trainer.train()
    norms = logged(trainer, "codistill/grad_norm/large")
    assert norms[0] > 0 and norms[1] == 0.0, norms
    # Step 1, a non-zero gradient: the large model moves and gets its Adam state, with the option on or off.
    assert any(not torch.equal(a, b) for a, b in zip(initial, large.weights[0]))
    assert all(s and int(s["step"]) == 1 for s in large.states[0])
    # Step 2: the small model steps normally either way.
    assert any(not torch.equal(a, b) for a, b in zip(small.weights[0], small.weights[1]))
    same_weights = all(torch.equal(a, b) for a, b in zip(large.weights[0], large.weights[1]))
    same_state = all(
        a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for a, b in zip(large.states[0], large.states[1])
    )
    if skip:
        assert same_weights, "a zero-gradient step moved the large model (momentum / weight decay)"
        assert same_state, "a zero-gradient step changed the large model's optimizer state"
        assert logged(trainer, "codistill/large_steps_skipped") == [0.0, 1.0]
    else:
        assert not same_weights, "AdamW's momentum no longer moves the large model at a zero-gradient step"
        assert all(int(s["step"]) == 2 for s in large.states[1]) and not same_state
        assert logged(trainer, "codistill/large_steps_skipped") == []


def test_large_skip_zero_gradient_is_refused_under_deepspeed_before_anything_is_loaded(tiny, tmp_path, monkeypatch):
    args = CoDistillConfig(
        small_model=str(tiny["explorer"]),
        **tiny_training_kwargs(output_dir=str(tmp_path / "out"), large_skip_zero_gradient=True),
    )
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with a DeepSpeed config sets
    with pytest.raises(InputError, match=r"large_skip_zero_gradient=True .* set large_skip_zero_gradient=False"):
        CoDistillTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- case 1: gradient scale under mixed precision
def _one_step(tiny, tmp_path, name, prepare=None, **overrides):
    trainer = codistill(tiny, tmp_path / name, max_steps=1, max_grad_norm=1e9, **overrides)
    if prepare is not None:
        prepare(trainer)
    trainer.train()
    return trainer


def test_fp16_grad_scaler_scales_both_models_gradients_once(tiny, tmp_path, monkeypatch):
    """One gradient scaler for the one optimizer: the large model's gradient under a 2^16 loss scale equals the
    unscaled run's (the old two-optimizer design unscaled it twice: 1.5e-5 of the true gradient). accelerate has no
    fp16 scaler on CPU, so the test installs torch's CPU GradScaler (compute stays fp32, so the comparison is exact
    up to float rounding)."""
    from accelerate import Accelerator

    def with_scaler(trainer):
        from transformers import TrainerCallback

        acc = trainer.accelerator
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # handed to the optimizer by `prepare`

        class AmpOn(TrainerCallback):
            # After `prepare` (which would wrap the forward in fp16 autocast): compute stays fp32, and accelerate's
            # unscale is active.
            def on_train_begin(self, args, state, control, **kwargs):
                acc.native_amp = True

        acc.autocast = lambda *a, **k: contextlib.nullcontext()
        trainer.add_callback(AmpOn())

    plain = _one_step(tiny, tmp_path, "plain")
    monkeypatch.setattr(Accelerator, "mixed_precision", property(lambda self: "fp16"))
    scaled = _one_step(tiny, tmp_path, "scaled", prepare=with_scaler)
    assert scaled.accelerator.scaler.get_scale() == 2.0**16, "the step was skipped (inf/nan) or the scale moved"
    # Same step, same fp32 compute: the 2^16 loss scale is undone exactly once (a double unscale is off by 65,536x).
    for key in ("grad_norm", "small/grad_norm", "loss"):
        assert logged(scaled, key) == pytest.approx(logged(plain, key), rel=1e-5), key
    for a, b in zip(plain.model.parameters(), scaled.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_on_cpu_gives_the_unmixed_gradient_scale(tiny, tmp_path):
    plain = _one_step(tiny, tmp_path, "fp32")
    mixed = _one_step(tiny, tmp_path, "bf16", bf16=True)
    for key in ("grad_norm", "small/grad_norm"):
        ratio = logged(mixed, key)[0] / logged(plain, key)[0]
        assert 0.9 < ratio < 1.1, (key, ratio)


# ---------------------------------------------------------------- case 6: the KD update distils in both regimes
def _regimes():
    sys.path.insert(0, str(SCRIPTS))
    import codistill_kd_regimes

    return codistill_kd_regimes


@pytest.mark.parametrize(("regime", "steps", "at_most"), [("far", 30, 0.985), ("close", 15, 0.6)])
def test_kd_update_moves_the_small_model_toward_the_large_one(tiny, tmp_path, regime, steps, at_most):
    """Zero verifiable reward, the large model frozen, kd_coef 1: the reverse KL(small || large) on the small model's
    own samples must fall, both when the two models start far apart (~4.7 nats/token) and close (~0.1). Measured
    over 40 steps and 3 seeds (tests/scripts/codistill_kd_regimes.py): far 4.72 -> 4.53 with the mean baseline,
    4.68 without; close 0.101 -> 0.011 with, 0.018 without."""
    result = _regimes().run(tmp_path, tiny, regime, "mean", seed=0, steps=steps)
    assert result["large_frozen"]
    assert result["after"] < at_most * result["before"], result


# ---------------------------------------------------------------- save / resume / CLI
def _state(trainer):
    return {
        "large": {k: v.detach().clone() for k, v in trainer.large_model.state_dict().items()},
        "small": {k: v.detach().clone() for k, v in trainer.small_model.state_dict().items()},
        "lrs": [g["lr"] for g in trainer.optimizer.param_groups],
        "opt_steps": [s["step"].item() for s in trainer.optimizer.state_dict()["state"].values()],
        "small_steps": trainer.small_optimizer_steps,
        "step": trainer.state.global_step,
    }


def test_save_and_resume_restores_both_models_the_optimizer_schedule_and_step(tiny, tmp_path):
    common = dict(max_steps=2, save_strategy="steps", save_steps=1, small_learning_rate=3e-4, kd_coef=0.5)
    full = codistill(tiny, tmp_path / "full", **common)
    full.train()
    checkpoint = tmp_path / "full" / "out" / "checkpoint-1"
    assert (checkpoint / "small_model" / "model.safetensors").exists() and (checkpoint / "model.safetensors").exists()
    resumed = codistill(tiny, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = _state(full), _state(resumed)
    assert b["step"] == a["step"] == 2
    assert b["lrs"] == a["lrs"]
    assert b["opt_steps"] == a["opt_steps"]
    for model in ("large", "small"):
        for key in a[model]:
            torch.testing.assert_close(b[model][key], a[model][key], msg=f"{model}: {key}")


def test_s2l_codistill_cli_trains_the_tiny_recipe_and_saves_both_models(tiny, tmp_path):
    import json

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


# ---------------------------------------------------------------- the FLOP model of the step time
def test_flop_model_of_codistill_step_time():
    from s2l_trl.miniature.codistill_cost import PAPER, eta_for_saving, flops_per_step, time_ratio

    rho = PAPER["small_params"] / PAPER["large_params"]
    # In FLOPs CoDistill costs more than GRPO on the large model: (8 + 10 rho) / 8 at equal generation efficiency
    # (the small model's sampling 2 rho, both models' scoring 2 + 2 rho, both updates 6 + 6 rho; GRPO: 2 + 6).
    assert time_ratio(rho, 1.0) == pytest.approx((8 + 10 * rho) / 8)
    flops = flops_per_step(7.0, 1.0, rows=2, tokens_per_row=3.0)
    assert sum(flops["codistill"].values()) / sum(flops["grpo_large"].values()) == pytest.approx((8 + 10 / 7) / 8)
    # Slow generation (memory-bound decoding) is what makes the small model's rollouts pay: the paper's 18%.
    eta = eta_for_saving(rho, 0.18)
    assert 0.2 < eta < 0.3 and time_ratio(rho, eta) == pytest.approx(0.82)
    assert time_ratio(rho, eta / 2) < 0.82 < time_ratio(rho, 2 * eta)


@pytest.mark.parametrize("kd_mode", ["token", "full_kl"])
def test_lora_on_both_models_with_gradient_checkpointing_trains_only_the_adapters(tiny, tmp_path, kd_mode):
    """`full_kl` too: the exact KL reaches the small model's adapter through PEFT's wrapper and checkpointed layers."""
    from peft import LoraConfig

    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    kwargs = tiny_training_kwargs(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        gradient_checkpointing=True,
        learning_rate=1e-3,
        kd_mode=kd_mode,
        kd_coef=1.0,
        **FAST,
    )
    trainer = CoDistillTrainer(
        str(tiny["learner"]),
        [digit_reward],
        args=CoDistillConfig(small_model=str(tiny["explorer"]), **kwargs),
        train_dataset=tiny_dataset(tiny),
        peft_config=LoraConfig(**lora),
        small_peft_config=LoraConfig(**lora),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.large_model.is_gradient_checkpointing and trainer.small_model.is_gradient_checkpointing
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    for role in ("large", "small"):
        assert any(n.startswith(f"{role}.") and "lora_" in n for n in changed), f"the {role} adapter did not train"
    assert all("lora_" in n for n in changed), sorted(n for n in changed if "lora_" not in n)[:3]
    assert len(logged(trainer, "codistill/kd_kl")) == 2
    trainer.save_model()
    for sub in ("large_model", "small_model"):
        assert (tmp_path / "out" / sub / "adapter_model.safetensors").exists(), sub


def test_each_model_is_clipped_by_its_own_norm_and_both_norms_are_logged(tiny, tmp_path):
    """One step of plain SGD at learning rate 1 moves each model by exactly its clipped gradient: the large model by
    `max_grad_norm` (0.05), the small one by `small_max_grad_norm` (0.02), both far below their unclipped norms, which
    are logged as `codistill/grad_norm/large` (also TRL's `grad_norm`) and `codistill/grad_norm/small`. Without the
    clip (torch's `clip_grads_with_norm_` given the gradients instead of the parameters scales nothing) each model
    would move by its whole gradient."""
    trainer = codistill(
        tiny,
        tmp_path,
        max_grad_norm=0.05,
        small_max_grad_norm=0.02,
        optim="sgd",
        learning_rate=1.0,
        per_device_train_batch_size=4,
        max_completion_length=4,
    )
    roles = ("large", "small")
    before = {role: [p.detach().clone() for p in trainer.codistill.role_parameters(role)] for role in roles}
    trainer.train()
    for role, clip in (("large", 0.05), ("small", 0.02)):
        moved = torch.stack(
            [(p.detach() - b).double().norm() for p, b in zip(trainer.codistill.role_parameters(role), before[role])]
        ).norm()
        norm = logged(trainer, f"codistill/grad_norm/{role}")
        assert len(norm) == 1 and norm[0] > 10 * clip, (role, norm)
        assert float(moved) == pytest.approx(clip, rel=1e-3), role
    assert logged(trainer, "grad_norm") == logged(trainer, "codistill/grad_norm/large")
