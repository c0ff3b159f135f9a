"""`s2l-sample`: rollouts in the authors' schema that the trainer's offline explorer reads back."""

import json
from pathlib import Path

import pytest

from s2l_trl.cli.sample import main as sample_main
from s2l_trl.data import PromptDataArguments
from s2l_trl.explorers import ROLLOUT_FIELDS, ExplorerOutput, OfflineExplorer, SamplingSettings, read_rollouts
from s2l_trl.explorers.offline import prompt_text_key
from s2l_trl.preflight import InputError
from s2l_trl.sampling.engine import SamplingEngine
from s2l_trl.sampling.rollouts import sample_rollouts, stable_prompt_id

SMALL = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=8, seed=0)


def record_explorer_rows(trainer) -> list[tuple[str, tuple[int, ...]]]:
    """(prompt_id, completion ids) of every explorer row the trainer receives, recorded at the Explorer protocol."""
    seen = []
    explorer = trainer.explorer
    original = explorer.generate

    def generate(prompt_ids, n, inputs=None):
        out = original(prompt_ids, n, inputs=inputs)
        for i, example in enumerate(inputs):
            seen.extend([(str(example["prompt_id"]), tuple(ids)) for ids in out.completion_ids[i * n : (i + 1) * n]])
        return out

    explorer.generate = generate
    return seen


def _rows(tiny, n):
    return [json.loads(line) for line in Path(tiny["dataset"]).open()][:n]


def test_transformers_rollouts_round_trip_through_offline_explorer(tiny, tmp_path):
    path = sample_main(
        [
            "--model_path",
            str(tiny["explorer"]),
            "--dataset",
            str(tiny["dataset"]),
            "--output_dir",
            str(tmp_path / "r"),
            "--backend",
            "transformers",
            "--num_generations",
            "4",
            "--max_prompts",
            "5",
            "--max_tokens",
            "8",
        ]
    )
    rows = read_rollouts(path)
    assert path.name == "rollouts.jsonl" and len(rows) == 20
    assert all(tuple(r) == ROLLOUT_FIELDS for r in rows)
    dataset = _rows(tiny, 5)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["explorer"])
    for example in dataset:
        mine = [r for r in rows if r["prompt_id"] == example["prompt_id"]]
        assert len(mine) == 4
        assert mine[0]["prompt"] == example["prompt"] and mine[0]["ground_truth"] == example["solution"]
        text = tok.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
        assert mine[0]["prompt_ids"] == tok(text, add_special_tokens=False)["input_ids"]
        for r in mine:
            assert len(r["small_model_log_probs"]) == len(r["response_ids"]) > 0
            assert r["reward"] == float(r["is_correct"])
            assert r["data_source"] == str(tiny["dataset"])
    explorer = OfflineExplorer(path, seed=1)
    out = explorer.generate([[0]] * 5, n=4, inputs=dataset)
    for i, example in enumerate(dataset):
        stored = sorted(r["response_ids"] for r in rows if r["prompt_id"] == example["prompt_id"])
        assert sorted(out.completion_ids[4 * i : 4 * i + 4]) == stored


class _ScriptedExplorer:
    """Answers each prompt with fixed texts (the first one right), to check rewards; counts prompts sampled."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.prompts = tokenizer, answers, 0

    def generate(self, prompt_ids, n, inputs=None):
        self.prompts += len(prompt_ids)
        ids = []
        for p in prompt_ids:
            gold = self.answers[tuple(p)]
            texts = [f"so \\boxed{{{gold}}}"] + [f"Answer: {gold}1"] * (n - 1)
            ids += [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return ExplorerOutput(completion_ids=ids, logprobs=[[-0.5] * len(x) for x in ids])


def _scripted_engine(tiny, dataset_rows):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["explorer"])
    engine = SamplingEngine(None, tok)

    def as_trained(prompt):  # a string prompt reaches the trainer (and the sampler) as a user turn
        return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]

    engine.explorer = _ScriptedExplorer(
        tok, {tuple(engine.encode(as_trained(r["prompt"]))): r["answer"] for r in dataset_rows}
    )
    return engine


def test_text_prompts_without_ids_are_deduped_scored_and_matched_by_text(tiny, tmp_path):
    data = [
        {"prompt": "What is 1 + 2?", "answer": 3},
        {"prompt": "What is 2 + 2?", "answer": 4},
        {"prompt": "What is 1 + 2?", "answer": 3},
    ]
    engine = _scripted_engine(tiny, data)
    answers = PromptDataArguments(dataset_solution_column="answer")
    path = sample_rollouts(data, tmp_path / "r", engine=engine, num_generations=3, data_args=answers)
    rows = read_rollouts(path)
    assert len(rows) == 6  # the repeated prompt is sampled once
    assert [r["is_correct"] for r in rows] == [True, False, False] * 2
    assert [r["reward"] for r in rows[:3]] == [1.0, 0.0, 0.0]
    # The stored prompt is the one the trainer sees: the string became a user turn.
    assert rows[0]["prompt_id"] == stable_prompt_id("What is 1 + 2?")
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 1 + 2?"}]
    assert rows[0]["ground_truth"] == "3"
    # The trainer's rows (mapped by the same data arguments) find their rollouts by prompt.
    inputs = [{"prompt": [{"role": "user", "content": f"What is {a} + 2?"}]} for a in (2, 1)]
    out = OfflineExplorer(path).generate([[0], [0]], n=3, inputs=inputs)
    assert sorted(out.completion_ids[:3]) == sorted(r["response_ids"] for r in rows[3:])
    assert prompt_text_key(rows[0]["prompt"]) == "What is 1 + 2?"


def test_shards_merge_and_resume_after_a_torn_write(tiny, tmp_path):
    data = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "reward_model": {"ground_truth": str(i + 1)},
            "data_source": "math_dapo",
        }
        for i in range(7)
    ]
    engine = _scripted_engine(tiny, [{**r, "answer": r["reward_model"]["ground_truth"]} for r in data])
    out_dir = tmp_path / "r"
    gold = PromptDataArguments(dataset_solution_column="reward_model.ground_truth")
    first = sample_rollouts(
        data, out_dir, engine=engine, num_generations=2, num_shards=2, shard_index=0, data_args=gold
    )
    assert first.name == "rollouts-00000-of-00002.jsonl" and not (out_dir / "rollouts.jsonl").exists()
    assert engine.explorer.prompts == 4  # rows 0, 2, 4, 6

    # Shard 1 is killed mid-prompt: one whole prompt, one orphan line, one torn line.
    shard1 = out_dir / "rollouts-00001-of-00002.jsonl"
    sample_rollouts(data[:2], tmp_path / "scratch", engine=engine, num_generations=2, data_args=gold)
    done_lines = (tmp_path / "scratch" / "rollouts.jsonl").read_text().splitlines(keepends=True)
    shard1.write_text(done_lines[2] + done_lines[3] + done_lines[0] + done_lines[1][:25])
    engine.explorer.prompts = 0
    merged = sample_rollouts(
        data, out_dir, engine=engine, num_generations=2, num_shards=2, shard_index=1, data_args=gold
    )
    assert engine.explorer.prompts == 2  # rows 3 and 5; row 1 was already complete
    assert merged == out_dir / "rollouts.jsonl"
    rows = read_rollouts(merged)
    assert len(rows) == 14 and all(r["data_source"] == "math_dapo" for r in rows)
    assert {r["ground_truth"] for r in rows} == {str(i + 1) for i in range(7)}
    out = OfflineExplorer(merged).generate([[0]] * 7, n=2, inputs=data)
    assert len(out.completion_ids) == 14

    with pytest.raises(ValueError, match="num_generations: 2 \\(before\\) vs 3 \\(now\\)"):
        sample_rollouts(data, out_dir, engine=engine, num_generations=3, num_shards=2, shard_index=1, data_args=gold)


def test_bad_inputs_are_named(tiny, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "a", "answer": 1}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"train\.jsonl:2: malformed JSON"):
        sample_rollouts(bad, tmp_path / "r", str(tiny["explorer"]))
    with pytest.raises(ValueError, match="no prompt column 'question'"):
        sample_rollouts(
            [{"prompt": "a"}],
            tmp_path / "r2",
            str(tiny["explorer"]),
            data_args=PromptDataArguments(dataset_prompt_column="question"),
        )
    with pytest.raises(ValueError, match="no solution column 'solution'"):
        sample_rollouts(
            [{"prompt": "a"}], tmp_path / "r3", engine=_scripted_engine(tiny, [{"prompt": "a", "answer": "x"}])
        )
    # Refused before anything is written.
    assert not any((tmp_path / name).exists() for name in ("r", "r2", "r3"))


def test_sampled_rollouts_train_s2l_trainer_offline(tiny, tmp_path):
    """`s2l-sample` output is directly usable as `explorer_rollouts`: its responses become the explorer rows."""
    from datasets import Dataset
    from trainer_utils import digit_reward, logged, s2l_args

    from s2l_trl import S2LTrainer

    path = sample_main(
        [
            "--model_path",
            str(tiny["explorer"]),
            "--dataset",
            str(tiny["dataset"]),
            "--output_dir",
            str(tmp_path / "r"),
            "--backend",
            "transformers",
            "--num_generations",
            "4",
            "--max_prompts",
            "4",
            "--max_tokens",
            "16",  # the learner's max_completion_length: both sources truncated alike
        ]
    )
    stored = {(r["prompt_id"], tuple(r["response_ids"])) for r in read_rollouts(path)}
    dataset = Dataset.from_list(_rows(tiny, 4))
    # token_truncate IS needs the explorer's log-probs: the stored small_model_log_probs must reach the trainer.
    args = s2l_args(
        tmp_path,
        path,
        max_steps=2,
        mix_steps=2,
        explorer_model=str(tiny["explorer"]),
        explorer_importance_sampling="token_truncate",
    )
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=dataset)
    seen = record_explorer_rows(trainer)
    trainer.train()
    assert logged(trainer, "s2l/alpha") == [1.0, 0.0]
    assert len(seen) == 8 and all(item in stored for item in seen)  # 2 groups x G_w = 4, each a stored sample
    assert len(logged(trainer, "s2l/logp_gap")) == 1  # the stored small_model_log_probs are used


def _numbered(count: int, start: int = 0, edit: str = "") -> list[dict]:
    return [{"prompt_id": f"q{i}", "prompt": f"What is {i} + 1?{edit}", "answer": i + 1} for i in range(start, count)]


def test_a_rerun_resumes_only_with_the_same_settings(tiny, tmp_path):
    """A new seed, an edited data set with the same ids, another data set, fewer prompts: one line each, naming
    what differs; the same settings resume (nothing sampled twice) and more prompts extend the file."""
    answers = PromptDataArguments(dataset_solution_column="answer")
    data = _numbered(4)
    everything = data + _numbered(6, start=4) + _numbered(4, edit=" Explain.")
    engine = _scripted_engine(tiny, everything)
    out = tmp_path / "r"

    def run(rows, **kw):
        kw = {"sampling": SamplingSettings(max_tokens=8, seed=0), "num_generations": 2, **kw}
        return sample_rollouts(rows, out, engine=engine, data_args=answers, **kw)

    path = run(data, max_prompts=2)
    assert engine.explorer.prompts == 2 and json.loads((out / "sample_config.json").read_text())["seed"] == 0
    run(data, max_prompts=2)
    assert engine.explorer.prompts == 2  # same settings: resumed, nothing sampled again
    run(data)  # more prompts of the same data set: extends the file
    assert engine.explorer.prompts == 4 and len(read_rollouts(path)) == 8
    before = path.read_bytes()
    for rows, kw, shown in [
        (data, {"sampling": SamplingSettings(max_tokens=8, seed=7)}, "seed: 0 (before) vs 7 (now)"),
        (_numbered(4, edit=" Explain."), {}, "the data set (its prompt ids, prompts and solutions, in order): fingerp"),
        (data + _numbered(6, start=4), {}, "the data set (its prompt ids"),
        (data, {"max_prompts": 3}, "max_prompts: None (before) vs 3 (now; the folder holds more prompts)"),
        (data, {"dedupe": False}, "dedupe: True (before) vs False (now)"),
    ]:
        with pytest.raises(InputError) as info:
            run(rows, **kw)
        message = str(info.value)
        assert shown in message and "holds rollouts sampled with other settings" in message, message
        assert "another --output_dir, or remove" in message and str(path) in message
    assert path.read_bytes() == before and engine.explorer.prompts == 4  # nothing sampled, nothing appended
    # Once the rollouts are removed (the fix the message gives), other settings start afresh.
    for file in out.glob("rollouts*"):
        file.unlink()
    run(data, sampling=SamplingSettings(max_tokens=8, seed=7))
    assert engine.explorer.prompts == 8 and json.loads((out / "sample_config.json").read_text())["seed"] == 7
    # Rollouts without the settings they were sampled with: not resumed blindly.
    (out / "sample_config.json").unlink()
    with pytest.raises(InputError, match=r"holds rollouts .* but no sample_config\.json"):
        run(data)


def test_max_prompts_must_be_positive(tiny, tmp_path):
    with pytest.raises(InputError, match="max_prompts must be a positive number of prompts, got 0"):
        sample_rollouts(_numbered(2), tmp_path / "r", engine=_scripted_engine(tiny, _numbered(2)), max_prompts=0)
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as exit_info:
        sample_command_line(["--model_path", str(tiny["explorer"]), "--output_dir", str(tmp_path / "c")], "0")
    assert exit_info.value.code == 2


def sample_command_line(argv: list[str], max_prompts: str):
    from s2l_trl.cli.errors import run_cli

    return run_cli("s2l-sample", sample_main, [*argv, "--max_prompts", max_prompts])


def test_the_command_line_names_a_changed_seed_in_one_line(tiny, tmp_path, capsys):
    argv = ["--model_path", str(tiny["explorer"]), "--dataset", str(tiny["dataset"]), "--output_dir"]
    argv += [str(tmp_path / "r"), "--backend", "transformers", "--num_generations", "2", "--max_tokens", "4"]
    sample_command_line(argv, "2")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        sample_command_line([*argv, "--seed", "7"], "2")
    err = capsys.readouterr().err.strip().splitlines()  # after the data set's progress bars: one line, no traceback
    assert exit_info.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("s2l-sample: error:") and "seed: 0 (before) vs 7 (now)" in err[-1]
