import math

import pytest

from s2l_trl import S2LConfig, make_alpha_fn, mix_alpha, split_group


def g_w_sequence(schedule, G, T, steps, **kw):
    return [split_group(mix_alpha(i, schedule, T, **kw), G)[0] for i in range(1, steps + 1)]


def test_linear_schedule_matches_paper_table():
    # G = 16, T_mix = 8: the example of the issue (and of Algorithm 1), then fully on-policy.
    assert g_w_sequence("linear", 16, 8, 10) == [16, 14, 12, 10, 7, 5, 3, 0, 0, 0]


def test_learner_rows_are_what_the_rounded_up_explorer_count_leaves():
    # G = 16, T_mix = 8: alpha_2 = 6/7 -> 13.71 explorer rows, rounded *up* to 14, so the learner gets 2 (not the
    # 3 that rounding the learner's share (1/7 * 16 = 2.29) up would give, nor the 13.71 -> 14 of plain rounding at
    # step 6, where 2/7 * 16 = 4.57 explorer rows leave the learner 11).
    learner = [split_group(mix_alpha(step, "linear", 8), 16)[1] for step in range(1, 10)]
    assert learner == [0, 2, 4, 6, 9, 11, 13, 16, 16]


def test_constant_schedule_holds_then_drops_to_zero():
    assert g_w_sequence("constant", 8, 3, 5, alpha_start=0.5) == [4, 4, 4, 0, 0]


def test_cosine_schedule_endpoints_and_monotone():
    alphas = [mix_alpha(i, "cosine", 5) for i in range(1, 7)]
    assert alphas[0] == pytest.approx(1.0) and alphas[4] == pytest.approx(0.0) and alphas[5] == 0.0
    assert alphas[2] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(alphas, alphas[1:]))
    # cosine decays slower than linear early on
    assert mix_alpha(2, "cosine", 5) > mix_alpha(2, "linear", 5)


def test_alpha_start_end_interpolate():
    assert mix_alpha(1, "linear", 3, 0.8, 0.2) == pytest.approx(0.8)
    assert mix_alpha(2, "linear", 3, 0.8, 0.2) == pytest.approx(0.5)
    assert mix_alpha(3, "linear", 3, 0.8, 0.2) == pytest.approx(0.2)
    assert mix_alpha(4, "linear", 3, 0.8, 0.2) == 0.0


def test_single_mix_step():
    assert g_w_sequence("linear", 4, 1, 3) == [4, 0, 0]


def test_ceil_is_not_fooled_by_float_noise():
    # G = 9, T_mix = 4: alpha_3 = 1 - 2/3 is 0.33333333333333337 in floating point and alpha_3 * 9 is
    # 3.0000000000000004, so a naive ceil gives 4 explorer rows instead of 3 (likewise 6/7 of 7 at T_mix = 8).
    alpha = mix_alpha(3, "linear", 4)
    assert alpha * 9 > 3 and split_group(alpha, 9) == (3, 6)
    assert mix_alpha(7, "linear", 8) * 7 > 1 and split_group(mix_alpha(7, "linear", 8), 7) == (1, 6)
    assert split_group(0.0, 4) == (0, 4) and split_group(1.0, 4) == (4, 0)


def test_callable_schedule_is_checked():
    fn = make_alpha_fn(lambda step: 0.25)
    assert fn(3) == 0.25
    with pytest.raises(ValueError, match=r"alpha=1\.5 at step 2"):
        make_alpha_fn(lambda step: 1.5)(2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mix_steps": 0}, "mix_steps"),
        ({"mix_alpha_start": 1.2}, "mix_alpha_start"),
        ({"mix_alpha_end": -0.1}, "mix_alpha_end"),
        ({"mix_schedule": "exponential"}, "mix_schedule"),
        ({"explorer_mode": "remote"}, "explorer_mode"),
        ({"explorer_importance_sampling": "clip"}, "explorer_importance_sampling"),
        ({"advantage_grouping": "global"}, "advantage_grouping"),
        ({"explorer_mode": "local"}, "explorer_model"),
        ({"explorer_mode": "offline"}, "explorer_rollouts"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, field, tmp_path):
    with pytest.raises(ValueError, match=field):
        S2LConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **kwargs)


def test_group_size_below_two_is_rejected(tmp_path):
    # GRPOConfig itself may reject G=1 first; either way the error names num_generations.
    with pytest.raises(ValueError, match="num_generations"):
        S2LConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            report_to="none",
            num_generations=1,
            per_device_train_batch_size=2,
        )


def test_mix_alpha_rejects_step_zero():
    with pytest.raises(ValueError, match="step"):
        mix_alpha(0)
    assert math.isclose(mix_alpha(1), 1.0)
