"""Check 5 of the real-model tier: LoRA on the real architecture (SmolLM2-135M-Instruct, `LlamaForCausalLM`: 30
layers, grouped-query attention, SwiGLU MLP) through `peft_config` with its attention and MLP projections, for two
S2L-PO steps (alpha 1, then 0: explorer rows, then the learner's own) against the `trl vllm-serve` explorer; then save,
reload and the model card."""

from __future__ import annotations

import pytest
import real_utils as ru
import torch
from trainer_utils import digit_reward, logged
from transformers import AutoModelForCausalLM, AutoTokenizer

from s2l_trl import S2LConfig, S2LTrainer

peft = pytest.importorskip("peft")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_lora_on_smollm2_trains_saves_reloads_and_cards(real_models, smollm2_trl_server, shared_eval_data, tmp_path):
    data = ru.math500_subset(shared_eval_data, tmp_path / "train.jsonl", 2)
    args = S2LConfig(
        **ru.step_kwargs(
            tmp_path / "out",
            explorer_mode="server",
            explorer_server_base_url=smollm2_trl_server().base_url,
            explorer_model=str(real_models.smollm2),
            explorer_top_p=1.0,
            mix_schedule="linear",
            mix_steps=2,
            max_steps=2,
            max_completion_length=12,
            learning_rate=1e-3,  # an adapter starting at zero must move visibly in two steps
            beta=0.04,  # the KL term runs: with an adapter TRL's reference is the base model (adapter disabled)
        )
    )
    lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    # A dense reward, so that group advantages (and the adapter's gradient) are not all zero.
    trainer = S2LTrainer(
        str(real_models.smollm2), [digit_reward], args=args, train_dataset=ru.train_dataset(data), peft_config=lora
    )
    model = trainer.model
    assert isinstance(model, peft.PeftModel) and trainer.ref_model is None
    lora_names = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert len(lora_names) == 30 * len(TARGETS) * 2  # every layer, every projection, A and B
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora_names
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in lora_names}
    trainer.train()

    assert logged(trainer, "s2l/alpha") == pytest.approx([1.0, 0.0])
    # Step 1: B = 0, the policy is the base model, i.e. the explorer: no gap, no KL. Then the adapter moves it.
    assert abs(logged(trainer, "s2l/logp_gap")[0]) < 1e-3
    kl = logged(trainer, "kl")
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 0
    after = dict(model.named_parameters())
    assert any(after[n].detach().abs().max() > 0 for n in lora_names if "lora_B" in n)
    for name, before in base_before.items():
        assert torch.equal(after[name].detach(), before), name

    trainer.save_model(args.output_dir)
    trainer.create_model_card()
    out = tmp_path / "out"
    saved = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= saved
    assert "model.safetensors" not in saved
    config = peft.PeftConfig.from_pretrained(out)
    assert set(config.target_modules) == set(TARGETS) and config.base_model_name_or_path == str(real_models.smollm2)

    # Reloaded on a fresh base model, the adapter gives the trained policy's logits.
    tok = AutoTokenizer.from_pretrained(real_models.smollm2)
    ids = tok("The answer is \\boxed{42}.", return_tensors="pt")["input_ids"]
    reloaded = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path), out)
    model.eval()
    with torch.no_grad():
        expected, got = model(input_ids=ids).logits, reloaded.eval()(input_ids=ids).logits
        base = reloaded.get_base_model()
        with reloaded.disable_adapter():
            plain = base(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-4)  # the adapter is really in there

    card = (out / "README.md").read_text()
    assert "- s2l-po" in card and "## S2L-PO provenance" in card
    assert str(real_models.smollm2) in card  # the explorer (and base model) named
