"""Diversity of a rollout group, at the level of whole solutions: distinct final answers, distinct solution paths
(sequences of intermediate results) and the mean pairwise token-level distance between completions; and policy-level
vs token-level diversity per source of rows (coherent derivations, distinct correct paths, prefix agreement)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations

from . import figures, task


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


# Policy-level vs token-level diversity, measured the paper's way, per source of rows (explorer, learner,
# high-temperature learner): how many rows are fully coherent derivations, how many *distinct correct* solution paths
# a group holds, and how fast two samples of the same prompt stop agreeing along the completion. Token-level noise
# (a high temperature) makes samples diverge early but breaks derivations; policy-level diversity shows as several
# distinct coherent paths.


def operands_of_prompt(prompt: str) -> tuple[int, ...]:
    """The operands of a task prompt (``Add 23+45+17``, possibly inside a rendered chat)."""
    found = re.search(r"Add (\d+(?:\+\d+)+)", prompt)
    if not found:
        raise ValueError(f"no 'Add a+b+...' problem in prompt {prompt!r}.")
    return tuple(int(x) for x in found.group(1).split("+"))


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_agreement(texts: Sequence[str], max_len: int) -> list[float]:
    """``curve[t]``: the share of pairs of ``texts`` that agree on their first ``t + 1`` characters (t < max_len).

    A pair counts as agreeing at t when both completions are at least t + 1 long and equal up to there, so the curve
    decays from the first character on which samples of a prompt part ways; pairs of identical completions stay in
    until their end."""
    pairs = list(combinations(texts, 2))
    if not pairs:
        raise ValueError("prefix_agreement needs at least two completions.")
    shared = [common_prefix(a, b) for a, b in pairs]
    return [sum(s > t for s in shared) / len(pairs) for t in range(max_len)]


def policy_diversity(group: Sequence[str], operands: Sequence[int]) -> dict[str, float]:
    """Coherent share, correct share and distinct correct paths of one group of completions of the same problem."""
    if not group:
        raise ValueError("policy_diversity needs at least one completion.")
    gold = sum(operands)
    coherent = [t for t in group if task.is_coherent(t, operands)]
    return {
        "coherent_share": len(coherent) / len(group),
        # Sound arithmetic on whatever numbers the chain starts from (e.g. operands with their units digits swapped,
        # which still gives the right sum): the gap to coherent_share is rows that do not copy the problem.
        "consistent_share": sum(task.is_consistent(t) for t in group) / len(group),
        "correct_share": sum(task.is_correct(t, gold) for t in group) / len(group),
        # A path counts once however many rows take it; only fully coherent derivations count as correct paths.
        "distinct_correct_paths": float(len({task.path_of(t) for t in coherent})),
    }


def source_diversity(records: Sequence[dict], size: int, max_len: int = 40) -> dict[str, dict]:
    """Per source, over groups (records ``{"source", "prompt", "texts"}`` as in rollouts.jsonl) truncated to ``size``
    rows (smaller groups skipped): mean coherent share, correct share, distinct correct paths, distinct answers and
    paths, and the mean prefix-agreement curve."""
    per: dict[str, list[tuple[dict, list[float]]]] = {}
    for rec in records:
        texts = list(rec["texts"][:size])
        if len(texts) < size or size < 2:
            continue
        ops = operands_of_prompt(rec["prompt"])
        figures = {**policy_diversity(texts, ops), **group_diversity(texts)}
        per.setdefault(rec["source"], []).append((figures, prefix_agreement(texts, max_len)))
    out = {}
    for source, items in sorted(per.items()):
        keys = [k for k in items[0][0] if k != "size"]
        out[source] = {k: sum(f[k] for f, _ in items) / len(items) for k in keys}
        out[source]["groups"] = len(items)
        out[source]["group_size"] = size
        out[source]["prefix_agreement"] = [sum(c[t] for _, c in items) / len(items) for t in range(max_len)]
    return out


def plot_source_diversity(panels: dict[str, dict[str, dict]], output) -> None:
    """One row of three panels per entry of ``panels`` (e.g. per regime): coherent share and distinct correct paths
    per source (bars), and the prefix-agreement curves per source."""
    fig, axes = figures.subplots(len(panels), 3, figsize=(14, 3.6 * len(panels)), squeeze=False)
    for row, (title, per_source) in zip(axes, panels.items()):
        sources = list(per_source)
        row[0].bar(sources, [100 * per_source[s]["coherent_share"] for s in sources], color="tab:green", alpha=0.7)
        row[0].bar(sources, [100 * per_source[s]["correct_share"] for s in sources], fill=False, edgecolor="k")
        row[0].set_ylabel("% of rows")
        row[0].set_title(f"{title}: coherent (bars) / correct answer (outline)", fontsize="medium")
        row[1].bar(sources, [per_source[s]["distinct_correct_paths"] for s in sources], color="tab:blue", alpha=0.7)
        size = per_source[sources[0]]["group_size"] if sources else 0
        row[1].set_title(f"distinct correct paths per group of {size}", fontsize="medium")
        for s in sources:
            curve = per_source[s]["prefix_agreement"]
            row[2].plot(range(1, len(curve) + 1), curve, label=s)
        row[2].set_xlabel("characters into the completion")
        row[2].set_ylabel("share of pairs still identical")
        row[2].set_title("prefix agreement of two samples of a prompt", fontsize="medium")
        row[2].legend(fontsize="x-small")
        for ax in row[:2]:
            ax.tick_params(axis="x", labelrotation=15, labelsize="small")
        for ax in row:
            ax.grid(True, alpha=0.3)
    figures.save(fig, output)
