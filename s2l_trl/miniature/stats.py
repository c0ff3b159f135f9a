"""Small-sample statistics for the miniature's comparisons: the mean of per-seed (paired) differences with its 95%
Student-t interval, and Welch's test for two unpaired samples. Student's t quantiles come from mpmath (installed with
torch, through sympy), so that no SciPy is needed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    import mpmath

    if dof <= 0:
        raise ValueError(f"dof must be > 0, got {dof}.")
    tail = 0.5 * float(mpmath.betainc(dof / 2, 0.5, 0, dof / (dof + t * t), regularized=True))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(q: float, dof: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_cdf`; exact to ~1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}.")
    if q < 0.5:
        return -t_ppf(1.0 - q, dof)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < q:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, dof) < q else (low, mid)
        if high - low < 1e-12:
            break
    return (low + high) / 2


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample sd and the Student-t interval of the mean (``n`` >= 2), e.g. of per-seed paired differences."""
    n = len(values)
    if n < 2:
        raise ValueError(f"an interval needs at least 2 values, got {n}.")
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def paired_differences(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> dict:
    """``a[seed] - b[seed]`` over the seeds both have, with :func:`mean_ci` of those differences."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"paired differences need at least 2 common seeds, got {seeds}.")
    diffs = [a[s] - b[s] for s in seeds]
    return {"seeds": seeds, "differences": diffs, **mean_ci(diffs, level)}


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Difference of means ``mean(a) - mean(b)`` of two unpaired samples, Welch's t, its dof, the two-sided p-value
    and the interval of the difference."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs at least 2 values per sample, got {len(a)} and {len(b)}.")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"difference": diff, "t": math.nan, "dof": math.nan, "p_two_sided": math.nan, "low": diff, "high": diff}
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    half = t_ppf(0.5 + level / 2, dof) * se
    return {
        "difference": diff,
        "t": t,
        "dof": dof,
        "p_two_sided": 2 * (1 - t_cdf(abs(t), dof)),
        "low": diff - half,
        "high": diff + half,
    }


def two_level_interval(by_group: dict, level: float = 0.95) -> dict:
    """Mean of values nested in groups (e.g. per-seed paired differences within family builds) with an interval that
    counts both sources of variation: the Student-t interval over the group means (``G`` groups, ``G - 1`` degrees of
    freedom), which carries the within-group spread through each group's mean. Also the two variance components
    (one-way random effects, method of moments): the sd between groups and the sd within a group."""
    groups = {g: list(v) for g, v in by_group.items() if len(v)}
    if len(groups) < 2:
        raise ValueError(f"an interval over groups needs at least 2 groups with values, got {len(groups)}.")
    means = {g: statistics.fmean(v) for g, v in groups.items()}
    over_groups = mean_ci(list(means.values()), level)
    within = [x - means[g] for g, v in groups.items() for x in v]
    dof_within = sum(len(v) - 1 for v in groups.values())
    var_within = sum(d * d for d in within) / dof_within if dof_within else math.nan
    n_mean = statistics.fmean(len(v) for v in groups.values())
    var_between = statistics.variance(list(means.values())) - (var_within / n_mean if dof_within else 0.0)
    return {
        **over_groups,
        "groups": len(groups),
        "values": sum(len(v) for v in groups.values()),
        "group_means": means,
        "sd_between_groups": math.sqrt(max(0.0, var_between)),
        "sd_within_group": math.sqrt(var_within) if dof_within else math.nan,
    }
