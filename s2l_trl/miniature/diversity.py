"""Diversity of a rollout group, at the level of whole solutions: distinct final answers, distinct solution paths
(sequences of intermediate results) and the mean pairwise token-level distance between completions."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from . import task


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (characters or tokens)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def normalized_edit_distance(a: Sequence, b: Sequence) -> float:
    """Edit distance divided by the longer length (0: identical, 1: nothing in common); 0 for two empty inputs."""
    longest = max(len(a), len(b))
    return edit_distance(a, b) / longest if longest else 0.0


def group_diversity(texts: Sequence[str]) -> dict[str, float]:
    """Diversity figures of one group of completions (of the same prompt).

    - ``distinct_answers``: distinct boxed answers (a missing answer counts as one value, ``None``);
    - ``distinct_paths``: distinct solution paths (:func:`task.path_of`: the intermediate results in order);
    - ``mean_pairwise_edit``: mean normalized character edit distance over all pairs (0 for a group of one).
    """
    if not texts:
        raise ValueError("group_diversity needs at least one completion.")
    pairs = list(combinations(texts, 2))
    return {
        "size": float(len(texts)),
        "distinct_answers": float(len({task.answer_of(t) for t in texts})),
        "distinct_paths": float(len({task.path_of(t) for t in texts})),
        "mean_pairwise_edit": sum(normalized_edit_distance(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0,
    }


def mean_diversity(groups: Sequence[Sequence[str]], size: int | None = None) -> dict[str, float]:
    """Mean of :func:`group_diversity` over groups. ``size``: use only the first ``size`` completions of each group and
    skip smaller groups, so that sources with different group sizes are compared at equal size."""
    chosen = [list(g[:size]) if size else list(g) for g in groups if g and (size is None or len(g) >= size)]
    if not chosen:
        return {"groups": 0.0}
    per = [group_diversity(g) for g in chosen]
    out = {key: sum(d[key] for d in per) / len(per) for key in per[0]}
    out["groups"] = float(len(per))
    return out
