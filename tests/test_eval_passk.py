"""pass@k estimator: brute force over subsets, numerical stability, and the reported k grid."""

import itertools
import math
from fractions import Fraction

import pytest

from s2l_trl.evaluation.passk import default_ks, pass_at_k, summarize


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_pass_at_k_matches_subset_enumeration(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    n, c = 2048, 3
    for k in (1, 16, 256, 1024, 2048):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)
    assert pass_at_k(4096, 0, 4096) == 0.0
    assert pass_at_k(4096, 1, 1) == pytest.approx(1 / 4096)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c=5"):
        pass_at_k(4, 5, 1)


def test_default_ks_and_summary():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(1) == [1]
    s = summarize([3, 0, 4], n=4)
    assert s["mean@4"] == pytest.approx(7 / 12)
    assert s["pass@k"]["1"] == pytest.approx(7 / 12)  # pass@1 is the mean accuracy
    assert s["pass@k"]["4"] == pytest.approx(2 / 3)
    assert s["pass@k"]["2"] == pytest.approx((1 - 0 + 0 + 1) / 3)  # C(1,2)=0 -> 1; c=0 -> 0; c=4 -> 1
    assert s["correct_counts"] == [3, 0, 4]
