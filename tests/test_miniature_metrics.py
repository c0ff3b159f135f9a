"""The miniature task's parsing and the diversity metrics, on hand-made completions with known answers."""

from __future__ import annotations

import pytest

from s2l_trl.miniature import diversity, task
from s2l_trl.miniature.passk_report import crossover_k

OPS = (23, 45, 17)
A = "23+45=68,68+17=85 \\boxed{85}"  # path (68, 85)
B = "45+23=68,68+17=85 \\boxed{85}"  # same path as A (same intermediate results), other text
C = "45+17=62,62+23=85 \\boxed{85}"  # another path, same answer
D = "23+45=68,68+17=86 \\boxed{86}"  # wrong last step


def test_solution_paths_and_coherence():
    assert task.solution_text(OPS, [0, 1, 2]) == A
    assert task.solution_text(OPS, [1, 2, 0]) == C
    assert task.path_of(A) == task.path_of(B) == (68, 85) and task.path_of(C) == (62, 85)
    assert task.is_coherent(A, OPS) and task.is_coherent(C, OPS)
    assert not task.is_coherent(D, OPS)  # 68 + 17 is not 86
    assert not task.is_coherent("23+45=68 \\boxed{68}", OPS)  # an operand left out
    assert task.is_correct(C, "85") and not task.is_correct(D, 85)
    assert task.accuracy_reward([[{"role": "assistant", "content": A}], D], ["85", "85"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="permutation"):
        task.solution_text(OPS, [0, 0, 1])


def test_group_diversity_known_values():
    same = diversity.group_diversity([A, A, A, A])
    assert same == {"size": 4.0, "distinct_answers": 1.0, "distinct_paths": 1.0, "mean_pairwise_edit": 0.0}
    mixed = diversity.group_diversity([A, B, C, D])
    assert mixed["distinct_answers"] == 2.0  # 85, 86
    assert mixed["distinct_paths"] == 3.0  # (68, 85), (62, 85), (68, 86)
    pair = diversity.group_diversity([A, D])
    assert pair["mean_pairwise_edit"] == pytest.approx(2 / len(A))  # "85" -> "86" twice
    assert diversity.edit_distance("kitten", "sitting") == 3
    # Equal-size comparison: a group of 2 is skipped at size 4, the first 4 of a group of 5 are used.
    mean = diversity.mean_diversity([[A, A], [A, B, C, D, D]], size=4)
    assert mean["groups"] == 1.0 and mean["distinct_paths"] == 3.0


def test_crossover_k():
    small = {"1": 0.1, "2": 0.3, "4": 0.7}
    large = {"1": 0.2, "2": 0.35, "4": 0.6}
    assert crossover_k({"S": small, "L": large}, "S", "L") == 4
    assert crossover_k({"S": large, "L": small}, "S", "L") is None  # the small one already wins pass@1


def test_policy_diversity_coherent_share_and_distinct_correct_paths():
    from s2l_trl.miniature.diversity import policy_diversity

    E = "90+71=161,161+31=192 \\boxed{192}"  # right answer, but 90 and 31 are not operands: not coherent
    ops = (91, 71, 30)
    group = [
        "91+71=162,162+30=192 \\boxed{192}",
        "30+71=101,101+91=192 \\boxed{192}",
        E,
        "71+91=162,162+30=192 \\boxed{192}",
    ]
    d = policy_diversity(group, ops)
    assert d["coherent_share"] == 0.75 and d["correct_share"] == 1.0 and d["consistent_share"] == 1.0
    assert d["distinct_correct_paths"] == 2.0  # (162, 192) twice and (101, 192); E's path does not count
    assert policy_diversity([D], OPS) == {
        "coherent_share": 0.0,
        "consistent_share": 0.0,  # 68 + 17 is not 86
        "correct_share": 0.0,
        "distinct_correct_paths": 0.0,
    }
    assert task.is_consistent(E) and not task.is_consistent("23+45=68,60+17=77 \\boxed{77}")  # does not chain


def test_prefix_agreement_decays_where_samples_part():
    from s2l_trl.miniature.diversity import common_prefix, operands_of_prompt, prefix_agreement

    assert common_prefix(A, D) == len("23+45=68,68+17=8")
    curve = prefix_agreement([A, A, D], max_len=len(A) + 2)
    # Pairs (A, A), (A, D), (A, D): all agree up to "...=8", then only (A, A), until A ends.
    assert curve[0] == 1.0 and curve[len("23+45=68,68+17=8") - 1] == 1.0
    assert curve[len("23+45=68,68+17=8")] == pytest.approx(1 / 3)
    assert curve[len(A) - 1] == pytest.approx(1 / 3) and curve[len(A)] == 0.0
    assert operands_of_prompt("user\nAdd 23+45+17\nassistant\n") == (23, 45, 17)
    with pytest.raises(ValueError, match="at least two"):
        prefix_agreement([A], 5)


def test_source_diversity_groups_by_source_at_equal_size():
    from s2l_trl.miniature.diversity import source_diversity

    records = [
        {"source": "explorer", "prompt": "Add 23+45+17", "texts": [A, C, A, C]},
        {"source": "learner", "prompt": "Add 23+45+17", "texts": [D, D, D, A, C]},  # truncated to 4
        {"source": "learner", "prompt": "Add 23+45+17", "texts": [A]},  # too small: skipped
    ]
    out = source_diversity(records, size=4, max_len=10)
    assert out["explorer"]["groups"] == 1 and out["learner"]["groups"] == 1
    assert out["explorer"]["distinct_correct_paths"] == 2.0 and out["learner"]["distinct_correct_paths"] == 1.0
    assert out["learner"]["coherent_share"] == 0.25 and len(out["learner"]["prefix_agreement"]) == 10


def test_paired_pass_at_k_difference_over_problems():
    from s2l_trl.miniature.passk_report import paired_difference

    a = {
        "math_verify": {"num_samples": 4, "correct_counts": [4, 0, 2]},
        "coherent": {"num_samples": 4, "correct_counts": [0, 0, 1]},
    }
    b = {
        "math_verify": {"num_samples": 4, "correct_counts": [2, 0, 2]},
        "coherent": {"num_samples": 4, "correct_counts": [1, 0, 1]},
    }
    d1 = paired_difference(a, b, 1)
    assert d1["mean"] == pytest.approx(0.5 / 3) and d1["n"] == 3  # 1 - 0.5 on the first problem only
    assert d1["low"] < d1["mean"] < d1["high"]
    assert paired_difference(a, b, 4)["mean"] == 0.0  # both solve problems 1 and 3 within 4 samples
    assert paired_difference(a, b, 4, "coherent")["mean"] == pytest.approx(-1 / 3)  # b derives problem 1, a does not
