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
