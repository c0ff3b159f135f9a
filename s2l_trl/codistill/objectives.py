"""Pure tensor logic of CoDistill-GRPO: the KD reward of the small model and importance-weight statistics.

Nothing here knows about the trainer; every function takes tensors and is tested directly. The large model's
per-token importance weights themselves are S2L-PO's (`s2l_trl.mixing.explorer_is_weights`, with the small model as
the explorer): CoDistill adds only what S2L-PO has no use for.

Conventions (our assumptions, no reference code exists): log-probs are per sampled token, `(B, T)`, computed with
logits divided by the sampling temperature (TRL's convention for both models); NaN marks an unknown log-prob.
`reverse_kl_per_token` (`kd_mode="full_kl"` and the `codistill/kd_kl` metric) works on last hidden states and LM
heads instead, so that neither model's `(tokens, vocabulary)` logits exist in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KD_MODES = ("token", "sequence", "full_kl")
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


@dataclass
class LMHead:
    """An LM head as the exact KL needs it: `logits = softcap(logit_scale * (hidden @ weight.T + bias))`, then divided
    by the temperature (the transform TRL's fused LM head applies, `trl.trainer.utils.add_fused_lm_head`)."""

    weight: torch.Tensor  # (V, H); under ZeRO-3 possibly a partitioned parameter (its full shape in `ds_shape`)
    bias: torch.Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None

    @property
    def rows(self) -> int:
        return int(getattr(self.weight, "ds_shape", self.weight.shape)[0])

    def first_rows(self, rows: int) -> LMHead:
        """The head restricted to its first `rows` vocabulary entries (a view: gradients still reach the weight)."""
        if rows == self.rows:
            return self
        if hasattr(self.weight, "ds_shape"):
            raise ValueError("A head partitioned by ZeRO-3 cannot be cut to the shared vocabulary.")
        cut = [None if p is None else p[:rows] for p in (self.weight, self.bias)]
        for whole, part in zip((self.weight, self.bias), cut):
            # A gathered copy marked available (`full_kl.head_values` under ZeRO-3) stays marked: TRL's kernel reads
            # `ds_status` of every head it is given when ZeRO-3 is on.
            if part is not None and hasattr(whole, "ds_status"):
                part.ds_status = whole.ds_status
        return LMHead(cut[0], cut[1], self.logit_scale, self.softcap)


def reverse_kl_per_token(
    small_hidden: torch.Tensor,
    small_head: LMHead,
    large_hidden: torch.Tensor,
    large_head: LMHead,
    temperature: float = 1.0,
) -> torch.Tensor:
    """`(N,)` exact `KL(pi_small(.|h) || pi_large(.|h))` over the shared vocabulary at each of N positions.

    `small_hidden` `(N, H_small)` and `large_hidden` `(N, H_large)` are each model's last hidden states at the same
    positions. The gradient reaches the small model's hidden states and head only (the large model is the teacher of
    this term): `dKL/dz_v = p_v (log p_v - log q_v - KL) / temperature` for every vocabulary entry `v`, not only a
    sampled one.

    The shared vocabulary is the first `min(V_small, V_large)` rows of the two heads (siblings share a tokenizer; the
    rows past it are padding, e.g. 151,936 vs 152,064 rows for Qwen2.5-1.5B and -7B); both distributions are
    normalised over those rows.

    Computed by TRL's chunked divergence kernel (`trl.kernels.chunked_divergence`, the one its distillation trainer
    uses; Triton on GPUs, tiles of torch ops elsewhere): the projections run on float32 tiles of 4,096 positions x
    32,768 vocabulary entries per model, so neither model's `(N, V)` logits exist in full, and the backward recomputes
    the tiles. Under DeepSpeed ZeRO-3 the kernel gathers a partitioned head itself (forward and backward); every
    process must then call it, with N = 0 where it has no positions.
    """
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    rows = min(small_head.rows, large_head.rows)
    small_head, large_head = small_head.first_rows(rows), large_head.first_rows(rows)
    kl, _entropy = ChunkedDivergenceFunction.apply(
        small_hidden,
        small_head.weight,
        small_head.bias,
        large_hidden,  # the kernel returns no gradient for the large model's inputs
        large_head.weight,
        large_head.bias,
        1.0,  # beta = 1: the reverse KL(student || teacher)
        temperature,
        small_head.logit_scale,
        small_head.softcap,
        large_head.logit_scale,
        large_head.softcap,
    )
    return kl
