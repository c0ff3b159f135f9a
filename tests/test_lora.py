"""LoRA through `peft_config`: only the learner's adapter trains; base weights and the frozen explorer stay put."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_utils import digit_reward, logged, s2l_args, tiny_dataset
from trl import get_peft_config

from s2l_trl import S2LTrainer
from s2l_trl.cli.train import make_parser

peft = pytest.importorskip("peft")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "s2l_po" / "config_cpu.yaml"
LORA_FLAGS = [
    "--use_peft",
    "--lora_r",
    "8",
    "--lora_alpha",
    "16",
    "--lora_dropout",
    "0.0",
    "--lora_target_modules",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
]


def _snapshot(named_params) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in named_params}


def test_lora_trains_adapter_only_against_local_explorer(tiny, tmp_path):
    # The LoraConfig exactly as `s2l-train` builds it: recipe + LoRA flags -> ModelConfig -> trl.get_peft_config.
    _, _, model_args = make_parser().parse_args_and_config(["--config", str(RECIPE), *LORA_FLAGS])
    lora = get_peft_config(model_args)
    assert isinstance(lora, peft.LoraConfig)
    assert (lora.r, lora.lora_alpha, lora.task_type) == (8, 16, "CAUSAL_LM")
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    # beta > 0 so the KL term runs: with a PEFT learner TRL keeps no separate reference model and computes the
    # reference log-probs with the adapter disabled, which must be the untouched base model.
    args = s2l_args(
        tmp_path, explorer_mode="local", explorer_model=str(tiny["explorer"]), max_steps=3, mix_steps=3, beta=0.04
    )
    trainer = S2LTrainer(
        str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny), peft_config=lora
    )

    model = trainer.model
    assert isinstance(model, peft.PeftModel)
    assert trainer.ref_model is None  # the disabled adapter is the reference
    lora_names = {n for n, _ in model.named_parameters() if "lora_" in n}
    # 2 layers x 4 projections x (A, B)
    assert len(lora_names) == 16
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora_names

    lora_before = _snapshot((n, p) for n, p in model.named_parameters() if n in lora_names)
    base_before = _snapshot((n, p) for n, p in model.named_parameters() if n not in lora_names)
    explorer_before = _snapshot(trainer.explorer.model.named_parameters())
    trainer.train()

    # The run really mixed explorer rows in (alpha 1 -> 0 over 3 steps) and the KL path ran.
    assert logged(trainer, "s2l/alpha") == pytest.approx([1.0, 0.5, 0.0])
    assert logged(trainer, "s2l/explorer_fraction") == pytest.approx([1.0, 0.5, 0.0])
    kl = logged(trainer, "kl")
    assert len(kl) == 3
    # Step 1: lora_B is still zero, so the policy IS the base model and the reference (adapter disabled) must match
    # it exactly; afterwards the adapter has moved the policy away from the reference.
    assert kl[0] == pytest.approx(0.0, abs=1e-7)
    assert kl[1] > 0 and kl[2] > 0

    after = dict(model.named_parameters())
    # LoRA B starts at zero and A's gradient is zero until B moves, so 3 steps must move both.
    changed = {n for n in lora_names if not torch.equal(after[n].detach(), lora_before[n])}
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed), sorted(changed)
    for name, before in base_before.items():
        assert torch.equal(after[name].detach(), before), name
    for name, param in trainer.explorer.model.named_parameters():
        assert torch.equal(param.detach(), explorer_before[name]), name
        assert not param.requires_grad, name

    # The saved output is an adapter (what `push_to_hub` would upload), not merged full weights.
    trainer.save_model(args.output_dir)
    saved = {p.name for p in (tmp_path / "out").iterdir()}
    assert "adapter_config.json" in saved and "adapter_model.safetensors" in saved
    assert "model.safetensors" not in saved
