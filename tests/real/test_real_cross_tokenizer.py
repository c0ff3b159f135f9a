"""Check 2 of the real-model tier: the real SmolLM2 explorer (49,152-id BPE) beside a learner with the real Qwen2
tokenizer (151,936 ids; a tiny random Qwen3-architecture model): explorer completions are decoded and re-tokenized.

- On real output (Unicode, LaTeX, leading spaces), the learner's tokens decode to exactly the explorer's text;
  a completion that ended with SmolLM2's `<|im_end|>` ends with the learner's EOS; `max_completion_length` cuts in
  learner tokens.
- The start-up checks say what they should about the pair: a warning that ids are re-tokenized and log-probs
  dropped; explorer importance sampling refused; a server that serves SmolLM2 refused when the run does not name it
  (`explorer_model`); `s2l-sample` rollouts of SmolLM2 refused as "another tokenizer" unless the run names it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import real_utils as ru
from transformers import AutoTokenizer

from s2l_trl import S2LConfig, S2LTrainer
from s2l_trl.explorers import ExplorerError
from s2l_trl.explorers.base import SamplingSettings
from s2l_trl.explorers.factory import build_explorer
from s2l_trl.explorers.token_bridge import TokenBridge
from s2l_trl.rewards import accuracy_reward

# Prompts whose real SmolLM2 answers hold what tokenizers disagree on: accents and symbols, CJK, LaTeX, a first token
# with a leading space (the plain-text prompt), and a short answer that ends with <|im_end|>.
CHAT_PROMPTS = [
    "Repeat exactly: café, naïve, π ≈ 3.14, 30 °C, 5 €.",
    "Write 'good morning' in Chinese.",  # characters of several SmolLM2 tokens each
    "Write the quadratic formula in LaTeX.",
    "What is 2+2? Answer with one number.",
]
TEXT_PROMPTS = ["The capital of France is"]


@pytest.fixture(scope="module")
def tokenizers(real_models):
    return AutoTokenizer.from_pretrained(real_models.qwen3_learner), AutoTokenizer.from_pretrained(real_models.smollm2)


@pytest.fixture(scope="module")
def explorer_output(real_models, smollm2_trl_server, tokenizers, shared_eval_data):
    """Greedy SmolLM2 completions (up to 64 tokens) of the prompts above and of three MATH500 problems, from the
    `trl vllm-serve` explorer, with the explorer's own prompt ids (rendered by the token bridge)."""
    learner_tok, explorer_tok = tokenizers
    bridge = TokenBridge(learner_tok, str(real_models.smollm2), [learner_tok.eos_token_id], 64)
    math = [row["question"] for _, row in ru.math500_rows(shared_eval_data, 3)]  # the third: a backslash
    examples = [{"prompt": [{"role": "user", "content": p}]} for p in CHAT_PROMPTS + math]
    examples += [{"prompt": p} for p in TEXT_PROMPTS]
    prompts = [list(bridge.prompt_ids([], e)) for e in examples]
    explorer = build_explorer(
        "server",
        model=str(real_models.smollm2),
        sampling=SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=64, seed=0),
        tokenizer=explorer_tok,
        server_base_url=smollm2_trl_server().base_url,
    )
    try:
        out = explorer.generate(prompts, 1)
    finally:
        explorer.close()
    return examples, prompts, out.completion_ids, out.logprobs


def test_explorer_prompts_are_its_own_template_of_the_same_messages(tokenizers, explorer_output):
    learner_tok, explorer_tok = tokenizers
    examples, prompts, _, _ = explorer_output
    for example, ids in zip(examples, prompts):
        text = explorer_tok.decode(ids)
        if isinstance(example["prompt"], list):
            rendered = explorer_tok.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
            assert text == rendered
            assert "named SmolLM" in text  # the explorer's own default system prompt, not the learner's
        else:
            assert text == example["prompt"]


def test_retokenized_completions_spell_the_explorer_text(real_models, tokenizers, explorer_output):
    learner_tok, explorer_tok = tokenizers
    _, _, completions, logprobs = explorer_output
    im_end, learner_eos = explorer_tok.convert_tokens_to_ids("<|im_end|>"), learner_tok.eos_token_id
    bridge = TokenBridge(learner_tok, str(real_models.smollm2), [learner_eos, learner_tok.pad_token_id], 1000)
    assert not bridge.matches and bridge.explorer_eos_ids == {im_end}
    texts = []
    for ids, lps in zip(completions, logprobs):
        text = explorer_tok.decode(ids, skip_special_tokens=True)
        texts.append(text)
        learner_ids, learner_lps = bridge.to_learner(ids, lps)
        assert learner_lps is None  # the explorer's log-probs mean nothing for the learner's tokens
        ended = ids[-1] == im_end
        assert (learner_ids[-1] == learner_eos) == ended
        # A cut answer may stop inside a character: the partial character is not the explorer's text.
        assert learner_tok.decode(learner_ids[:-1] if ended else learner_ids) == (
            text if ended else text.rstrip("\ufffd")
        )
        assert learner_eos not in learner_ids[:-1]

    # The real output holds what makes re-tokenization hard, or the checks above prove less than they claim.
    def cjk(c):
        return "\u4e00" <= c <= "\u9fff"

    assert any(ord(c) > 127 and not cjk(c) for t in texts for c in t), texts  # accents, symbols
    assert any(cjk(c) for t in texts for c in t), texts
    assert any("\\" in t for t in texts), texts
    assert texts[-1].startswith(" "), texts[-1]  # the plain-text prompt's answer begins with a space token
    assert any(ids[-1] == im_end for ids in completions) and any(ids[-1] != im_end for ids in completions)


def test_an_explorer_cap_inside_a_character_drops_the_partial_character(real_models, tokenizers, explorer_output):
    """Every prefix of the real answers is what the explorer returns when its max_tokens cuts there (greedy): cut
    inside a multi-byte character, the learner gets the text without the partial character, never U+FFFD."""
    learner_tok, explorer_tok = tokenizers
    _, _, completions, _ = explorer_output
    bridge = TokenBridge(learner_tok, str(real_models.smollm2), [learner_tok.eos_token_id], 1000)
    inside = 0
    for ids in completions:
        for cut in range(1, len(ids)):
            text = explorer_tok.decode(ids[:cut], skip_special_tokens=True)
            inside += text.endswith("\ufffd")
            learner_ids, _ = bridge.to_learner(ids[:cut], None)
            # (An empty text becomes a lone EOS: TRL cannot score a completion without a token.)
            assert learner_tok.decode(learner_ids, skip_special_tokens=True) == text.rstrip("\ufffd")
    assert inside > 0  # the CJK answer is cut inside a character somewhere


@pytest.mark.parametrize("cap", [1, 5, 17])
def test_max_completion_length_cuts_in_learner_tokens(real_models, tokenizers, explorer_output, cap):
    learner_tok, explorer_tok = tokenizers
    _, _, completions, logprobs = explorer_output
    eos = [learner_tok.eos_token_id]
    full = TokenBridge(learner_tok, str(real_models.smollm2), eos, 1000)
    capped = TokenBridge(learner_tok, str(real_models.smollm2), eos, cap)
    for ids, lps in zip(completions, logprobs):
        whole, _ = full.to_learner(ids, lps)
        cut, _ = capped.to_learner(ids, lps)
        assert cut == whole[:cap]
        # A cut answer has no EOS: TRL counts it as truncated, as it would the learner's own.
        assert (cut[-1] == eos[0]) == (len(whole) <= cap and whole[-1] == eos[0])


def _cross_args(tmp_path: Path, **overrides) -> S2LConfig:
    kwargs = ru.step_kwargs(
        tmp_path / "out",
        max_completion_length=16,
        explorer_max_tokens=32,  # explorer tokens: the cap that matters is the learner's 16
        explorer_importance_sampling="none",
        explorer_temperature=0.7,
    )
    kwargs.update(overrides)
    return S2LConfig(**kwargs)


def test_training_round_with_the_pair(real_models, smollm2_trl_server, tokenizers, shared_eval_data, tmp_path, caplog):
    """A real S2L-PO step (alpha 1) of the Qwen-tokenizer learner on SmolLM2's completions from `trl vllm-serve`: the
    rows TRL trains on are the explorer's texts in the learner's tokens, cut at 16 learner tokens."""
    learner_tok, explorer_tok = tokenizers
    data = ru.math500_subset(shared_eval_data, tmp_path / "train.jsonl", 1)
    args = _cross_args(
        tmp_path,
        explorer_mode="server",
        explorer_server_base_url=smollm2_trl_server().base_url,
        explorer_model=str(real_models.smollm2),
    )
    raw: list[list[int]] = []
    trained: list[tuple[list[int], bool]] = []

    class Recording(S2LTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            for ids, mask, explorer in zip(out["completion_ids"], out["completion_mask"], out["s2l_is_explorer"]):
                trained.append((ids[mask.bool()].tolist(), bool(explorer)))
            return out

    with caplog.at_level(logging.WARNING):
        trainer = Recording(
            str(real_models.qwen3_learner), [accuracy_reward], args=args, train_dataset=ru.train_dataset(data)
        )
    assert not trainer.explorer_tokenizer_matches
    assert "differs from the learner's: explorer completions are decoded and re-tokenized" in caplog.text
    generate = trainer.explorer.generate

    def recording_generate(prompt_ids, n, inputs=None):
        out = generate(prompt_ids, n, inputs=inputs)
        raw.extend(out.completion_ids)
        return out

    trainer.explorer.generate = recording_generate
    try:
        trainer.train()
    finally:
        trainer.close_explorer()
    assert len(raw) == 2 and [explorer for _, explorer in trained] == [True, True]
    eos = learner_tok.convert_tokens_to_ids("<|im_end|>")
    for explorer_ids, (learner_ids, _) in zip(raw, trained):
        text = explorer_tok.decode(explorer_ids, skip_special_tokens=True)
        full = learner_tok(text, add_special_tokens=False)["input_ids"]
        assert learner_ids == full[:16] or learner_ids == full + [eos]
        assert learner_tok.decode([t for t in learner_ids if t != eos]) in text
    assert trainer.state.global_step == 1
    assert "s2l/logp_gap" not in trainer.state.log_history[0]  # no explorer log-probs across tokenizers


def test_explorer_importance_sampling_is_refused_for_the_pair(real_models, shared_eval_data, tmp_path):
    data = ru.math500_subset(shared_eval_data, tmp_path / "train.jsonl", 1)
    args = _cross_args(
        tmp_path,
        explorer_mode="local",
        explorer_model=str(real_models.smollm2),
        explorer_importance_sampling="token_truncate",
    )
    with pytest.raises(ValueError, match="token_truncate.*unusable when the explorer tokenizer differs"):
        S2LTrainer(str(real_models.qwen3_learner), [accuracy_reward], args=args, train_dataset=ru.train_dataset(data))
    assert not (tmp_path / "out").exists()


def test_a_smollm2_server_is_refused_when_the_run_does_not_name_it(
    real_models, smollm2_trl_server, shared_eval_data, tmp_path
):
    data = ru.math500_subset(shared_eval_data, tmp_path / "train.jsonl", 1)
    url = smollm2_trl_server().base_url
    args = _cross_args(tmp_path, explorer_mode="server", explorer_server_base_url=url)
    with pytest.raises(ExplorerError, match="whose tokenizer differs from the expected one"):
        S2LTrainer(str(real_models.qwen3_learner), [accuracy_reward], args=args, train_dataset=ru.train_dataset(data))


def test_smollm2_rollouts_are_another_tokenizer_unless_named(
    real_models, smollm2_trl_server, shared_eval_data, tmp_path
):
    """`s2l-sample` rollouts of SmolLM2 for the Qwen-tokenizer learner: refused as another tokenizer's ids when the
    run does not name the explorer; re-tokenized (and trained on) when it does."""
    from s2l_trl.cli.sample import main as sample_main

    data = ru.math500_subset(shared_eval_data, tmp_path / "train.jsonl", 1)
    rollouts = sample_main(
        [
            "--model_path", str(real_models.smollm2), "--output_dir", str(tmp_path / "rollouts"),
            "--dataset_name", str(data), "--backend", "server", "--server_base_url", smollm2_trl_server().base_url,
            "--num_generations", "2", "--max_tokens", "32", "--seed", "0",
        ]
    )  # fmt: skip
    learner = str(real_models.qwen3_learner)
    args = _cross_args(tmp_path, explorer_mode="offline", explorer_rollouts=str(rollouts))
    with pytest.raises(ExplorerError, match="tokenized by another tokenizer \\(set explorer_model"):
        S2LTrainer(learner, [accuracy_reward], args=args, train_dataset=ru.train_dataset(data))
    args = _cross_args(
        tmp_path, explorer_mode="offline", explorer_rollouts=str(rollouts), explorer_model=str(real_models.smollm2)
    )
    trainer = S2LTrainer(learner, [accuracy_reward], args=args, train_dataset=ru.train_dataset(data))
    assert not trainer.explorer_tokenizer_matches
    trainer.train()
    assert trainer.state.global_step == 1


def test_a_prompt_too_long_for_the_explorer_server_is_refused_in_its_own_tokens(
    real_models, smollm2_trl_server, tmp_path
):
    """The learner (4,096 positions) takes the prompt; SmolLM2's server (--max-model-len 2048) cannot, counted in
    SmolLM2's rendering and tokens: refused before training, not at the first round with HTTP 400."""
    from s2l_trl.preflight import InputError

    data = tmp_path / "long.jsonl"
    text = "What is " + " + ".join(["12"] * 700) + "?"
    data.write_text(json.dumps({"prompt": text, "solution": "8400", "prompt_id": "long"}) + "\n")
    url = smollm2_trl_server().base_url
    args = _cross_args(
        tmp_path, explorer_mode="server", explorer_server_base_url=url, explorer_model=str(real_models.smollm2)
    )
    with pytest.raises(InputError, match=r"do not fit the explorer's context of 2048 tokens.*prompt_id 'long'"):
        S2LTrainer(str(real_models.qwen3_learner), [accuracy_reward], args=args, train_dataset=ru.train_dataset(data))
