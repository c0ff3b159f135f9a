"""The tiny local models behind the CPU demo and the tests."""

import json

from s2l_trl.devtools.tiny import build_tiny_setup
from s2l_trl.explorers import LocalExplorer, SamplingSettings
from s2l_trl.rewards import format_reward


def test_warm_started_explorer_answers_in_the_boxed_format(tmp_path):
    paths = build_tiny_setup(tmp_path, num_rows=8, warm_start_explorer_steps=150)
    assert json.loads((paths["explorer"] / "warm_start.json").read_text())["steps"] == 150
    explorer = LocalExplorer(str(paths["explorer"]), sampling=SamplingSettings(max_tokens=12, seed=0))
    rows = [json.loads(line) for line in paths["dataset"].read_text().splitlines()]
    prompts = [
        explorer.tokenizer.apply_chat_template(
            r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for r in rows
    ]
    texts = explorer.tokenizer.batch_decode(explorer.generate(prompts, n=2).completion_ids, skip_special_tokens=True)
    assert sum(format_reward(texts)) / len(texts) >= 0.8, texts
    # A fresh random explorer does not: the warm start is what makes the difference.
    fresh = build_tiny_setup(tmp_path / "fresh", num_rows=8)
    cold = LocalExplorer(str(fresh["explorer"]), sampling=SamplingSettings(max_tokens=12, seed=0))
    cold_texts = cold.tokenizer.batch_decode(cold.generate(prompts, n=2).completion_ids, skip_special_tokens=True)
    assert sum(format_reward(cold_texts)) / len(cold_texts) < 0.5
