"""S2L-PO model cards: provenance and citation, built without network."""

from __future__ import annotations

import yaml

from s2l_trl import S2LConfig
from s2l_trl.model_card import (
    GRPO_CITATION,
    S2L_CITATION,
    S2L_PAPER_TITLE,
    SECTION_TITLE,
    add_s2l_provenance,
    build_s2l_model_card,
    s2l_model_card_metadata,
)


def _args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        explorer_model="Qwen/Qwen3-1.7B-Base",
        explorer_mode="server",
        num_generations=16,
        per_device_train_batch_size=16,
        mix_steps=8,
        mix_alpha_start=1.0,
        mix_alpha_end=0.0,
        explorer_importance_sampling="token_truncate",
        explorer_importance_sampling_clip_max=2.0,
        advantage_grouping="per_source",
        beta=0.001,
    )
    kwargs.update(overrides)
    return S2LConfig(**kwargs)


def _front_matter(card_text: str) -> dict:
    _, header, _ = card_text.split("---", 2)
    return yaml.safe_load(header)


def test_metadata_records_the_run(tmp_path):
    meta = s2l_model_card_metadata(_args(tmp_path))
    assert meta["explorer_model"] == "Qwen/Qwen3-1.7B-Base"
    assert meta["explorer_mode"] == "server"
    assert (meta["mix_schedule"], meta["mix_steps"], meta["mix_alpha_start"], meta["mix_alpha_end"]) == (
        "linear",
        8,
        1.0,
        0.0,
    )
    assert meta["num_generations"] == 16
    assert meta["explorer_importance_sampling"] == "token_truncate"
    assert meta["explorer_importance_sampling_clip_max"] == 2.0
    assert meta["advantage_grouping"] == "per_source"
    assert meta["learner_importance_sampling"] == "none"  # use_vllm is off here
    assert meta["paper"] == "arXiv:2605.30789"


def test_card_has_provenance_and_citation(tmp_path):
    args = _args(tmp_path)
    card = build_s2l_model_card(
        args,
        base_model="Qwen/Qwen3-8B-Base",
        model_name="tiny-s2l",
        hub_model_id="someone/tiny-s2l",
        dataset_name="open-r1/DAPO-Math-17k-Processed",
        tags=["math"],
    )
    text = str(card)
    front = _front_matter(text)
    assert "s2l-po" in front["tags"] and "math" in front["tags"]
    assert front["base_model"] == "Qwen/Qwen3-8B-Base"
    assert front["s2l_po"]["explorer_model"] == "Qwen/Qwen3-1.7B-Base"
    assert front["s2l_po"]["mix_steps"] == 8
    assert SECTION_TITLE in text
    assert "`Qwen/Qwen3-1.7B-Base` (server)" in text
    assert "T_mix = 8" in text and "alpha 1 -> 0" in text
    assert "`token_truncate` (clip min None, max 2.0)" in text
    assert "`per_source`" in text
    # The linear schedule over 8 steps with G = 16: G_w = ceil((1 - (i-1)/7) * 16).
    assert "step 1: 16, step 2: 14, step 3: 12, step 4: 10, step 5: 7, step 6: 5, step 7: 3, step 8: 0" in text
    assert S2L_CITATION in text and S2L_PAPER_TITLE in text
    assert "https://huggingface.co/papers/2605.30789" in text
    assert GRPO_CITATION in text
    # The provenance sits inside TRL's card, before its framework versions.
    assert text.index(SECTION_TITLE) < text.index("### Framework versions") < text.index("## Citations")


def test_provenance_is_idempotent_and_tracks_offline_runs(tmp_path):
    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text("")
    args = _args(
        tmp_path, explorer_mode="offline", explorer_rollouts=str(rollouts), explorer_importance_sampling="none"
    )
    card = build_s2l_model_card(args, model_name="m")
    once = str(card)
    twice = str(add_s2l_provenance(card, args))
    assert once == twice
    assert once.count(SECTION_TITLE) == 1 and once.count(S2L_CITATION) == 1
    assert f"| Offline rollouts | `{rollouts}` |" in once
    assert _front_matter(once)["s2l_po"]["explorer_rollouts"] == str(rollouts)
    assert "`none`; off-policy mask on explorer rows: False" in once
