"""Pure tensor logic of CoDistill-GRPO: the KD reward of the small model and importance-weight statistics.

Nothing here knows about the trainer; every function takes tensors and is tested directly. The large model's
per-token importance weights themselves are S2L-PO's (`s2l_trl.mixing.explorer_is_weights`, with the small model as
the explorer): CoDistill adds only what S2L-PO has no use for.

Conventions (our assumptions, no reference code exists): log-probs are per sampled token, `(B, T)`, computed with
logits divided by the sampling temperature (TRL's convention for both models); NaN marks an unknown log-prob.
"""

from __future__ import annotations

import torch

KD_MODES = ("token", "sequence")
KD_BASELINES = ("mean", "none")


def known_tokens(
    large_logps: torch.Tensor, small_logps: torch.Tensor, completion_mask: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """`(B, T)` tokens of the small model's rows whose log-probs are known under both models."""
    return completion_mask.bool() & rows.bool().unsqueeze(1) & ~torch.isnan(small_logps) & ~torch.isnan(large_logps)


def kd_token_rewards(
    large_logps: torch.Tensor,
    small_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    rows: torch.Tensor,
    clip: float | None = None,
) -> torch.Tensor:
    """Dense KD reward of the small model: `log pi_large(y_t) - log pi_small(y_t)` on its own sampled tokens.

    The expectation of its negative over the small model's samples is the reverse KL `KL(pi_small || pi_large)`, so
    maximising it pulls the small model towards the large one where it samples (on-policy distillation).

    Args:
        large_logps, small_logps: `(B, T)` log-probs of the sampled tokens under each model.
        completion_mask: `(B, T)`.
        rows: `(B,)` flags of the rows the small model sampled (others get 0).
        clip: when set, the per-token reward is clamped to `[-clip, clip]`.

    Returns:
        `(B, T)` rewards, 0 outside the small model's known tokens.
    """
    known = known_tokens(large_logps, small_logps, completion_mask, rows)
    reward = torch.where(known, large_logps - small_logps, torch.zeros_like(large_logps))
    if clip is not None:
        reward = reward.clamp(min=-clip, max=clip)
    return reward


def kd_sequence_rewards(token_rewards: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """`(B,)` per-sequence KD reward: the mean of `token_rewards` over each row's completion tokens (0 when empty)."""
    mask = completion_mask.to(token_rewards.dtype)
    return (token_rewards * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def ratio_values(
    large_logps: torch.Tensor, small_logps: torch.Tensor, completion_mask: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """The raw importance ratios `pi_large / pi_small` (before truncation or masking), flat, on known small tokens."""
    known = known_tokens(large_logps, small_logps, completion_mask, rows)
    return torch.exp(large_logps - small_logps)[known]


def min_mean_max(values: torch.Tensor) -> torch.Tensor:
    """`[min, sum, count, max]` of a flat tensor (`+inf, 0, 0, -inf` when empty), ready for a cross-process reduce."""
    if values.numel() == 0:
        return torch.tensor([float("inf"), 0.0, 0.0, float("-inf")], device=values.device)
    v = values.float()
    return torch.stack([v.min(), v.sum(), torch.tensor(float(v.numel()), device=v.device), v.max()])


def dense_small_advantages(
    sequence_advantages: torch.Tensor,
    token_rewards: torch.Tensor,
    known: torch.Tensor,
    kd_coef: float,
    baseline: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """`(B, T)` token advantages of the small model in `kd_mode="token"`: the group-relative advantage of the
    verifiable reward plus `kd_coef` times the dense KD reward of each known token minus `baseline`.

    The baseline is the mean KD reward of the round's small-model tokens (`kd_baseline`). Subtracting a constant
    leaves the expected gradient of the reverse KL unchanged (the score function has mean zero), but without it a
    small model far from the large one, whose every token earns a strongly negative reward, mostly pushes down
    whatever it sampled and drifts instead of distilling (docs/codistill.md, "Choosing the KD update").
    """
    seq = sequence_advantages if sequence_advantages.dim() == 2 else sequence_advantages.unsqueeze(1)
    return seq + kd_coef * torch.where(known, token_rewards - baseline, torch.zeros_like(token_rewards))


def kd_reward_sum_count(token_rewards: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sum, count)` of the KD rewards of known tokens, to be summed over processes (the baseline is sum / count)."""
    return token_rewards[known].sum(), known.sum().to(token_rewards.dtype)
