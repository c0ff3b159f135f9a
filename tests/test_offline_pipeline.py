"""The offline S2L-PO pipeline works by construction: `s2l-sample` run with the flags the offline launcher builds
from a recipe samples the explorer on exactly the prompt token ids the trainer uses, each row keyed by the
data set's own (nested) problem id, and `s2l-train` then trains on those stored rows.

The data set reproduces open-r1/DAPO-Math-17k-Processed's layout: a string prompt carrying the "Answer:"
instruction, the gold in `reward_model.ground_truth`, the id in `extra_info.index` (no `prompt_id` column)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from s2l_trl.cli.sample import main as sample_main
from s2l_trl.cli.train import cli as train_cli
from s2l_trl.explorers import OfflineExplorer, read_rollouts

REPO = Path(__file__).resolve().parents[1]
DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
# The generation prompt depends on chat_template_kwargs (as Qwen3's enable_thinking does): sampling without the
# recipe's kwargs would give other prompt ids than the trainer's.
THINK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)


def _with_template(src: Path, dst: Path) -> Path:
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.chat_template = THINK_TEMPLATE
    tok.save_pretrained(dst)
    return dst


def _dapo_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 3 * i + 1, 2 * i + 5
        rows.append(
            {
                "prompt": DAPO_INSTRUCTION.format(problem=f"What is {a} + {b}?"),
                "data_source": "math_dapo",
                "ability": "MATH",
                "reward_model": {"ground_truth": str(a + b), "style": "rule-lighteval/MATH_v2"},
                "extra_info": {"index": f"9a9b6eb4-a1cb-49d1-8c1e-62eaf2f7{i:04d}"},
            }
        )
    return rows


def _launcher_commands(recipe: Path, rollouts: Path) -> tuple[list[str], list[str]]:
    """The s2l-sample and s2l-train arguments of `s2l_po_offline.sh --dry-run` for ``recipe``."""
    done = subprocess.run(
        ["bash", str(REPO / "recipes/launch/s2l_po_offline.sh"), "--dry-run", "--recipe", str(recipe)]
        + ["--rollouts", str(rollouts)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    (sample,) = [shlex.split(line) for line in lines if " s2l-sample " in line]
    (train,) = [shlex.split(line) for line in lines if "s2l_trl.cli.train" in line]
    assert sample[:2] == ["CUDA_VISIBLE_DEVICES=0", "s2l-sample"]
    return sample[2:], train[train.index("s2l_trl.cli.train") + 1 :]


def test_sampled_for_the_recipe_trains_the_recipe(tiny, tmp_path, monkeypatch):
    from s2l_trl import S2LTrainer

    learner = _with_template(tiny["learner"], tmp_path / "learner")
    explorer = _with_template(tiny["explorer"], tmp_path / "explorer")
    data = tmp_path / "dapo.jsonl"
    rows = _dapo_rows(8)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = yaml.safe_load((REPO / "recipes/tiny/s2l_po/config_cpu.yaml").read_text())
    recipe.update(
        model_name_or_path=str(learner),
        explorer_model=str(explorer),
        dataset_name=str(data),
        dataset_prompt_column="prompt",
        dataset_solution_column="reward_model.ground_truth",
        dataset_prompt_id_column="extra_info.index",
        system_prompt="You are a careful mathematician.",
        chat_template_kwargs={"enable_thinking": False},
        reward_funcs=["accuracy"],
        per_device_train_batch_size=8,  # two groups of G = 4 per step
        max_steps=2,
        mix_steps=2,
        output_dir=str(tmp_path / "run"),
        disable_tqdm=True,
    )
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    rollouts = tmp_path / "rollouts" / "rollouts.jsonl"
    sample_argv, train_argv = _launcher_commands(recipe_path, rollouts)
    assert "--dataset_prompt_id_column" in sample_argv and "--chat_template_kwargs" in sample_argv
    assert train_argv[-4:] == ["--explorer_mode", "offline", "--explorer_rollouts", str(rollouts)]

    # 1. Sample on CPU: the launcher's flags, with the in-process transformers backend instead of vLLM.
    assert sample_main([*sample_argv, "--backend", "local"]) == rollouts
    stored = read_rollouts(rollouts)
    ids = {r["extra_info"]["index"] for r in rows}
    assert len(stored) == 8 * 4 and {r["prompt_id"] for r in stored} == ids  # the data set's own ids
    assert {r["ground_truth"] for r in stored} == {r["reward_model"]["ground_truth"] for r in rows}
    prompt_ids_of = {json.dumps(r["prompt"]): r["prompt_ids"] for r in stored}
    assert len(prompt_ids_of) == 8

    # 2. Train offline on them, exactly as the launcher would; record what the trainer tokenizes and draws.
    tokenized, drawn = [], []
    tokenize = S2LTrainer._tokenize_prompts

    def spy_tokenize(self, prompts):
        out = tokenize(self, prompts)
        tokenized.extend(zip(prompts, out[0]))
        return out

    generate = OfflineExplorer.generate

    def spy_generate(self, prompt_ids, n, inputs=None):
        out = generate(self, prompt_ids, n, inputs=inputs)
        for i, example in enumerate(inputs):
            drawn.extend((str(example["prompt_id"]), tuple(c)) for c in out.completion_ids[i * n : (i + 1) * n])
        return out

    monkeypatch.setattr(S2LTrainer, "_tokenize_prompts", spy_tokenize)
    monkeypatch.setattr(OfflineExplorer, "generate", spy_generate)
    train_cli(train_argv)

    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [h["s2l/alpha"] for h in state["log_history"] if "s2l/alpha" in h] == [1.0, 0.0]
    # The explorer was sampled on exactly the prompt ids the trainer uses (chat template, system prompt, kwargs).
    assert tokenized and all(list(ids) == prompt_ids_of[json.dumps(prompt)] for prompt, ids in tokenized)
    # Step 1 (alpha 1): both groups are explorer rows, each one a stored rollout of its own problem.
    stored_rows = {(r["prompt_id"], tuple(r["response_ids"])) for r in stored}
    assert len(drawn) == 8 and all(row in stored_rows for row in drawn)
