"""The pure mixing logic, on hand-made lists and tensors."""

from __future__ import annotations

import math

import pytest
import torch

from s2l_trl import mixing


def test_rows_of_a_group_straddling_two_processes():
    # G = 4, 6 rows per process: process 1 holds slots 2, 3 of group 1 and all of group 2.
    p0 = mixing.place_rows(0, 6, 4, g_w=3)
    p1 = mixing.place_rows(1, 6, 4, g_w=3)
    assert p0.slots == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    assert p1.slots == [(1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert p0.is_explorer == [True, True, True, False, True, True]
    assert p1.is_explorer == [True, False, True, True, True, False]
    assert p0.group_heads == [0, 4] and p1.group_heads == [2]
    assert p1.learner_rows == [1, 5] and p1.explorer_rows == [0, 2, 3, 4]
    # A process can hold explorer rows only (G = 4, 2 rows per process, G_w = 2).
    assert mixing.place_rows(0, 2, 4, g_w=2).learner_rows == []
    assert mixing.place_rows(1, 2, 4, g_w=2).explorer_rows == []
    with pytest.raises(ValueError, match="g_w"):
        mixing.place_rows(0, 4, 4, g_w=5)


def test_explorer_answer_index_is_prompt_major():
    # Answer holds g_w = 3 rows per requested group; group requested second, slot 1 -> row 4.
    assert mixing.explorer_answer_index(1, 1, 3) == 4
    with pytest.raises(ValueError, match="slot 3"):
        mixing.explorer_answer_index(0, 3, 3)


def test_cut_completion_follows_the_learner_rules():
    eos = [9]
    assert mixing.cut_completion([1, 2, 9, 4], [-1.0, -2.0, -3.0, -4.0], eos, 16, 9) == ([1, 2, 9], [-1.0, -2.0, -3.0])
    assert mixing.cut_completion([1, 2, 3, 4], None, eos, 3, 9) == ([1, 2, 3], None)
    ids, logps = mixing.cut_completion([], [], eos, 16, 9)  # an empty answer is a finished empty answer
    assert ids == [9] and len(logps) == 1 and math.isnan(logps[0])


def test_per_source_advantages_on_hand_made_table():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    is_explorer = torch.tensor([True, True, False, False, True, False, False, False])
    adv = mixing.per_source_advantages(rewards, is_explorer, 4, "none")
    # group 1: explorer {1, 0} mean .5, learner {1, 1} mean 1; group 2: explorer {0} alone, learner {0, 1, 0} mean 1/3
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, -1 / 3, 2 / 3, -1 / 3])
    adv = mixing.per_source_advantages(rewards, is_explorer, 4, "group")
    std = torch.tensor([1.0, 0.0]).std().item()  # sample std of {1, 0}
    assert adv[:2].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)], rel=1e-5)
    assert adv[4].item() == 0.0 and adv[2].item() == 0.0
    adv = mixing.per_source_advantages(rewards, is_explorer, 4, "batch")
    assert adv[0].item() == pytest.approx(0.5 / (rewards.std().item() + 1e-4), rel=1e-5)
    # An unscorable row (NaN reward) is left out of its source's baseline and gets advantage 0.
    rewards[1] = torch.nan
    adv = mixing.per_source_advantages(rewards, is_explorer, 4, "none")
    assert adv[:2].tolist() == [0.0, 0.0]


def test_explorer_is_weights_token_and_sequence_modes():
    learner = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    explorer = torch.tensor([[-3.0, -1.5, float("nan")], [float("nan")] * 3])  # row 1 is a learner row
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    is_explorer = torch.tensor([True, False])
    w, stats = mixing.explorer_is_weights(learner, explorer, mask, is_explorer, "token_truncate", None, 3.0)
    # e^2 clipped to 3, e^0.5 kept, padding 1; the learner row is untouched.
    assert w[0].tolist() == pytest.approx([3.0, math.exp(0.5), 1.0])
    assert w[1].tolist() == [1.0, 1.0, 1.0]
    assert stats.tolist() == pytest.approx([3.0, math.exp(0.5)])
    w, _ = mixing.explorer_is_weights(learner, explorer, mask, is_explorer, "token_mask", None, 3.0)
    assert w[0].tolist() == pytest.approx([0.0, math.exp(0.5), 1.0])
    w, stats = mixing.explorer_is_weights(learner, explorer, mask, is_explorer, "sequence_truncate", 0.5, 100.0)
    assert w[0].tolist() == pytest.approx([math.exp(2.5)] * 3) and stats.tolist() == pytest.approx([math.exp(2.5)])
    w, _ = mixing.explorer_is_weights(learner, explorer, mask, is_explorer, "sequence_mask", None, 3.0)
    assert w[0].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="mode"):
        mixing.explorer_is_weights(learner, explorer, mask, is_explorer, "none", None, 3.0)


def test_mean_logp_gap_counts_known_explorer_tokens_only():
    learner = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    explorer = torch.tensor([[-3.0, float("nan"), -5.0], [-9.0, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    total, count = mixing.mean_logp_gap(learner, explorer, mask, torch.tensor([True, False]))
    assert (total.item(), count.item()) == (2.0, 1.0)


def test_off_policy_mask_logps_per_source():
    is_explorer = torch.tensor([True, False])
    sampling = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])
    own = torch.tensor([[-5.0, -5.0], [float("nan")] * 2])
    kept = mixing.off_policy_mask_logps(sampling, is_explorer, own, False, (2, 2))
    assert torch.isnan(kept[0]).all() and kept[1].tolist() == [-2.0, -2.0]
    judged = mixing.off_policy_mask_logps(sampling, is_explorer, own, True, (2, 2))
    assert judged[0].tolist() == [-5.0, -5.0] and judged[1].tolist() == [-2.0, -2.0]
    # Without sampling log-probs learner rows see NaN, which TRL's mask reads as "no drift", as with its own default.
    assert torch.isnan(mixing.off_policy_mask_logps(None, is_explorer, None, True, (2, 2))).all()


def test_merge_rows_places_each_source_and_gives_explorer_rows_nan_logps():
    placement = mixing.place_rows(0, 4, 4, g_w=2)  # slots 0, 1 explorer; 2, 3 learner
    ids, logps = mixing.merge_rows(placement, [[7], [8, 9]], [[-1.0], [-2.0, -3.0]], {0: [1, 2], 1: [3]}, True)
    assert ids == [[1, 2], [3], [7], [8, 9]]
    assert [math.isnan(v) for row in logps[:2] for v in row] == [True] * 3 and logps[2:] == [[-1.0], [-2.0, -3.0]]
    assert mixing.merge_rows(placement, [[7], [8]], None, {0: [1], 1: [3]}, False)[1] is None
    # G_s = 0 under vLLM (alpha 1): no learner log-probs at all, still one NaN list per row for TRL's correction.
    only_explorer = mixing.place_rows(0, 2, 2, g_w=2)
    ids, logps = mixing.merge_rows(only_explorer, [], None, {0: [4, 5], 1: [6]}, True)
    assert ids == [[4, 5], [6]] and [len(row) for row in logps] == [2, 1]
    assert all(math.isnan(v) for row in logps for v in row)


def test_explorer_logps_tensor_fills_known_rows_and_leaves_nan_elsewhere():
    t = mixing.explorer_logps_tensor((3, 2), {0: [-1.0, -2.0, -9.0], 2: None})
    assert t[0].tolist() == [-1.0, -2.0]  # clipped to the batch's width
    assert torch.isnan(t[1:]).all()


def test_per_source_metrics_and_weighted_rewards():
    per_func = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [float("nan"), float("nan")], [1.0, 1.0]])
    rewards = mixing.weighted_rewards(per_func, torch.tensor([1.0, 2.0]))
    assert rewards[:2].tolist() == [1.0, 0.0] and math.isnan(rewards[2]) and rewards[3] == 3.0
    is_explorer = torch.tensor([True, False, False, True])
    lengths = torch.tensor([2.0, 4.0, 6.0, 8.0])
    m = mixing.per_source_metrics(rewards, lengths, is_explorer)
    assert m == {
        "explorer_fraction": 0.5,
        "reward/explorer": 2.0,
        "completion_length/explorer": 5.0,
        "reward/learner": 0.0,  # the unscorable row does not count
        "completion_length/learner": 5.0,
    }
    assert mixing.per_source_metrics(None, lengths, torch.zeros(4, dtype=torch.bool)) == {
        "explorer_fraction": 0.0,
        "completion_length/learner": 5.0,
    }


def test_round_cost_metrics_sum_counts_and_take_the_slowest_process():
    two = torch.tensor([[4.0, 1.5, 2.0, 0.5, 100.0, 1.0], [6.0, 2.5, 4.0, 0.25, 300.0, 0.0]])
    assert mixing.round_cost_metrics(two) == {
        "learner_rows_generated": 10.0,
        "learner_generation_s": 2.5,
        "explorer_latency_s": 4.0,
        "explorer_wait_s": 0.5,
        "explorer_failed_requests": 1.0,
        "explorer_tokens_per_s": 100.0,  # 400 tokens over the slowest process's 4 s
    }
    assert mixing.round_cost_metrics(two[:, :2]) == {"learner_rows_generated": 10.0, "learner_generation_s": 2.5}


def test_row_advantages_are_the_mean_over_each_rows_completion_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    per_token = torch.tensor([[1.0, 3.0, 100.0], [-2.0, 50.0, 50.0], [7.0, 7.0, 7.0]])
    # Padding does not count; a row without completion tokens trains nothing: 0.
    assert mixing.row_advantages(per_token, mask).tolist() == [2.0, -2.0, 0.0]
    sequence = torch.tensor([0.5, -1.0, 3.0])
    assert mixing.row_advantages(sequence, mask) is sequence
