"""Unbiased pass@k (Chen et al., 2021) and the per-benchmark metric summary of `s2l-eval`."""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms the (astronomically large for big ``n``)
    binomial coefficients and stays accurate in floating point.

    Args:
        n: samples drawn for the problem (``n >= 1``).
        c: correct samples among them (``0 <= c <= n``).
        k: sample budget (``1 <= k <= n``).
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}.")
    if n - c < k:  # every size-k subset contains a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def default_ks(n: int) -> list[int]:
    """The k values reported for ``n`` samples: 1, 2, 4, ... up to ``n``, and ``n`` itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def summarize(correct_counts: Sequence[int], n: int, ks: Sequence[int] | None = None) -> dict:
    """Metrics of one benchmark from per-problem correct counts.

    Args:
        correct_counts: correct samples of each problem, in data order.
        n: samples per problem.
        ks: k values of pass@k (default :func:`default_ks`).

    Returns:
        ``{"pass@k": {k: value}, "mean@n": accuracy over all samples, "num_problems", "num_samples",
        "correct_counts"}``; values are fractions in [0, 1]. ``mean@n`` equals pass@1.
    """
    if not correct_counts:
        raise ValueError("summarize needs at least one problem.")
    ks = list(ks) if ks is not None else default_ks(n)
    passk = {str(k): sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}
    return {
        "num_problems": len(correct_counts),
        "num_samples": n,
        "pass@k": passk,
        f"mean@{n}": sum(correct_counts) / (n * len(correct_counts)),
        "correct_counts": list(correct_counts),
    }
