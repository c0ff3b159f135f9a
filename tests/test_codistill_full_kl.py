"""CoDistill's exact KD term (`kd_mode="full_kl"`) and the `codistill/kd_kl` metric: the exact reverse KL over the
vocabulary against a direct computation (values and gradients, chunked and whole, heads of different sizes), inside
the module's one forward of both tiny models, as a loss term of the trainer, and its speed of distillation against the
paper's sampled-token reward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_codistill import codistill
from trainer_utils import logged

from s2l_trl.codistill import CoDistillConfig, objectives
from s2l_trl.codistill.full_kl import kd_kl_use
from s2l_trl.codistill.module import LARGE, SMALL, forward_call
from s2l_trl.devtools.tiny import tiny_training_kwargs
from s2l_trl.preflight import InputError

SCRIPTS = Path(__file__).parent / "scripts"


def _direct_kl(h_s, head_s, h_l, head_l, temperature):
    """KL(small || large) per position from the full logits (what the chunked kernel must equal)."""
    rows = min(head_s.weight.shape[0], head_l.weight.shape[0])

    def logits(h, head):
        z = h.double() @ head.weight[:rows].double().T
        if head.bias is not None:
            z = z + head.bias[:rows].double()
        z = z * head.logit_scale
        if head.softcap is not None:
            z = head.softcap * torch.tanh(z / head.softcap)
        return torch.log_softmax(z / temperature, dim=-1)

    ls, ll = logits(h_s, head_s), logits(h_l, head_l)
    return (ls.exp() * (ls - ll)).sum(-1)


def _case(small_rows=37, large_rows=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(11, 6, generator=g, requires_grad=True)
    w_s = torch.randn(small_rows, 6, generator=g, requires_grad=True)
    b_s = torch.randn(small_rows, generator=g, requires_grad=True)
    h_l = torch.randn(11, 9, generator=g)
    w_l = torch.randn(large_rows, 9, generator=g)
    head_s = objectives.LMHead(w_s, b_s, logit_scale=0.7, softcap=4.0)
    head_l = objectives.LMHead(w_l, None, logit_scale=1.3)
    return h_s, head_s, h_l, head_l


def _values_and_grads(h_s, head_s, h_l, head_l, fn, temperature=0.8):
    kl = fn(h_s, head_s, h_l, head_l, temperature)
    weights = torch.linspace(0.5, 1.5, kl.numel(), dtype=kl.dtype)  # a loss that weighs positions unequally
    grads = torch.autograd.grad((kl * weights).sum(), [h_s, head_s.weight, head_s.bias])
    return kl.detach().double(), [g.double() for g in grads]


@pytest.mark.parametrize(("small_rows", "large_rows"), [(37, 37), (37, 41), (41, 37)])
def test_exact_kl_and_its_gradient_equal_the_direct_computation(small_rows, large_rows):
    """Equal heads, and heads with padding rows on either side (the KL runs over the shared first rows)."""
    case = _case(small_rows, large_rows)
    kl, grads = _values_and_grads(*case, objectives.reverse_kl_per_token)
    direct, direct_grads = _values_and_grads(*case, _direct_kl)
    assert (kl > 0).all()
    torch.testing.assert_close(kl, direct, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, direct_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_chunked_kl_equals_the_kl_in_one_tile(monkeypatch):
    """TRL's kernel tiles positions and vocabulary (4,096 x 32,768): tiles far smaller than the problem, with ragged
    ends, give the one-tile result."""
    import trl.kernels.chunked_divergence as kernel

    case = _case(small_rows=53, large_rows=53, seed=1)
    whole, whole_grads = _values_and_grads(*case, objectives.reverse_kl_per_token)
    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", 4)  # 11 positions: tiles of 4, 4, 3
    monkeypatch.setattr(kernel, "VOCAB_CHUNK_SIZE", 16)  # 53 entries: 16, 16, 16, 5
    chunked, chunked_grads = _values_and_grads(*case, objectives.reverse_kl_per_token)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)
    for got, want in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_module_forward_gives_each_positions_kl_of_the_two_tiny_models(tiny, tmp_path):
    """`kd_kl="loss"`: the small model's output holds the exact KL at its labelled positions (0 elsewhere), equal to
    the KL of the two models' full logits, with the gradient of that KL on the small model and none on the large;
    `"metric"`: the same values, no gradient."""
    trainer = codistill(tiny, tmp_path, kd_mode="full_kl")
    module = trainer.codistill
    g = torch.Generator().manual_seed(0)
    inputs = {
        "prompt_ids": torch.randint(3, 100, (3, 5), generator=g),
        "prompt_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]),
        "completion_ids": torch.randint(3, 100, (3, 4), generator=g),
    }
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])  # row 3: not a small-model row
    call = forward_call(inputs, mask)
    out = module(codistill_calls={LARGE: call, SMALL: call}, kd_kl="loss")[SMALL]
    label_mask = out.label_mask
    assert out.kd_kl.shape == label_mask.shape and label_mask.sum() == 7
    assert torch.equal(out.kd_kl[~label_mask], torch.zeros(int((~label_mask).sum())))
    module.zero_grad()
    out.kd_kl.sum().backward()
    grads = {n: p.grad.clone() for n, p in module.small.named_parameters()}
    assert all(p.grad is None for p in module.large.parameters())

    def full_logits(model):
        plain = {k: v for k, v in call.items() if k not in ("labels", "fused_lm_head")}
        return model(**plain).logits[:, :-1].double() / trainer.temperature

    module.zero_grad()
    with torch.no_grad():
        large = torch.log_softmax(full_logits(module.large), -1)
    small = torch.log_softmax(full_logits(module.small), -1)
    direct = (small.exp() * (small - large)).sum(-1)[label_mask]
    direct.sum().backward()
    torch.testing.assert_close(out.kd_kl[label_mask].double(), direct.detach(), rtol=1e-5, atol=1e-6)
    for name, p in module.small.named_parameters():
        torch.testing.assert_close(grads[name].double(), p.grad.double(), rtol=1e-4, atol=1e-7, msg=name)

    metric = module(codistill_calls={LARGE: call, SMALL: call}, kd_kl="metric")[SMALL].kd_kl
    assert not metric.requires_grad
    torch.testing.assert_close(metric, out.kd_kl.detach())


def test_full_kl_adds_kd_coef_times_the_mean_kl_to_the_small_loss_and_every_mode_logs_the_kl(tiny, tmp_path):
    """Same seed, same rollouts: the small model's loss with `kd_coef=c` is its loss at `kd_coef=0` plus c x the
    logged `codistill/kd_kl` (the mean over the step's small-model tokens), and the gradient moves with it. The
    paper's reward logs the same KL (a metric); `log_kd_kl=False` turns the metric off."""
    runs = {}
    for name, over in {
        "kl0": dict(kd_mode="full_kl", kd_coef=0.0),
        "kl3": dict(kd_mode="full_kl", kd_coef=3.0),
        "token": dict(kd_mode="token", kd_coef=0.0),
        "off": dict(kd_mode="token", kd_coef=0.0, log_kd_kl=False),
    }.items():
        trainer = codistill(tiny, tmp_path / name, max_steps=1, **over)
        trainer.train()
        runs[name] = trainer
    (kl,) = logged(runs["kl3"], "codistill/kd_kl")
    assert kl > 0 and logged(runs["kl0"], "codistill/kd_kl") == [kl]
    (loss0,), (loss3,) = logged(runs["kl0"], "small/loss"), logged(runs["kl3"], "small/loss")
    assert loss3 == pytest.approx(loss0 + 3.0 * kl, rel=1e-4, abs=1e-7)
    assert logged(runs["kl3"], "small/grad_norm") != logged(runs["kl0"], "small/grad_norm")
    # The paper's reward at kd_coef 0 is plain GRPO on the small rows: the same loss, the same KL as a metric.
    assert logged(runs["token"], "codistill/kd_kl") == pytest.approx([kl], rel=1e-6)
    assert logged(runs["token"], "small/loss") == pytest.approx([loss0], rel=1e-5, abs=1e-8)
    assert logged(runs["off"], "codistill/kd_kl") == []


def test_full_kl_refuses_a_kd_clip_it_would_ignore():
    with pytest.raises(ValueError, match=r"kd_clip=0\.5 does nothing with kd_mode='full_kl'.*remove kd_clip"):
        CoDistillConfig(**tiny_training_kwargs(output_dir="unused", kd_mode="full_kl", kd_clip=0.5))


def test_a_larger_small_head_partitioned_by_zero3_is_refused_for_full_kl_and_drops_the_metric(caplog):
    """ZeRO-3 partitions the small model's head, so rows it has beyond the large model's cannot be cut off."""

    class Head(torch.nn.Module):
        def __init__(self, rows, partitioned):
            super().__init__()
            self.lm_head = torch.nn.Linear(4, rows)
            if partitioned:
                self.lm_head.weight.ds_shape = (rows, 4)

        def get_output_embeddings(self):
            return self.lm_head

    large, small = Head(40, True), Head(48, True)
    with pytest.raises(InputError, match=r"kd_mode='full_kl' cannot run here.*\(48\).*\(40\).*kd_mode='token'"):
        kd_kl_use(large, small, "full_kl", True)
    assert kd_kl_use(large, small, "token", True) is None
    assert "codistill/kd_kl is not logged" in caplog.text
    assert kd_kl_use(Head(48, False), Head(40, True), "full_kl", True) == "loss"  # the large head is cut instead
    assert kd_kl_use(Head(40, False), Head(48, False), "full_kl", True) == "loss"  # a plain head is cut
    assert kd_kl_use(large, Head(40, True), "token", False) is None


def _regimes():
    sys.path.insert(0, str(SCRIPTS))
    import codistill_kd_regimes

    return codistill_kd_regimes


def test_full_kl_distils_faster_than_the_sampled_token_reward_when_far_apart(tiny, tmp_path):
    """Zero verifiable reward, the large model frozen, kd_coef 1, the far pair (~4.7 nats/token): in 8 steps the
    exact KL term closes much more of the distance than the paper's sampled-token reward (measured over 40 steps in
    docs/codistill.md)."""
    regimes = _regimes()
    token = regimes.run(tmp_path, tiny, "far", "mean", seed=0, steps=8)
    full = regimes.run(tmp_path, tiny, "far", "mean", seed=0, steps=8, kd_mode="full_kl")
    assert token["large_frozen"] and full["large_frozen"]
    closed = {name: r["before"] - r["after"] for name, r in (("token", token), ("full_kl", full))}
    assert closed["token"] > 0 and closed["full_kl"] > 3 * closed["token"], (token, full)


def test_heads_cut_to_the_shared_rows_stay_gathered_for_trls_zero3_check(monkeypatch):
    """Under ZeRO-3 TRL's kernel reads `ds_status` of both heads; the large model's head is a gathered copy marked
    available (`full_kl.head_values`), and cutting it to the small model's rows (the paper's 152,064 vs 151,936) must
    keep that mark, or the kernel fails."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from transformers.integrations import deepspeed as hf_deepspeed

    # TRL's `maybe_gather_lm_head_ctx` asks transformers whether ZeRO-3 is on, then checks each head's `ds_status`.
    monkeypatch.setattr(hf_deepspeed, "is_deepspeed_zero3_enabled", lambda: True)
    h_s, head_s, h_l, head_l = _case(small_rows=37, large_rows=41)
    for tensor in (head_s.weight, head_s.bias, head_l.weight):
        tensor.ds_status = ZeroParamStatus.AVAILABLE
    kl, grads = _values_and_grads(h_s, head_s, h_l, head_l, objectives.reverse_kl_per_token)
    direct, direct_grads = _values_and_grads(h_s, head_s, h_l, head_l, _direct_kl)
    torch.testing.assert_close(kl, direct, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, direct_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
