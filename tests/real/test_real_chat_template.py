"""Check 3 of the real-model tier: SmolLM2-135M-Instruct's real chat template (ChatML with a default system prompt
that a data set's own system prompt replaces) and its end of turn `<|im_end|>`, with SmolLM2 as learner and explorer.

- The prompt the explorer is asked to continue is, token for token, the learner's prompt: through a server explorer
  and through `s2l-sample`'s offline rollouts, with the template's default system prompt and with `system_prompt`.
  Rollouts sampled with another system prompt are refused, naming the system prompt as the likely cause.
- `<|im_end|>` ends a completion on both sides: the learner's own generation and the explorer's rows stop at it,
  carry it as their last token (TRL counts them as terminated), and never hold it anywhere else.
"""

from __future__ import annotations

import pytest
import real_utils as ru
from transformers import AutoTokenizer

from s2l_trl import S2LConfig, S2LTrainer
from s2l_trl.explorers import ExplorerError
from s2l_trl.rewards import accuracy_reward

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
OWN_SYSTEM = "Solve the problem. Put the final answer in \\boxed{}."


class _Scored(Exception):
    pass


def _first_round(model, data, args, stop: bool = True, **data_overrides):
    """Run training up to the end of the first round's scoring; returns (the prompt ids the explorer was asked, the
    round's rows as TRL holds them: prompt ids, completion ids (up to the mask), source)."""
    asked: list[list[int]] = []
    rows: list[tuple[list[int], list[int], bool]] = []

    class Recording(S2LTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            for p, pm, c, cm, e in zip(
                out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"],
                out["s2l_is_explorer"],
            ):  # fmt: skip
                rows.append((p[pm.bool()].tolist(), c[cm.bool()].tolist(), bool(e)))
            if stop:
                raise _Scored
            return out

    trainer = Recording(model, [accuracy_reward], args=args, train_dataset=ru.train_dataset(data, **data_overrides))
    generate = trainer.explorer.generate

    def recording_generate(prompt_ids, n, inputs=None):
        asked.extend(list(p) for p in prompt_ids)
        return generate(prompt_ids, n, inputs=inputs)

    trainer.explorer.generate = recording_generate
    try:
        trainer.train()
    except _Scored:
        pass
    finally:
        trainer.close_explorer()
    return trainer, asked, rows


@pytest.fixture(scope="module")
def data(shared_eval_data, tmp_path_factory):
    return ru.math500_subset(shared_eval_data, tmp_path_factory.mktemp("math500") / "train.jsonl", 1)


@pytest.mark.parametrize("system_prompt", [None, OWN_SYSTEM])
def test_server_explorer_continues_the_learners_prompt(real_models, smollm2_trl_server, data, tmp_path, system_prompt):
    tok = AutoTokenizer.from_pretrained(real_models.smollm2)
    args = S2LConfig(
        **ru.step_kwargs(
            tmp_path / "out",
            explorer_mode="server",
            explorer_server_base_url=smollm2_trl_server().base_url,
            explorer_model=str(real_models.smollm2),
            max_completion_length=8,
        )
    )
    _, asked, rows = _first_round(str(real_models.smollm2), data, args, system_prompt=system_prompt)
    assert len(asked) == 1 and all(explorer for _, _, explorer in rows)
    assert {tuple(p) for p, _, _ in rows} == {tuple(asked[0])}
    text = tok.decode(asked[0])
    expected_system = system_prompt or DEFAULT_SYSTEM
    assert text.startswith(f"<|im_start|>system\n{expected_system}<|im_end|>\n<|im_start|>user\n")
    assert text.count("<|im_start|>system") == 1 and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert (DEFAULT_SYSTEM in text) == (system_prompt is None)


def test_offline_rollouts_are_sampled_on_the_learners_prompt(real_models, smollm2_trl_server, data, tmp_path):
    """`s2l-sample` with the run's data arguments stores the learner's prompt ids (default and own system prompt);
    rollouts sampled with another system prompt are refused before training, saying so."""
    from s2l_trl.cli.sample import main as sample_main

    url = smollm2_trl_server().base_url

    def sample(folder: str, *extra: str):
        return sample_main(
            [
                "--model_path", str(real_models.smollm2), "--output_dir", str(tmp_path / folder),
                "--dataset_name", str(data), "--backend", "server", "--server_base_url", url,
                "--num_generations", "2", "--max_tokens", "8", "--seed", "0", *extra,
            ]
        )  # fmt: skip

    def args(rollouts):
        return S2LConfig(
            **ru.step_kwargs(
                tmp_path / "out",
                explorer_mode="offline",
                explorer_rollouts=str(rollouts),
                explorer_model=str(real_models.smollm2),
                max_completion_length=8,
            )
        )

    default, own = sample("default"), sample("own", "--system_prompt", OWN_SYSTEM)
    for rollouts, system_prompt in ((default, None), (own, OWN_SYSTEM)):
        stored = [r["prompt_ids"] for r in ru.read_rollouts(rollouts)]
        _, _, rows = _first_round(str(real_models.smollm2), data, args(rollouts), system_prompt=system_prompt)
        assert {tuple(s) for s in stored} == {tuple(p) for p, _, _ in rows}
    with pytest.raises(ExplorerError, match="another chat template, system prompt or chat_template_kwargs"):
        _first_round(str(real_models.smollm2), data, args(default), system_prompt=OWN_SYSTEM)


def test_im_end_ends_a_completion_on_both_sides(real_models, smollm2_trl_server, tmp_path):
    """One round at alpha 0.5 (2 explorer rows, 2 learner rows) on a question with a one-word answer."""
    tok = AutoTokenizer.from_pretrained(real_models.smollm2)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    data = tmp_path / "short.jsonl"
    data.write_text('{"prompt": "What is 2+2? Reply with the number only.", "solution": "4", "prompt_id": "p"}\n')
    args = S2LConfig(
        **ru.step_kwargs(
            tmp_path / "out",
            explorer_mode="server",
            explorer_server_base_url=smollm2_trl_server().base_url,
            explorer_model=str(real_models.smollm2),
            explorer_importance_sampling="none",
            explorer_temperature=ru.TEMPERATURE,
            num_generations=4,
            per_device_train_batch_size=4,
            max_completion_length=24,
            mix_alpha_start=0.5,
        )
    )
    trainer, _, rows = _first_round(str(real_models.smollm2), data, args)
    assert trainer.eos_token_ids == [im_end]  # TRL's EOS set: the template's end of turn, nothing else
    assert sorted(explorer for _, _, explorer in rows) == [False, False, True, True]
    for explorer in (True, False):
        completions = [c for _, c, e in rows if e == explorer]
        assert any(c[-1] == im_end for c in completions), [tok.decode(c) for c in completions]
        for c in completions:
            assert im_end not in c[:-1]
            text = tok.decode(c, skip_special_tokens=True)
            assert "<|im_start|>" not in tok.decode(c) and "<|im_end|>" not in text
