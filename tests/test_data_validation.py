"""Bad training data is refused before training starts, and nothing is written: an empty data set, a missing
prompt column, a row without a solution where a reward needs one (once silently the string 'None')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2l_trl.cli.sample import main as sample_main
from s2l_trl.cli.train import cli as train_cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _good_rows(n: int = 4) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "solution": str(i + 1)} for i in range(n)]


BAD_DATA = {
    "empty": ([], [], r"has no rows; expected at least one training prompt"),
    "missing_prompt_column": (
        [{"question": "What is 1 + 1?", "solution": "2"}],
        [],
        r"row 0: no prompt column 'prompt' \(dataset_prompt_column\); the row has columns \['question', 'solution'\]",
    ),
    "missing_solution_value": (
        _good_rows(2) + [{"prompt": [{"role": "user", "content": "What is 5 + 5?"}]}],  # no "solution" key
        [],
        r"row 2: the solution in column 'solution' is None; the reward functions \['accuracy'\] need a gold",
    ),
    "missing_solution_column": (
        [{"prompt": "What is 1 + 1?", "answer": "2"}],
        [],
        r"row 0: no solution column 'solution' \(dataset_solution_column\), which the reward functions "
        r"\['accuracy'\] need",
    ),
    "nested_solution_missing": (
        [{"prompt": "What is 1 + 1?", "reward_model": {"ground_truth": "2"}}, {"prompt": "2 + 2?", "reward_model": {}}],
        ["--dataset_solution_column", "reward_model.ground_truth"],
        r"row 1: .*'reward_model.ground_truth'",
    ),
    "empty_prompt": (
        [{"prompt": "  ", "solution": "1"}],
        [],
        r"row 0: the prompt in column 'prompt' is empty",
    ),
    "one_id_two_prompts": (
        [{"prompt": "1 + 1?", "solution": "2", "id": "a"}, {"prompt": "2 + 2?", "solution": "4", "id": "a"}],
        ["--dataset_prompt_id_column", "id"],
        r"row 1: prompt id 'a' \(column 'id'\) already names a different prompt in row 0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_s2l_train_refuses_bad_data_before_writing_anything(tiny, tmp_path, case):
    rows, extra, message = BAD_DATA[case]
    data = _write(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    argv = [
        "--config",
        str(RECIPES / "grpo" / "config_cpu.yaml"),
        "--model_name_or_path",
        str(tiny["learner"]),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        "--reward_funcs",
        "accuracy",
        "--max_steps",
        "1",
        *extra,
    ]
    with pytest.raises(ValueError, match=message) as err:
        train_cli(argv)
    assert str(data) in str(err.value)  # the error names the data set
    assert not out.exists()


def test_a_reward_that_needs_no_solution_accepts_rows_without_one(tiny, tmp_path, monkeypatch):
    """The solution check follows the rewards: `format` alone reads no `solution`, so its absence is no error."""
    import s2l_trl.cli.train as train_module

    data = _write(tmp_path / "train.jsonl", [{"prompt": "What is 1 + 1?"}])
    built = {}

    class Stop(Exception):
        pass

    def fake_trainer(**kwargs):
        built.update(kwargs)
        raise Stop

    monkeypatch.setattr(train_module, "GRPOTrainer", fake_trainer)
    with pytest.raises(Stop):
        train_cli(
            [
                "--config",
                str(RECIPES / "grpo" / "config_cpu.yaml"),
                "--model_name_or_path",
                str(tiny["learner"]),
                "--dataset_name",
                str(data),
                "--output_dir",
                str(tmp_path / "run"),
                "--reward_funcs",
                "format",
            ]
        )
    assert built["train_dataset"].column_names == ["prompt"]


def test_s2l_sample_refuses_the_same_bad_data_before_writing(tiny, tmp_path):
    rows, _, _ = BAD_DATA["missing_solution_value"]
    data = _write(tmp_path / "train.jsonl", rows)
    out = tmp_path / "rollouts"
    with pytest.raises(ValueError, match=r"row 2: the solution in column 'solution' is None; s2l-sample's judge"):
        sample_main(["--model_path", str(tiny["explorer"]), "--dataset_name", str(data), "--output_dir", str(out)])
    assert not out.exists()
