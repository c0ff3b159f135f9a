"""`s2l-eval` and `s2l-sample` parse their dataclasses with `TrlParser`: YAML configs (`--config`), the flags that
existed before (`--dataset`, `--split`, `--prompt_column`, `--answer_column`, `--backend transformers`), and
validation that names the bad value."""

from __future__ import annotations

import json

import pytest
import yaml

from s2l_trl.cli.eval import main as eval_main
from s2l_trl.cli.eval import make_parser as eval_parser
from s2l_trl.cli.sample import make_parser as sample_parser


def test_eval_reads_a_yaml_config_and_flags_override_it(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model_path": "org/model", "mode": "think", "k": 8, "benchmarks": ["math500"], "backend": "transformers"}
        )
    )
    (args,) = eval_parser().parse_args_and_config(args=["--config", str(config), "--k", "4", "--seed", "-1"])
    assert (args.model_path, args.mode, args.k, args.benchmarks, args.seed) == (
        "org/model",
        "think",
        4,
        ["math500"],
        -1,
    )
    assert args.backend == "transformers" and args.temperature == 0.6  # the think preset fills what is unset


def test_eval_yaml_runs_end_to_end(tmp_path):
    """A whole evaluation driven by YAML: scoring of hand-written outputs (no model needed)."""
    out = tmp_path / "output" / "hand_y0"
    out.mkdir(parents=True)
    raw = [{"question": "2+2?", "answer": "4", "outputs": [r"\boxed{4}", r"\boxed{5}"]}]
    (out / "math500_raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    config = tmp_path / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_path": "some/hand",
                "k": 2,
                "benchmarks": ["math500"],
                "skip_inference": True,
                "timestamp": "y0",
                "output_root": str(tmp_path),
            }
        )
    )
    summary = eval_main(["--config", str(config)])
    assert summary["benchmarks"]["math500"]["pass@1"] == pytest.approx(0.5)


def test_eval_refuses_an_unknown_backend_from_yaml(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"model_path": "org/model", "backend": "tensorrt"}))
    with pytest.raises(ValueError, match=r"backend must be one of \('vllm', 'server', 'local'\), got 'tensorrt'"):
        eval_parser().parse_args_and_config(args=["--config", str(config)])


def test_sample_takes_the_training_data_arguments_and_the_old_flag_names(tmp_path):
    config = tmp_path / "sample.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_path": "org/explorer",
                "output_dir": str(tmp_path / "r"),
                "dataset_name": "data/train.jsonl",
                "dataset_prompt_id_column": "extra_info.index",
                "chat_template_kwargs": {"enable_thinking": False},
                "num_generations": 4,
            }
        )
    )
    data, args = sample_parser().parse_args_and_config(args=["--config", str(config), "--backend", "transformers"])
    assert (data.dataset_name, data.dataset_prompt_id_column, data.dataset_solution_column) == (
        "data/train.jsonl",
        "extra_info.index",
        "solution",
    )
    assert args.chat_template_kwargs == {"enable_thinking": False} and args.num_generations == 4
    assert args.backend == "transformers" and args.dedupe

    old = [
        "--model_path",
        "m",
        "--output_dir",
        "o",
        "--dataset",
        "d.jsonl",
        "--split",
        "dev",
        "--prompt_column",
        "question",
        "--answer_column",
        "reward_model.ground_truth",
        "--chat_template_kwargs",
        '{"enable_thinking": true}',
        "--no_dedupe",
    ]
    data, args = sample_parser().parse_args_and_config(args=old)
    assert (data.dataset_name, data.dataset_train_split, data.dataset_prompt_column, data.dataset_solution_column) == (
        "d.jsonl",
        "dev",
        "question",
        "reward_model.ground_truth",
    )
    assert args.chat_template_kwargs == {"enable_thinking": True} and not args.dedupe


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--chat_template_kwargs", "{enable_thinking: false}"], r"chat_template_kwargs '\{enable_thinking: false\}' "),
        (["--chat_template_kwargs", "[1]"], r"chat_template_kwargs must be a mapping \(JSON object\), got \[1\]"),
        (["--num_shards", "2", "--shard_index", "2"], r"shard_index must be in \[0, num_shards=2\), got 2"),
    ],
)
def test_sample_refuses_bad_settings_by_name(flags, message):
    with pytest.raises(ValueError, match=message):
        sample_parser().parse_args_and_config(args=["--model_path", "m", "--output_dir", "o", *flags])
