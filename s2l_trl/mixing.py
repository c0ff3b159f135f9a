"""Pure tensor logic of S2L-PO's mixed groups: row placement, per-source baselines, explorer weights.

Nothing here knows about the trainer: every function takes plain lists and tensors and is tested directly. The
trainer (`s2l_trl.trainer`) calls these at TRL's seams.

Conventions: TRL's `RepeatSampler` lays the `G` copies of each prompt next to each other in the *global* generation
batch and accelerate hands every process a contiguous slice of it, so a row's group and slot in the group follow
from its global index. The explorer fills slots `0 .. G_w - 1` of every group, the learner the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EXPLORER_IS_MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass(frozen=True)
class RowPlacement:
    """Where the local rows of one process sit in the global batch, and which source fills each.

    Attributes:
        slots: `(global group index, slot in group)` of every local row.
        is_explorer: one flag per local row: `True` where the explorer fills the row.
    """

    slots: list[tuple[int, int]]
    is_explorer: list[bool]

    @property
    def learner_rows(self) -> list[int]:
        """Local indices of the rows the learner generates."""
        return [i for i, e in enumerate(self.is_explorer) if not e]

    @property
    def explorer_rows(self) -> list[int]:
        """Local indices of the rows the explorer fills."""
        return [i for i, e in enumerate(self.is_explorer) if e]

    @property
    def group_heads(self) -> list[int]:
        """Local indices of the rows in slot 0 of their group: one per group that starts on this process."""
        return [i for i, (_, slot) in enumerate(self.slots) if slot == 0]


def place_rows(process_index: int, local_batch: int, num_generations: int, g_w: int) -> RowPlacement:
    """The placement of a process's `local_batch` rows when the explorer fills `g_w` of each group of
    `num_generations`."""
    if not 0 <= g_w <= num_generations:
        raise ValueError(f"g_w must be in [0, num_generations={num_generations}], got {g_w}.")
    start = process_index * local_batch
    slots = [divmod(start + i, num_generations) for i in range(local_batch)]
    return RowPlacement(slots=slots, is_explorer=[slot < g_w for _, slot in slots])


def explorer_answer_index(group_position: int, slot: int, g_w: int) -> int:
    """Row of an explorer answer that holds `g_w` rows per requested group (prompt-major) for `slot` of the group
    requested at `group_position`."""
    if not 0 <= slot < g_w:
        raise ValueError(f"slot {slot} is not an explorer slot (G_w = {g_w}).")
    return group_position * g_w + slot


def cut_completion(
    ids: list[int], logps: list[float] | None, eos_token_ids: list[int], max_length: int, fallback_eos: int
) -> tuple[list[int], list[float] | None]:
    """Apply the learner's completion rules to an explorer completion: cut after the first EOS, cap the length.

    An empty completion becomes a lone EOS (an empty finished answer), which is what the learner's generation returns
    when it stops at once; TRL cannot score a completion without a single token.
    """
    if not ids:
        return [fallback_eos], (None if logps is None else [float("nan")])
    eos = set(eos_token_ids)
    end = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
    end = min(end, max_length)
    return list(ids[:end]), (None if logps is None else list(logps[:end]))


def per_source_advantages(
    rewards: torch.Tensor, is_explorer: torch.Tensor, num_generations: int, scale_rewards: str
) -> torch.Tensor:
    """Group-relative advantages with one baseline per source inside each group (the authors' effective behaviour).

    Args:
        rewards: `(B,)` weighted rewards of the global batch, NaN for unscorable rows.
        is_explorer: `(B,)` source flags.
        num_generations: `G`, the group size.
        scale_rewards: TRL's `scale_rewards`: `"group"` divides by the source's std within the group (0 for a
            single row), `"batch"` by the std of all rewards, `"none"` not at all.
    """
    r = rewards.view(-1, num_generations)
    src = is_explorer.view(-1, num_generations)
    advantages = torch.zeros_like(r)
    for sel in (src, ~src):
        masked = torch.where(sel, r, torch.nan)
        mean = torch.nanmean(masked, dim=1, keepdim=True)
        adv = masked - mean
        if scale_rewards == "group":
            std = torch.nan_to_num(_nanstd(masked, dim=1), nan=0.0).unsqueeze(1)
            adv = adv / (std + 1e-4)
        elif scale_rewards == "batch":
            adv = adv / (_nanstd(rewards) + 1e-4)
        elif scale_rewards != "none":
            raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}.")
        advantages = torch.where(sel, adv, advantages)
    return torch.nan_to_num(advantages, nan=0.0).view(-1)


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    # Sample std ignoring NaNs (TRL's `nanstd` semantics), NaN where fewer than two values exist.
    count = (~torch.isnan(x)).sum(dim=dim) if dim is not None else (~torch.isnan(x)).sum()
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    var = torch.nansum((x - mean) ** 2, dim=dim) / (count - 1)
    return torch.sqrt(var)


def explorer_is_weights(
    learner_logps: torch.Tensor,
    explorer_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    is_explorer: torch.Tensor,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance weights `pi_old / pi_explorer` on explorer tokens, 1 on learner rows.

    Args:
        learner_logps: `(B, T)` learner log-probs at generation time (`pi_old`).
        explorer_logps: `(B, T)` the explorer's sampling log-probs, NaN where unknown (learner rows, padding).
        completion_mask: `(B, T)`.
        is_explorer: `(B,)`.
        mode: one of `EXPLORER_IS_MODES` except `"none"`: `token_*` weighs each token, `sequence_*` each row by the
            product over its tokens; `*_truncate` clamps to `[clip_min, clip_max]`, `*_mask` zeroes outside it.
        clip_min, clip_max: the bounds (`None`: unbounded on that side).

    Returns:
        `(weights (B, T), per-row-or-token weights of explorer tokens for statistics)`. Tokens with an unknown
        explorer log-prob get a log-ratio of 0.
    """
    if mode not in EXPLORER_IS_MODES or mode == "none":
        raise ValueError(f"mode must be one of {EXPLORER_IS_MODES[1:]}, got {mode!r}.")
    known = completion_mask.bool() & is_explorer.unsqueeze(1) & ~torch.isnan(explorer_logps)
    diff = torch.where(known, learner_logps - explorer_logps, torch.zeros_like(learner_logps))
    T = diff.size(1)
    if mode.startswith("sequence"):
        weight = torch.exp(diff.sum(dim=1, keepdim=True)).expand(-1, T)
    else:
        weight = torch.exp(diff)
    if mode.endswith("truncate"):
        weight = weight.clamp(min=clip_min, max=clip_max)
    else:
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        weight = weight.masked_fill((weight < lo) | (weight > hi), 0.0)
    weight = torch.where(is_explorer.unsqueeze(1), weight, torch.ones_like(weight))
    stats = weight[is_explorer][:, 0] if mode.startswith("sequence") else weight[known]
    return weight, stats


def row_advantages(advantages: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """The advantage each row's tokens are trained with, one value per row (the completions table's column).

    Args:
        advantages: `(B,)` sequence advantages, or `(B, T)` per-token ones (explorer importance weights folded in).
        completion_mask: `(B, T)`.

    Returns:
        `(B,)`: `advantages` as they are, or the mean of each row's per-token advantages over its completion tokens
        (0 for a row without any: nothing of it is trained).
    """
    if advantages.dim() == 1:
        return advantages
    mask = completion_mask.to(advantages.dtype)
    return (advantages * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def mean_logp_gap(
    learner_logps: torch.Tensor, explorer_logps: torch.Tensor, completion_mask: torch.Tensor, is_explorer: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sum, count)` of `learner - explorer` log-probs over explorer tokens whose explorer log-prob is known."""
    known = completion_mask.bool() & is_explorer.unsqueeze(1) & ~torch.isnan(explorer_logps)
    diff = torch.where(known, learner_logps - explorer_logps, torch.zeros_like(learner_logps))
    return diff.sum(), known.sum().to(diff.dtype)


def off_policy_mask_logps(
    sampling_logps: torch.Tensor | None,
    is_explorer: torch.Tensor,
    explorer_logps: torch.Tensor | None,
    judge_explorer_rows: bool,
    shape: tuple[int, int],
) -> torch.Tensor:
    """The `sampling_per_token_logps` TRL's off-policy sequence mask should see, per source.

    TRL's mask counts a NaN log-prob as no divergence, so a row of NaNs is always kept. Explorer rows get NaN unless
    `judge_explorer_rows`, in which case they are judged against the explorer's own log-probs where known. Learner
    rows keep what TRL would use (`sampling_logps`; NaN, meaning "no drift", when there is none).
    """
    nan = torch.full(shape, float("nan"), device=is_explorer.device)
    base = nan if sampling_logps is None else sampling_logps
    explorer_view = nan if (not judge_explorer_rows or explorer_logps is None) else explorer_logps
    return torch.where(is_explorer.unsqueeze(1), explorer_view, base)


def merge_rows(
    placement: RowPlacement,
    learner_ids: list[list[int]],
    learner_logps: list[list[float]] | None,
    explorer_ids: dict[int, list[int]],
    with_logps: bool,
) -> tuple[list[list[int]], list[list[float]] | None]:
    """One completion per local row, in TRL's row order: the learner's rows (in `placement.learner_rows` order) and
    the explorer's (`explorer_ids` by local row index).

    With `with_logps` (TRL's vLLM paths expect sampling log-probs for every row) explorer rows get NaN log-probs, for
    which TRL's vLLM importance-sampling ratio is exactly 1: explorer rows' off-policy treatment is S2L's own. Learner
    rows keep theirs (NaN too when the learner's backend returned none).
    """
    completion_ids: list[list[int]] = [[] for _ in placement.is_explorer]
    logps: list[list[float]] | None = [[] for _ in placement.is_explorer] if with_logps else None
    for j, i in enumerate(placement.learner_rows):
        completion_ids[i] = list(learner_ids[j])
        if logps is not None:
            logps[i] = list(learner_logps[j]) if learner_logps is not None else [math.nan] * len(learner_ids[j])
    for i in placement.explorer_rows:
        completion_ids[i] = list(explorer_ids[i])
        if logps is not None:
            logps[i] = [math.nan] * len(explorer_ids[i])
    return completion_ids, logps


def explorer_logps_tensor(
    shape: tuple[int, int], rows: dict[int, list[float] | None], device: torch.device | str | None = None
) -> torch.Tensor:
    """`(B, T)` explorer sampling log-probs of the local rows in `rows` (by row index), NaN everywhere else (learner
    rows, padding, unknown values)."""
    out = torch.full(shape, math.nan, dtype=torch.float32)
    for i, lps in rows.items():
        if lps:
            width = min(len(lps), shape[1])
            out[i, :width] = torch.tensor(lps[:width], dtype=torch.float32)
    return out.to(device) if device is not None else out


def per_source_metrics(
    rewards: torch.Tensor | None, completion_lengths: torch.Tensor, is_explorer: torch.Tensor
) -> dict[str, float]:
    """Per-source statistics of a scored round, over the global batch.

    Args:
        rewards: `(B,)` weighted rewards, NaN for unscorable rows (`None` when the round has none).
        completion_lengths: `(B,)` completion lengths.
        is_explorer: `(B,)` source flags.

    Returns:
        `explorer_fraction`, and for each source present `reward/<source>` and `completion_length/<source>`.
    """
    metrics = {"explorer_fraction": is_explorer.float().mean().item()}
    for name, sel in (("explorer", is_explorer), ("learner", ~is_explorer)):
        if not bool(sel.any()):
            continue
        if rewards is not None:
            metrics[f"reward/{name}"] = torch.nanmean(rewards[sel]).item()
        metrics[f"completion_length/{name}"] = completion_lengths[sel].float().mean().item()
    return metrics


def weighted_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> torch.Tensor:
    """`(B,)` rewards as TRL sums them (`nansum` of weighted functions), NaN where every function returned NaN."""
    rewards = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return rewards


def round_cost_metrics(per_process: torch.Tensor) -> dict[str, float]:
    """What a round cost, over processes, from each process's row `[learner rows generated, learner generation s]`,
    followed, when the round had explorer rows, by `[explorer latency s, wait s, tokens, failed requests]`: rows,
    tokens and failures summed, times the slowest process's (the one every process waits for)."""
    totals = per_process.double()
    metrics = {"learner_rows_generated": totals[:, 0].sum().item(), "learner_generation_s": totals[:, 1].max().item()}
    if totals.size(1) > 2:
        latency = totals[:, 2].max().item()
        metrics.update(
            explorer_latency_s=latency,
            explorer_wait_s=totals[:, 3].max().item(),
            explorer_failed_requests=totals[:, 5].sum().item(),
        )
        if latency > 0:
            metrics["explorer_tokens_per_s"] = totals[:, 4].sum().item() / latency
    return metrics
