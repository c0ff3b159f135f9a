"""OfflineExplorer: rows validated at load (errors name file:line), whole-prompt matching and coverage, EOS kept when
re-tokenizing for another tokenizer, and a draw state that survives a checkpoint."""

from __future__ import annotations

import json

import pytest

from s2l_trl.explorers import ExplorerError, OfflineExplorer, read_rollouts
from s2l_trl.explorers.offline import prompt_key

SYSTEM_A = [{"role": "system", "content": "Answer briefly."}]
SYSTEM_B = [{"role": "system", "content": "Answer at length."}]
USER = [{"role": "user", "content": "What is 2 + 2?"}]


def _row(prompt, response_ids, prompt_id=None, **extra):
    row = {
        "prompt_id": prompt_id,
        "prompt": prompt,
        "prompt_ids": [1, 2, 3],
        "response": "x",
        "response_ids": response_ids,
        "small_model_log_probs": None,
        "reward": 0.0,
        "is_correct": False,
        "data_source": "test",
        "ground_truth": "4",
    }
    row.update(extra)
    return row


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_invalid_row_is_reported_with_file_and_line(tmp_path):
    rows = [
        _row(USER, [5, 6]),  # 1: fine
        _row(USER, [5, "6"]),  # 2: a string id
        _row(USER, [5, 600]),  # 3: outside a vocabulary of 512
        _row(42, [5]),  # 4: prompt neither text nor messages
        _row(USER, [5, 6], small_model_log_probs=[-0.1]),  # 5: log-probs shorter than the ids
        _row(USER, [5], prompt_ids=["a"]),  # 6: prompt ids that are not ids
        _row(USER, [5], prompt_ids=[-1]),  # 7: negative id
        _row(USER, [True]),  # 8: a boolean is not a token id
        _row(USER, [5], prompt_id=[1]),  # 9: a list as prompt_id
    ]
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ExplorerError) as info:
        read_rollouts(path, vocab_size=512)
    message = str(info.value)
    assert "8 invalid rollout row(s)" in message
    for line in range(2, 10):
        assert f"bad.jsonl:{line}:" in message
    assert "bad.jsonl:1:" not in message
    assert "token id 600, outside the vocabulary (size 512)" in message
    assert "token id -1" in message
    # Without a vocabulary size the ids are only type-checked.
    with pytest.raises(ExplorerError) as info:
        read_rollouts(path)
    assert "bad.jsonl:3:" not in str(info.value) and "bad.jsonl:2:" in str(info.value)
    # The explorer validates at construction, with the vocabulary it is given.
    with pytest.raises(ExplorerError, match=r"bad3\.jsonl:3: response_ids holds token id 600"):
        OfflineExplorer(_write(tmp_path / "bad3.jsonl", [rows[0], rows[0], rows[2]]), vocab_size=512)


def test_empty_completions_and_unrecorded_prompt_ids_are_valid(tmp_path):
    rows = [_row(USER, []), _row(USER, [7], prompt_ids=[]), _row(USER, [8], prompt_ids=None)]
    path = _write(tmp_path / "ok.jsonl", rows)
    explorer = OfflineExplorer(path, vocab_size=16)
    out = explorer.generate([[1]], 3, inputs=[{"prompt": USER}])
    assert sorted(out.completion_ids) == [[], [7], [8]]


def test_retokenizing_needs_the_response_text(tmp_path, tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["learner"])
    row = _row(USER, [5])
    del row["response"]
    path = _write(tmp_path / "r.jsonl", [_row(USER, [5]), row])
    OfflineExplorer(path)  # ids used as-is: the text is not needed
    with pytest.raises(ExplorerError, match=r"r\.jsonl:2: response .*missing"):
        OfflineExplorer(path, retokenize_with=tok, explorer_eos_token_ids=[2])


def test_whole_prompt_matching_keeps_system_prompts_apart(tmp_path):
    a, b = SYSTEM_A + USER, SYSTEM_B + USER  # same user turn, different system prompts
    path = _write(tmp_path / "r.jsonl", [_row(a, [1]), _row(a, [2]), _row(b, [3]), _row(b, [4])])
    explorer = OfflineExplorer(path)
    for prompt, expected in ((a, [[1], [2]]), (b, [[3], [4]])):
        for _ in range(5):
            out = explorer.generate([[0]], 2, inputs=[{"prompt": prompt}])
            assert sorted(out.completion_ids) == expected
    # A prompt with the same user turn under a third system prompt has no rollouts.
    other = [{"role": "system", "content": "Think."}] + USER
    assert explorer.missing([{"prompt": a}, {"prompt": other}]) == [f"prompt {prompt_key(other)[:120]!r}"]


def test_rollouts_that_store_the_problem_text_match_conversational_rows(tmp_path):
    # The authors' files may store only the problem text; a conversational data-set row finds it by its user turn.
    path = _write(tmp_path / "r.jsonl", [_row("What is 2 + 2?", [9]), _row("What is 3 + 3?", [6])])
    explorer = OfflineExplorer(path)
    assert explorer.generate([[0]], 1, inputs=[{"prompt": SYSTEM_A + USER}]).completion_ids == [[9]]
    assert explorer.generate([[0]], 1, inputs=[{"prompt": "What is 3 + 3?"}]).completion_ids == [[6]]
    assert explorer.missing([{"prompt": "What is 2 + 2?"}, {"prompt": "What is 5 + 5?"}]) == ["prompt 'What is 5 + 5?'"]


def test_missing_lists_every_uncovered_row_once_by_prompt_id(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_row(USER, [1], prompt_id="p0"), _row(USER, [2], prompt_id=7)])
    explorer = OfflineExplorer(path)
    data = [
        {"prompt_id": "p0", "prompt": USER},
        {"prompt_id": "p1", "prompt": USER},  # same prompt, but ids decide when the data set has them
        {"prompt_id": 7, "prompt": SYSTEM_A},
        {"prompt_id": "p1", "prompt": USER},
        {"prompt_id": "p2", "prompt": USER},
    ]
    assert explorer.missing(data) == ["prompt_id='p1'", "prompt_id='p2'"]
    assert explorer.missing(data[:1] + data[2:3]) == []


def test_retokenized_finished_completions_keep_their_eos(tmp_path, tiny):
    from transformers import AutoTokenizer

    from s2l_trl.devtools.tiny import build_tokenizer

    learner_tok = AutoTokenizer.from_pretrained(tiny["learner"])
    explorer_tok = build_tokenizer(tmp_path / "foreign_tok", vocab_size=400, seed=7)
    assert explorer_tok.get_vocab() != learner_tok.get_vocab()
    text = "\\boxed{12}"
    ids = explorer_tok(text, add_special_tokens=False)["input_ids"]
    finished = _row(USER, ids + [explorer_tok.eos_token_id], response=text, prompt_id="done")
    truncated = _row(USER, ids, response=text, prompt_id="cut")
    path = _write(tmp_path / "r.jsonl", [finished, truncated])
    explorer = OfflineExplorer(
        path,
        retokenize_with=learner_tok,
        explorer_eos_token_ids=[explorer_tok.eos_token_id],
        vocab_size=len(explorer_tok),
    )
    expected = learner_tok(text, add_special_tokens=False)["input_ids"]
    out = explorer.generate([[0], [0]], 1, inputs=[{"prompt_id": "done"}, {"prompt_id": "cut"}])
    assert out.completion_ids == [expected + [learner_tok.eos_token_id], expected]
    assert out.logprobs is None  # another tokenizer's log-probs do not apply


def test_draw_state_round_trips_through_json(tmp_path):
    rows = [_row(USER, [i], prompt_id="p") for i in range(10)]
    path = _write(tmp_path / "r.jsonl", rows)
    first = OfflineExplorer(path, seed=3)
    draws = [first.generate([[0]], 4, inputs=[{"prompt_id": "p"}]).completion_ids for _ in range(4)]
    assert len({json.dumps(d) for d in draws}) > 1  # the requests draw differently
    # Same seed, same sequence.
    again = OfflineExplorer(path, seed=3)
    assert [again.generate([[0]], 4, inputs=[{"prompt_id": "p"}]).completion_ids for _ in range(4)] == draws
    # A resumed run continues the sequence from the saved state (a checkpoint stores it as JSON).
    saved = OfflineExplorer(path, seed=3)
    saved.generate([[0]], 4, inputs=[{"prompt_id": "p"}])
    state = json.loads(json.dumps(saved.state_dict()))
    resumed = OfflineExplorer(path, seed=3)
    resumed.load_state_dict(state)
    assert [resumed.generate([[0]], 4, inputs=[{"prompt_id": "p"}]).completion_ids for _ in range(3)] == draws[1:]
    # Another seed draws otherwise.
    other = OfflineExplorer(path, seed=4)
    assert [other.generate([[0]], 4, inputs=[{"prompt_id": "p"}]).completion_ids for _ in range(4)] != draws


def test_a_group_split_across_two_processes_draws_no_stored_rollout_twice(tmp_path):
    """G_w = 6 explorer rows of group 1 from 8 stored rollouts: process 0 asks for groups (0, 1) and keeps slots 0-2 of
    group 1, process 1 asks for groups (1, 2) and keeps slots 3-5. Drawn per (request, group), both processes make the
    same draws for group 1, so its six rows are six distinct rollouts, and exactly those a one-process run keeps
    (drawn per request in prompt order, process 0 drew group 1 after group 0 and process 1 first: 5 distinct of 6)."""
    from s2l_trl.explorers.rounds import ExplorerRequest, ExplorerRounds

    rows = [_row(USER, [100 * p + i], prompt_id=f"p{p}") for p in range(3) for i in range(8)]
    path = _write(tmp_path / "r.jsonl", rows)

    def request(groups):
        inputs = tuple({"prompt_id": f"p{g}"} for g in groups)
        return ExplorerRequest(round=0, groups=tuple(groups), prompt_ids=((0,),) * len(groups), n=6, inputs=inputs)

    def collect(groups, wanted):
        rounds = ExplorerRounds(OfflineExplorer(path, seed=5))  # each process has its own explorer, same seed
        rounds.request(request(groups))
        return rounds.collect(request(groups), wanted).rows

    first = collect([0, 1], [(0, s) for s in range(6)] + [(1, s) for s in range(3)])
    second = collect([1, 2], [(1, s) for s in range(3, 6)] + [(2, s) for s in range(6)])
    group1 = [first[(1, s)][0] for s in range(3)] + [second[(1, s)][0] for s in range(3, 6)]
    assert len({tuple(ids) for ids in group1}) == 6, group1
    one_process = collect([0, 1, 2], [(g, s) for g in range(3) for s in range(6)])
    assert {k: ids for k, (ids, _) in {**first, **second}.items()} == {k: ids for k, (ids, _) in one_process.items()}
