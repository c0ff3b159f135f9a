"""The data layer shared by `s2l-train` and `s2l-sample`: prompt token ids exactly as TRL's GRPOTrainer builds them,
and one load-and-map of the training set (nested id and gold columns, template, system prompt)."""

from __future__ import annotations

import json

import pytest

from s2l_trl.data import PromptDataArguments, load_train_dataset, prompt_token_ids

# Qwen3's switch, reduced: the generation prompt depends on a chat_template_kwargs value.
THINK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)


@pytest.fixture(scope="module")
def think_tokenizer(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["learner"])
    tok.chat_template = THINK_TEMPLATE
    return tok


def _grpo_trainer(tiny, tmp_path, tokenizer, prompts, chat_template_kwargs=None):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=4,
        chat_template_kwargs=chat_template_kwargs,
    )
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    return GRPOTrainer(
        model=str(tiny["learner"]),
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def test_prompt_token_ids_are_the_trainers_conversational(tiny, tmp_path, think_tokenizer):
    data = PromptDataArguments(system_prompt="Add the numbers.", dataset_prompt_template="Q: {prompt}")
    rows = [{"prompt": f"What is {a} + 1?", "solution": str(a + 1)} for a in range(3)]
    prompts = list(load_train_dataset(data, rows=rows)["prompt"])
    kwargs = {"enable_thinking": False}
    trainer = _grpo_trainer(tiny, tmp_path, think_tokenizer, prompts, kwargs)
    trl_ids, _, _ = trainer._tokenize_prompts(prompts)
    mine = prompt_token_ids(think_tokenizer, prompts, kwargs)
    assert mine == [list(ids) for ids in trl_ids]
    # The kwargs matter here: without them the generation prompt differs.
    assert prompt_token_ids(think_tokenizer, prompts) != mine
    text = think_tokenizer.decode(mine[0])
    assert text.startswith("<|im_start|>system\nAdd the numbers.<|im_end|>") and "Q: What is 0 + 1?" in text


def test_prompt_token_ids_are_the_trainers_plain_text(tiny, tmp_path, think_tokenizer):
    prompts = ["What is 2 + 2? The answer is", "What is 10 + 5?"]
    trainer = _grpo_trainer(tiny, tmp_path, think_tokenizer, prompts)
    trl_ids, _, _ = trainer._tokenize_prompts(prompts)
    assert prompt_token_ids(think_tokenizer, prompts) == [list(ids) for ids in trl_ids]


def test_load_train_dataset_reads_nested_columns_as_the_trainer_does(tmp_path):
    path = tmp_path / "dapo.jsonl"
    rows = [
        {
            "prompt": f'Solve {i} + {i}.\n\nRemember to put your answer on its own line after "Answer:".',
            "reward_model": {"ground_truth": 2 * i, "style": "rule"},
            "extra_info": {"index": f"uuid-{i}"},
            "data_source": "math_dapo",
        }
        for i in range(3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = PromptDataArguments(
        dataset_name=str(path),
        dataset_solution_column="reward_model.ground_truth",
        dataset_prompt_id_column="extra_info.index",
        system_prompt="Think step by step.",
    )
    mapped = load_train_dataset(data, keep_columns=("data_source", "absent"))
    assert sorted(mapped.column_names) == ["data_source", "prompt", "prompt_id", "solution"]
    assert mapped[1] == {
        "prompt": [
            {"role": "system", "content": "Think step by step."},
            {"role": "user", "content": rows[1]["prompt"]},
        ],
        "solution": "2",
        "prompt_id": "uuid-1",
        "data_source": "math_dapo",
    }
    # Without a reward that reads it, a missing solution column is no error, and no 'solution' is made up.
    no_gold = load_train_dataset(
        PromptDataArguments(dataset_name=str(path), dataset_solution_column="answer"), needs_solution=False
    )
    assert "solution" not in no_gold.column_names


@pytest.mark.parametrize(
    "template, message",
    [("Solve it.", "has no {prompt} field"), ("{prompt} {other}", "not a `str.format` pattern")],
)
def test_bad_prompt_template_is_named(template, message):
    with pytest.raises(ValueError, match=message) as err:
        PromptDataArguments(dataset_prompt_template=template)
    assert repr(template) in str(err.value)
