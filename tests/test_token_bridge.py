"""`TokenBridge`: explorer tokens -> learner tokens, and the start-up coverage check, without a trainer."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from s2l_trl.explorers import ExplorerError, OfflineExplorer
from s2l_trl.explorers.token_bridge import TokenBridge, lookup_fields


def bridge(tiny, explorer_model=None, max_len=8, **kw):
    tok = AutoTokenizer.from_pretrained(tiny["learner"])
    return TokenBridge(tok, explorer_model, [tok.eos_token_id], max_len, **kw), tok


def test_same_tokenizer_ids_pass_through_cut_and_capped(tiny):
    b, tok = bridge(tiny, str(tiny["explorer"]))
    assert b.matches and b.explorer_vocab_size == len(tok)
    eos = tok.eos_token_id
    assert b.prompt_ids([5, 6, 7], {"prompt": "ignored"}) == (5, 6, 7)
    # Cut after the first EOS (its log-prob kept), capped at max_completion_length.
    assert b.to_learner([10, 11, eos, 12], [-1.0, -2.0, -3.0, -4.0]) == ([10, 11, eos], [-1.0, -2.0, -3.0])
    assert b.to_learner(list(range(20, 40)), None) == (list(range(20, 28)), None)
    # An empty completion is a lone EOS: TRL cannot score zero tokens.
    assert b.to_learner([], []) == ([eos], [pytest.approx(float("nan"), nan_ok=True)])


def test_ids_outside_the_learner_vocabulary_name_the_fix(tiny):
    b, tok = bridge(tiny)
    with pytest.raises(ExplorerError, match=rf"token id {len(tok) + 3}.*set explorer_model"):
        b.to_learner([1, len(tok) + 3], None)
    named, _ = bridge(tiny, str(tiny["explorer"]))
    with pytest.raises(ExplorerError, match="does not serve that model"):
        named.to_learner([-1], None)


def test_another_tokenizer_is_re_rendered_and_re_tokenized(tiny, foreign_explorer):
    b, tok = bridge(tiny, str(foreign_explorer), max_len=64)
    ftok = AutoTokenizer.from_pretrained(foreign_explorer)
    assert not b.matches and b.explorer_vocab_size == len(ftok) and ftok.eos_token_id in b.explorer_eos_ids
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    rendered = ftok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(b.prompt_ids([1, 2, 3], {"prompt": prompt})) == list(rendered["input_ids"])
    text = "2 + 3 = \\boxed{5}"
    finished = ftok(text, add_special_tokens=False)["input_ids"] + [ftok.eos_token_id]
    ids, logps = b.to_learner(finished, [-0.5] * len(finished))
    # Learner tokens of the same text, the learner's EOS for a finished completion, and no log-probs.
    assert ids == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] and logps is None
    unfinished, _ = b.to_learner(finished[:-1], None)
    assert unfinished[-1] != tok.eos_token_id
    # A backend that re-tokenizes itself (offline rollouts) hands over learner ids already.
    itself, _ = bridge(tiny, str(foreign_explorer), max_len=64, retokenizes_itself=True)
    assert itself.to_learner([4, 5], None) == ([4, 5], None)


class CoverageExplorer:
    """Knows rollouts for some prompts, with stored prompt ids; takes `n` (warns once about short prompts)."""

    def __init__(self, known: dict[str, list[int] | None]):
        self.known = known
        self.asked_n = None

    def missing(self, examples, n=None):
        self.asked_n = n
        return [f"prompt_id={e['prompt_id']!r}" for e in examples if e["prompt_id"] not in self.known]

    def stored_prompt_ids(self, example):
        return self.known.get(example["prompt_id"])


def test_coverage_names_every_missing_prompt_and_passes_the_row_count(tiny):
    b, tok = bridge(tiny)
    examples = [lookup_fields({"prompt_id": f"p{i}", "prompt": "x", "solution": "1"}) for i in range(3)]
    assert examples[0] == {"prompt_id": "p0", "prompt": "x"}
    explorer = CoverageExplorer({"p1": None})
    with pytest.raises(ExplorerError, match=r"2 of the 3 training prompts: prompt_id='p0', prompt_id='p2'"):
        b.check_coverage(explorer, examples, lambda prompts: [[1]], rows_per_prompt=16)
    assert explorer.asked_n == 16
    # A backend whose `missing` takes no `n` still works.
    b.check_coverage(type("Old", (), {"missing": lambda self, examples: []})(), examples, lambda p: [[1]], 16)


def test_stored_prompt_ids_from_another_tokenizer_or_template_are_told_apart(tiny, foreign_explorer):
    b, tok = bridge(tiny)
    text = "Add 2 and 3."
    built = tok(text, add_special_tokens=False)["input_ids"]
    examples = [{"prompt_id": "a", "prompt": text}]

    def check(stored):
        b.check_coverage(CoverageExplorer({"a": stored}), examples, lambda prompts: [built], rows_per_prompt=4)

    check(built)  # the same ids: fine
    with pytest.raises(ExplorerError, match="another chat template, system prompt"):
        check(tok("System: be brief. " + text, add_special_tokens=False)["input_ids"])
    with pytest.raises(ExplorerError, match="outside the learner's vocabulary.*another tokenizer"):
        check([len(tok) + 5, 1])
    # The same text in other ids (here: one id per character instead of BPE merges) is another tokenizer.
    per_char = [i for ch in text for i in tok(ch, add_special_tokens=False)["input_ids"]]
    assert per_char != built
    with pytest.raises(ExplorerError, match="same text was tokenized differently"):
        check(per_char)
    # Another tokenizer whose ids all lie inside the learner's vocabulary: read with the learner's, they spell
    # other text (here "What is 22+45+ 45? ...").
    sum_text = "What is 23+45+17? Give the answer in a box."
    foreign_ids = AutoTokenizer.from_pretrained(foreign_explorer)(sum_text, add_special_tokens=False)["input_ids"]
    assert max(foreign_ids) < len(tok) and tok.decode(foreign_ids) != sum_text
    sum_built = tok(sum_text, add_special_tokens=False)["input_ids"]
    with pytest.raises(ExplorerError, match="do not spell this prompt.*another tokenizer"):
        b.check_coverage(
            CoverageExplorer({"s": foreign_ids}),
            [{"prompt_id": "s", "prompt": sum_text}],
            lambda prompts: [sum_built],
            rows_per_prompt=4,
        )
    # Chat messages: a system prompt added around the user's words is a template difference.
    chat = [{"prompt_id": "a", "prompt": [{"role": "user", "content": text}]}]
    system = tok("System: be brief. User: " + text, add_special_tokens=False)["input_ids"]
    with pytest.raises(ExplorerError, match="another chat template"):
        b.check_coverage(CoverageExplorer({"a": system}), chat, lambda prompts: [built], rows_per_prompt=4)


def _rollouts(path, tok, rows):
    """Rollout lines `(prompt_id, prompt, response_ids)` whose stored prompt ids are `tok`'s ids of the prompt."""
    lines = []
    for pid, prompt, response_ids in rows:
        lines.append(
            {
                "prompt_id": pid,
                "prompt": prompt,
                "prompt_ids": tok(prompt if isinstance(prompt, str) else prompt[-1]["content"])["input_ids"],
                "response": "x",
                "response_ids": response_ids,
                "small_model_log_probs": [-0.5] * len(response_ids),
            }
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_data_set_edited_since_sampling_is_named_as_such_not_as_another_tokenizer(tiny, tmp_path):
    """Rows matched by prompt_id whose problem text changed: the rollouts answer the old problem."""
    b, tok = bridge(tiny)
    eos = tok.eos_token_id
    user = [{"role": "user", "content": "Add 6 and 7."}]
    rows = [("a", "Add 2 and 3.", [5, eos]), ("b", "Add 4 and 5.", [7, eos]), ("c", user, [8, eos])]
    path = _rollouts(tmp_path / "r.jsonl", tok, rows)
    explorer = OfflineExplorer(path)
    edited = [{"prompt_id": "a", "prompt": "Add 2 and 30."}, {"prompt_id": "b", "prompt": "Add 4 and 5."}]

    def build(prompts):
        return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]

    with pytest.raises(ExplorerError) as info:
        b.check_coverage(explorer, edited, build, rows_per_prompt=2)
    message = str(info.value)
    assert "1 of the 2 training prompts hold another problem than the rollouts stored under their prompt_id" in message
    assert "'Add 2 and 30.'" in message and "sampled on 'Add 2 and 3.'" in message
    assert "the data set was edited since the rollouts were sampled" in message and "tokenizer" not in message
    # The unedited data set passes; a system prompt around the same problem is still a template difference.
    b.check_coverage(explorer, [edited[1]], build, rows_per_prompt=2)
    system = {"prompt_id": "c", "prompt": [{"role": "system", "content": "Be brief."}, *user]}
    assert explorer.prompt_difference(system) == "rendering"
    assert explorer.prompt_difference({"prompt_id": "c", "prompt": user}) is None
    assert explorer.prompt_difference(edited[0]) == "problem" and explorer.prompt_difference(edited[1]) is None


def test_rollouts_sampled_with_a_smaller_completion_cap_are_refused(tiny, tmp_path, caplog):
    b, tok = bridge(tiny, max_len=16)
    eos = tok.eos_token_id
    folder = tmp_path / "rollouts"
    folder.mkdir()
    rows = [("a", "Add 2 and 3.", [5] * 6), ("a", "Add 2 and 3.", [5, 6, eos]), ("b", "Add 4 and 5.", [7] * 6)]
    path = _rollouts(folder / "rollouts.jsonl", tok, rows)
    examples = [{"prompt_id": "a", "prompt": "Add 2 and 3."}, {"prompt_id": "b", "prompt": "Add 4 and 5."}]

    def build(prompts):
        return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]

    # No sample_config.json: from the data (the longest rows, 6 tokens, end without EOS).
    with pytest.raises(ExplorerError) as info:
        b.check_coverage(OfflineExplorer(path), examples, build, rows_per_prompt=2)
    message = str(info.value)
    assert "at most 6 completion tokens" in message and "2 of the 2 that long end without EOS" in message
    assert "max_completion_length=16" in message and "--max_tokens 16" in message
    # With the s2l-sample settings beside them, those say.
    (folder / "sample_config.json").write_text(json.dumps({"max_tokens": 6}))
    with pytest.raises(ExplorerError, match=r"max_tokens=6 in .*sample_config\.json\), fewer than max_completion_len"):
        b.check_coverage(OfflineExplorer(path), examples, build, rows_per_prompt=2)
    # Sampled at the learner's cap or above: fine (longer rows are cut at max_completion_length like the learner's).
    (folder / "sample_config.json").write_text(json.dumps({"max_tokens": 16}))
    b.check_coverage(OfflineExplorer(path), examples, build, rows_per_prompt=2)
    (folder / "sample_config.json").unlink()
    bridge(tiny, max_len=6)[0].check_coverage(OfflineExplorer(path), examples, build, rows_per_prompt=2)
