"""S2LTrainer on tiny local models: the mix, the rewards, the off-policy treatment, resume."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from trainer_utils import digit_reward, logged, s2l_args, tiny_dataset, write_oracle_rollouts
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from s2l_trl import S2LTrainer
from s2l_trl.devtools.vllm_server import free_port
from s2l_trl.explorers import ExplorerError, ExplorerOutput, OfflineExplorer
from s2l_trl.rewards import accuracy_reward


@pytest.fixture()
def oracle(tiny, tmp_path):
    return write_oracle_rollouts(tiny, tmp_path / "oracle.jsonl")


def test_oracle_explorer_reward_follows_schedule(tiny, tmp_path, oracle):
    """Explorer rows always right, learner rows (random model) always wrong: the reward is G_w / G per step."""
    args = s2l_args(tmp_path, oracle, max_steps=5, mix_steps=4)
    trainer = S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    trainer.train()
    # G = 4, T_mix = 4, linear: alpha = 1, 2/3, 1/3, 0, 0 -> G_w = 4, 3, 2, 0, 0
    assert logged(trainer, "s2l/alpha") == pytest.approx([1, 2 / 3, 1 / 3, 0, 0])
    assert logged(trainer, "reward") == pytest.approx([1.0, 0.75, 0.5, 0.0, 0.0])
    assert logged(trainer, "s2l/explorer_fraction") == pytest.approx([1.0, 0.75, 0.5, 0.0, 0.0])
    assert logged(trainer, "s2l/reward/explorer") == pytest.approx([1.0, 1.0, 1.0])
    assert logged(trainer, "s2l/reward/learner") == pytest.approx([0.0, 0.0, 0.0, 0.0])
    # The learner generates only its G_s rows of each of the 2 groups: 0, 1, 2, 4, 4 per group.
    assert logged(trainer, "s2l/learner_rows_generated") == [0.0, 2.0, 4.0, 8.0, 8.0]


def test_alpha_zero_matches_plain_grpo(tiny, tmp_path, oracle):
    """With alpha = 0 throughout, S2LTrainer is GRPOTrainer: same losses and metrics for the same seed."""
    common = dict(
        use_cpu=True,
        bf16=False,
        report_to="none",
        learning_rate=1e-4,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=16,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    grpo = GRPOTrainer(
        str(tiny["learner"]),
        [digit_reward],
        args=GRPOConfig(output_dir=str(tmp_path / "g"), **common),
        train_dataset=tiny_dataset(tiny),
    )
    grpo.train()
    s2l = S2LTrainer(
        str(tiny["learner"]),
        [digit_reward],
        args=s2l_args(tmp_path, oracle, mix_alpha_start=0.0, mix_alpha_end=0.0, **common),
        train_dataset=tiny_dataset(tiny),
    )
    s2l.train()
    assert any(abs(v) > 0 for v in logged(grpo, "loss")), "the comparison needs a non-trivial loss"
    for key in ("loss", "reward", "reward_std", "entropy", "grad_norm", "completions/mean_length"):
        assert logged(s2l, key) == pytest.approx(logged(grpo, key), rel=1e-6, abs=1e-7), key
    assert logged(s2l, "s2l/explorer_fraction") == [0.0, 0.0, 0.0]


def _mixed_batch(trainer, tiny, prompts: int = 2):
    rows = [dict(r) for r in tiny_dataset(tiny).select(range(prompts))]
    trainer.model.train()
    return trainer._generate_and_score_completions([r for r in rows for _ in range(trainer.num_generations)])


@pytest.mark.parametrize(
    "mode, expected_weight", [("token_truncate", 3.0), ("token_mask", 0.0), ("sequence_truncate", 3.0)]
)
def test_explorer_importance_sampling_policies(tiny, tmp_path, mode, expected_weight):
    # Explorer log-probs of -20 per token make pi_old / pi_explorer ~ e^14: clipped to 3, or masked to 0.
    rollouts = write_oracle_rollouts(tiny, tmp_path / "lp.jsonl", logprob=-20.0)
    args = s2l_args(
        tmp_path,
        rollouts,
        mix_schedule="constant",
        mix_alpha_start=0.5,
        explorer_importance_sampling=mode,
        explorer_importance_sampling_clip_max=3.0,
    )
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    out = _mixed_batch(trainer, tiny)
    is_explorer = out["s2l_is_explorer"]
    assert is_explorer.tolist() == [True, True, False, False] * 2
    adv = out["advantages"]
    assert adv.dim() == 2, "explorer IS weights are folded into per-token advantages"
    assert trainer._metrics["train"]["s2l/explorer_is_weight/mean"][-1] == pytest.approx(expected_weight)
    # Learner rows keep weight 1: their advantage is the same at every position.
    learner = adv[~is_explorer]
    assert torch.allclose(learner, learner[:, :1].expand_as(learner))
    mask = out["completion_mask"].bool()
    if mode.startswith("sequence"):  # one weight per sequence: constant along the row
        explorer = adv[is_explorer]
        assert torch.allclose(explorer, explorer[:, :1].expand_as(explorer))
        return
    # Token modes: the weight multiplies the group advantage on completion tokens only.
    for i in torch.nonzero(is_explorer).flatten().tolist():
        base = adv[i, ~mask[i]] if (~mask[i]).any() else None  # padding keeps weight 1
        if base is not None and base.numel() and base[0] != 0:
            assert torch.allclose(adv[i, mask[i]], base[0] * expected_weight)
    assert "importance_sampling_ratio" not in out  # the learner's own (vLLM) correction is not involved here


def test_no_explorer_importance_sampling_keeps_ratio_one(tiny, tmp_path):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "lp.jsonl", logprob=-20.0)
    args = s2l_args(tmp_path, rollouts, mix_schedule="constant", mix_alpha_start=0.5)
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    out = _mixed_batch(trainer, tiny)
    assert out["advantages"].dim() == 1  # no weight anywhere: explorer tokens get ratio 1
    assert "s2l/explorer_is_weight/mean" not in trainer._metrics["train"]
    # The log-prob gap is logged: learner log-probs (about -6 for a random 512-token model) minus -20.
    assert trainer._metrics["train"]["s2l/logp_gap"][-1] == pytest.approx(20 - math.log(512), abs=2.0)


def test_off_policy_mask_spares_explorer_rows_unless_asked(tiny, tmp_path):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "lp.jsonl", logprob=-20.0)
    args = s2l_args(tmp_path, rollouts, off_policy_mask_threshold=0.1)
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    # Two rows with negative advantage and a large divergence: row 0 explorer, row 1 learner.
    per_token = torch.full((2, 3), -6.0)
    sampling = torch.full((2, 3), -1.0)  # KL = 5 > threshold
    mask = torch.ones(2, 3)
    adv = torch.tensor([[-1.0], [-1.0]])
    trainer._s2l_loss_inputs = {
        "s2l_is_explorer": torch.tensor([True, False]),
        "s2l_explorer_logps": torch.full((2, 3), -6.0),
    }
    keep = trainer.get_off_policy_mask(adv, per_token, sampling, mask, 0.1)
    assert keep.flatten().tolist() == [1.0, 0.0]
    trainer.args.explorer_off_policy_mask = True
    # Asked for: the explorer row is judged against its own log-probs (-6 vs -6: no divergence -> kept) ...
    assert trainer.get_off_policy_mask(adv, per_token, sampling, mask, 0.1).flatten().tolist() == [1.0, 0.0]
    # ... and dropped when its own log-probs say it is far off-policy.
    trainer._s2l_loss_inputs["s2l_explorer_logps"] = torch.full((2, 3), 0.0)
    assert trainer.get_off_policy_mask(adv, per_token, sampling, mask, 0.1).flatten().tolist() == [0.0, 0.0]


def test_per_source_advantages_on_hand_made_table():
    fake = SimpleNamespace(num_generations=4, scale_rewards="none")
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    is_explorer = torch.tensor([True, True, False, False, True, False, False, False])
    adv = S2LTrainer._per_source_advantages(fake, rewards, is_explorer)
    # group 1: explorer {1, 0} mean .5, learner {1, 1} mean 1; group 2: explorer {0} alone, learner {0, 1, 0} mean 1/3
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, -1 / 3, 2 / 3, -1 / 3])
    fake.scale_rewards = "group"
    adv = S2LTrainer._per_source_advantages(fake, rewards, is_explorer)
    std = torch.tensor([1.0, 0.0]).std().item()  # sample std of {1, 0}
    assert adv[:2].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)], rel=1e-5)
    assert adv[4].item() == 0.0 and adv[2].item() == 0.0


def test_per_source_grouping_in_training(tiny, tmp_path, oracle):
    args = s2l_args(tmp_path, oracle, mix_schedule="constant", mix_alpha_start=0.5, advantage_grouping="per_source")
    trainer = S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    out = _mixed_batch(trainer, tiny)
    # Oracle explorer rows all score 1 and learner rows all 0: within each source there is no spread, so every
    # advantage is 0 (under "combined" the explorer rows would get a large positive advantage).
    assert torch.count_nonzero(out["advantages"]) == 0


def test_callable_schedule_through_trainer(tiny, tmp_path, oracle):
    args = s2l_args(tmp_path, oracle, max_steps=3)
    trainer = S2LTrainer(
        str(tiny["learner"]),
        [accuracy_reward],
        args=args,
        train_dataset=tiny_dataset(tiny),
        mix_schedule=lambda step: 0.25 * step,
    )
    trainer.train()
    assert logged(trainer, "s2l/alpha") == pytest.approx([0.25, 0.5, 0.75])
    assert logged(trainer, "reward") == pytest.approx([0.25, 0.5, 0.75])


class _Recorder:
    """A user-supplied explorer (the plug-in protocol): records requests and answers from the oracle file."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, prompt_ids, n, inputs=None) -> ExplorerOutput:
        self.calls.append((len(prompt_ids), n))
        return self.inner.generate(prompt_ids, n, inputs=inputs)


def test_custom_explorer_object_and_eval_uses_learner_only(tiny, tmp_path, oracle):
    explorer = _Recorder(OfflineExplorer(oracle))
    ds = tiny_dataset(tiny)
    args = s2l_args(
        tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8, explorer_mode="server"
    )  # the explorer object overrides the mode: no server is contacted
    trainer = S2LTrainer(
        str(tiny["learner"]),
        [accuracy_reward],
        args=args,
        train_dataset=ds,
        eval_dataset=ds.select(range(4)),
        explorer=explorer,
    )
    trainer.train()
    assert explorer.calls == [(2, 4), (2, 3)]  # one request per batch: 2 groups x G_w rows
    metrics = trainer.evaluate()
    assert metrics["eval_reward"] == 0.0  # the learner alone cannot solve it; no explorer rows in evaluation
    assert explorer.calls == [(2, 4), (2, 3)]


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_mid_schedule_continues_alpha_sequence(tiny, tmp_path, oracle):
    ds = tiny_dataset(tiny)
    full = S2LTrainer(
        str(tiny["learner"]),
        [accuracy_reward],
        train_dataset=ds,
        args=s2l_args(tmp_path / "full", oracle, max_steps=5, mix_steps=4),
    )
    full.train()
    run_dir = tmp_path / "resumed"
    first = S2LTrainer(
        str(tiny["learner"]),
        [accuracy_reward],
        train_dataset=ds,
        callbacks=[_StopAt(2)],
        args=s2l_args(run_dir, oracle, max_steps=5, mix_steps=4, save_strategy="steps", save_steps=2),
    )
    first.train()
    assert (run_dir / "out" / "checkpoint-2").is_dir()
    second = S2LTrainer(
        str(tiny["learner"]),
        [accuracy_reward],
        train_dataset=ds,
        args=s2l_args(run_dir, oracle, max_steps=5, mix_steps=4, save_strategy="steps", save_steps=2),
    )
    second.train(resume_from_checkpoint=str(run_dir / "out" / "checkpoint-2"))
    resumed = logged(first, "s2l/alpha") + [
        h["s2l/alpha"] for h in second.state.log_history if "s2l/alpha" in h and h["step"] > 2
    ]
    assert resumed == pytest.approx(logged(full, "s2l/alpha"))
    assert resumed == pytest.approx([1, 2 / 3, 1 / 3, 0, 0])


def test_unreachable_server_at_start_names_the_url(tiny, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    args = s2l_args(tmp_path, explorer_mode="server", explorer_server_base_url=url, explorer_server_timeout=2)
    with pytest.raises(ExplorerError, match=url.replace(".", r"\.")):
        S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))


def test_offline_rollouts_errors_name_file_and_line(tiny, tmp_path, oracle):
    bad = tmp_path / "bad.jsonl"
    lines = oracle.read_text().splitlines()
    bad.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(ExplorerError, match=r"bad\.jsonl:4"):
        OfflineExplorer(bad)
    # A prompt with no rollouts is an error naming the file and the prompt.
    some = tmp_path / "some.jsonl"
    some.write_text("\n".join(line for line in lines if '"add-0-0"' in line) + "\n")
    explorer = OfflineExplorer(some)
    row = dict(tiny_dataset(tiny)[1])
    with pytest.raises(ExplorerError, match=r"some\.jsonl.*add-0-1"):
        explorer.generate([[1]], 2, inputs=[row])


def test_offline_draws_without_replacement_then_with_warning(tiny, tmp_path, caplog):
    path = write_oracle_rollouts(tiny, tmp_path / "r.jsonl", per_prompt=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, r in enumerate(rows):  # make the 3 samples of each prompt distinguishable
        r["response_ids"] = r["response_ids"] + [i]
        r["small_model_log_probs"] = None
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    explorer = OfflineExplorer(path, seed=1)
    row = dict(tiny_dataset(tiny)[0])
    out = explorer.generate([[1]], 3, inputs=[row])
    assert len({tuple(c) for c in out.completion_ids}) == 3  # without replacement
    with caplog.at_level("WARNING"):
        out = explorer.generate([[1]], 5, inputs=[row])
    assert len(out.completion_ids) == 5 and "with replacement" in caplog.text
    # matching by prompt text when the data set has no prompt_id column
    row.pop("prompt_id")
    assert len(explorer.generate([[1]], 2, inputs=[row]).completion_ids) == 2


@pytest.fixture(scope="module")
def foreign_explorer(tiny, tmp_path_factory):
    """An explorer with its own tokenizer (a different BPE vocabulary): ids cannot be shared with the learner."""
    from s2l_trl.devtools.tiny import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("foreign")
    build_tokenizer(root / "tok", vocab_size=400, seed=7)
    build_model(root / "explorer", root / "tok", hidden_size=32, num_layers=1, seed=3)
    return root / "explorer"


def test_mismatched_explorer_tokenizer_is_retokenized(tiny, tmp_path, foreign_explorer):
    from transformers import AutoTokenizer

    args = s2l_args(
        tmp_path,
        explorer_mode="local",
        explorer_model=str(foreign_explorer),
        mix_schedule="constant",
        mix_alpha_start=0.5,
        max_completion_length=12,
    )
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    assert trainer.explorer_tokenizer_matches is False
    explorer_tok = AutoTokenizer.from_pretrained(foreign_explorer)
    row = dict(tiny_dataset(tiny)[0])
    # The explorer sees the prompt rendered by its own tokenizer, not the learner's ids.
    expected_prompt = explorer_tok.apply_chat_template(
        row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert trainer._explorer_prompt_ids([1, 2, 3], row) == list(expected_prompt)
    out = _mixed_batch(trainer, tiny)
    ids = out["completion_ids"][out["s2l_is_explorer"]]
    mask = out["completion_mask"][out["s2l_is_explorer"]].bool()
    # Explorer completions arrive as learner tokens: decoding with the learner tokenizer and re-encoding is a fixpoint.
    for row_ids, row_mask in zip(ids, mask):
        tokens = row_ids[row_mask].tolist()
        text = trainer.processing_class.decode(tokens, skip_special_tokens=True)
        eos = [trainer.eos_token_ids[0]] if tokens and tokens[-1] == trainer.eos_token_ids[0] else []
        assert trainer.processing_class(text, add_special_tokens=False)["input_ids"][: 12 - len(eos)] + eos == tokens
    assert "s2l/logp_gap" not in trainer._metrics["train"]  # explorer log-probs are dropped
    with pytest.raises(ValueError, match="explorer_importance_sampling"):
        S2LTrainer(
            str(tiny["learner"]),
            [digit_reward],
            train_dataset=tiny_dataset(tiny),
            args=s2l_args(
                tmp_path,
                explorer_mode="local",
                explorer_model=str(foreign_explorer),
                explorer_importance_sampling="token_truncate",
            ),
        )


class _HandshakeExplorer:
    """Blocks until the learner has started generating, and makes the learner wait until it has started itself:
    if the two ran one after the other, one side would time out."""

    def __init__(self, inner, timeout: float = 20.0):
        import threading

        self.inner, self.timeout = inner, timeout
        self.explorer_started, self.learner_started = threading.Event(), threading.Event()
        self.thread_names = []

    def generate(self, prompt_ids, n, inputs=None):
        import threading

        self.thread_names.append(threading.current_thread().name)
        self.explorer_started.set()
        if not self.learner_started.wait(self.timeout):
            raise RuntimeError("learner generation did not start while the explorer request was in flight")
        return self.inner.generate(prompt_ids, n, inputs=inputs)


def test_explorer_request_overlaps_learner_generation(tiny, tmp_path, oracle):
    explorer = _HandshakeExplorer(OfflineExplorer(oracle))
    args = s2l_args(
        tmp_path, mix_schedule="constant", mix_alpha_start=0.5, explorer_mode="offline", explorer_rollouts=str(oracle)
    )
    trainer = S2LTrainer(
        str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny), explorer=explorer
    )
    model_generate = trainer.model.generate

    def learner_generate(*a, **kw):
        explorer.learner_started.set()
        if not explorer.explorer_started.wait(explorer.timeout):
            raise RuntimeError("the explorer request had not started when the learner generated")
        return model_generate(*a, **kw)

    trainer.model.generate = learner_generate
    out = _mixed_batch(trainer, tiny)
    assert out["s2l_is_explorer"].sum() == 4
    assert explorer.thread_names == ["s2l-explorer_0"]


def test_local_explorer_runs_are_reproducible(tiny, tmp_path):
    """The in-process explorer samples on a forked, per-step seeded generator: same seed, same run."""

    def run(name):
        args = s2l_args(
            tmp_path / name, explorer_mode="local", explorer_model=str(tiny["explorer"]), max_steps=3, mix_steps=3
        )
        trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
        trainer.train()
        return [logged(trainer, k) for k in ("s2l/reward/explorer", "s2l/reward/learner", "loss")]

    assert run("a") == run("b")
