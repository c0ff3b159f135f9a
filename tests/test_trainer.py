"""S2LTrainer on tiny local models: the mix, the rewards, the off-policy treatment, resume."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from trainer_utils import digit_reward, logged, s2l_args, tiny_dataset, write_oracle_rollouts
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from s2l_trl import S2LTrainer
from s2l_trl.devtools.tiny import tiny_training_kwargs
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
    common = tiny_training_kwargs(max_steps=3)
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
    common = dict(mix_schedule="constant", mix_alpha_start=0.5, explorer_importance_sampling_clip_max=3.0)
    weighted = S2LTrainer(
        str(tiny["learner"]),
        [digit_reward],
        args=s2l_args(tmp_path / "w", rollouts, explorer_importance_sampling=mode, **common),
        train_dataset=tiny_dataset(tiny),
    )
    plain = S2LTrainer(
        str(tiny["learner"]),
        [digit_reward],
        args=s2l_args(tmp_path / "p", rollouts, **common),
        train_dataset=tiny_dataset(tiny),
    )
    # Same seed, same weights: the two batches are identical except for the explorer weights.
    torch.manual_seed(0)
    out = _mixed_batch(weighted, tiny)
    torch.manual_seed(0)
    base = _mixed_batch(plain, tiny)
    assert torch.equal(out["completion_ids"], base["completion_ids"])
    is_explorer = out["s2l_is_explorer"]
    assert is_explorer.tolist() == [True, True, False, False] * 2
    adv = out["advantages"]
    assert adv.dim() == 2 and base["advantages"].dim() == 1, "IS weights are folded into per-token advantages"
    assert weighted._metrics["train"]["s2l/explorer_is_weight/mean"][-1] == pytest.approx(expected_weight)
    mask = out["completion_mask"].bool()
    expected = base["advantages"].unsqueeze(1).expand_as(adv).clone()
    explorer_tokens = is_explorer.unsqueeze(1) & (mask if mode.startswith("token") else torch.ones_like(mask))
    expected[explorer_tokens] *= expected_weight
    assert torch.allclose(adv, expected), "explorer tokens weighted, padding and learner rows untouched"
    assert base["advantages"][is_explorer].abs().sum() > 0, "the comparison needs non-zero explorer advantages"
    assert "importance_sampling_ratio" not in out  # the learner's own (vLLM) correction is not involved here


def _count_logp_passes(trainer) -> list[int]:
    calls = [0]
    inner = trainer._get_per_token_logps_and_entropies

    def counting(*a, **kw):
        calls[0] += 1
        return inner(*a, **kw)

    trainer._get_per_token_logps_and_entropies = counting
    return calls


def test_no_explorer_importance_sampling_keeps_ratio_one(tiny, tmp_path):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "lp.jsonl", logprob=-20.0)
    args = s2l_args(tmp_path, rollouts, mix_schedule="constant", mix_alpha_start=0.5)
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    passes = _count_logp_passes(trainer)
    out = _mixed_batch(trainer, tiny)
    assert out["advantages"].dim() == 1  # no weight anywhere: explorer tokens get ratio 1
    assert "s2l/explorer_is_weight/mean" not in trainer._metrics["train"]
    # TRL needs no old log-probs here (one generation per optimizer step, beta = 0), and a metric alone must not
    # cost a forward pass: no log-prob pass at all, so no log-prob gap.
    assert passes[0] == 0 and "s2l/logp_gap" not in trainer._metrics["train"]


def test_logp_gap_comes_from_the_old_log_probs_trl_computes(tiny, tmp_path):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "lp.jsonl", logprob=-20.0)
    # Two optimizer steps per generation round: TRL computes old log-probs, and the gap reuses them.
    args = s2l_args(tmp_path, rollouts, mix_schedule="constant", mix_alpha_start=0.5, steps_per_generation=2)
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    passes = _count_logp_passes(trainer)
    _mixed_batch(trainer, tiny)
    assert passes[0] == 1, "only TRL's own old-log-prob pass"
    # Learner log-probs (about -6 for a random 512-token model) minus the stored -20.
    assert trainer._metrics["train"]["s2l/logp_gap"][-1] == pytest.approx(20 - math.log(512), abs=2.0)


def test_off_policy_mask_spares_explorer_rows_unless_asked(tiny, tmp_path):
    """Through TRL's `_compute_loss`: every row has a negative advantage and a large divergence from its sampling
    log-probs, so TRL's mask drops it, unless S2L exempts it as an explorer row."""
    rollouts = write_oracle_rollouts(tiny, tmp_path / "lp.jsonl", logprob=0.0)
    args = s2l_args(tmp_path, rollouts, mix_schedule="constant", mix_alpha_start=0.5, off_policy_mask_threshold=0.1)
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    batch = _mixed_batch(trainer, tiny)
    is_explorer = batch["s2l_is_explorer"]
    batch["advantages"] = -torch.ones_like(batch["advantages"])
    # Learner rows "sampled" with log-prob 0 per token: KL = 0 - log pi_theta ~ 6 > 0.1.
    batch["sampling_per_token_logps"] = torch.zeros(batch["completion_ids"].shape)
    decisions = []
    original = GRPOTrainer.get_off_policy_mask

    def recording(**kw):
        keep = original(**kw)
        decisions.append(keep.flatten().tolist())
        return keep

    trainer.get_off_policy_mask = recording
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test bypasses

    def keep_per_row(explorer_logps=None):
        inputs = dict(batch)
        if explorer_logps is not None:
            inputs["s2l_explorer_logps"] = explorer_logps
        trainer._compute_loss(trainer.model, inputs)
        return decisions[-1]

    expected_default = [1.0 if e else 0.0 for e in is_explorer.tolist()]
    assert keep_per_row() == expected_default
    trainer.args.explorer_off_policy_mask = True
    # Asked for: explorer rows are judged against their own log-probs: the stored 0.0 is far off-policy -> dropped.
    assert keep_per_row(torch.zeros(batch["completion_ids"].shape)) == [0.0] * len(expected_default)
    # ... and kept when their own log-probs equal the learner's (no divergence).
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        own, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, batch["completion_ids"].size(1)
        )
    assert keep_per_row(own) == expected_default


def test_per_source_grouping_is_applied_in_training(tiny, tmp_path, oracle):
    """`per_source`: each source is centred within its own rows of the group; `combined`: one baseline."""
    common = dict(mix_schedule="constant", mix_alpha_start=0.5, scale_rewards="none")
    batches = {}
    for grouping in ("per_source", "combined"):
        args = s2l_args(tmp_path / grouping, oracle, advantage_grouping=grouping, **common)
        trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
        torch.manual_seed(0)
        batches[grouping] = _mixed_batch(trainer, tiny)
    per_source, combined = batches["per_source"], batches["combined"]
    assert torch.equal(per_source["completion_ids"], combined["completion_ids"])
    is_explorer = per_source["s2l_is_explorer"].view(-1, 4)
    for adv in (per_source["advantages"].view(-1, 4), combined["advantages"].view(-1, 4)):
        assert torch.allclose(adv.sum(dim=1), torch.zeros(2), atol=1e-5)  # both centre the whole group
    # Only per_source centres each source separately; the oracle's explorer rows out-score random learner rows.
    explorer_sums = lambda adv: (adv.view(-1, 4) * is_explorer).sum(dim=1)  # noqa: E731
    assert torch.allclose(explorer_sums(per_source["advantages"]), torch.zeros(2), atol=1e-5)
    assert (explorer_sums(combined["advantages"]).abs() > 1e-3).all()


def _group_advantages(rewards: list[float], group: int = 4) -> torch.Tensor:
    """TRL's default advantages (one baseline per group, `scale_rewards="group"`): what its table shows unchanged."""
    r = torch.tensor(rewards).view(-1, group)
    return ((r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-4)).view(-1)


@pytest.mark.parametrize("case", ["per_source", "token_is"])
def test_completions_table_shows_source_and_trained_advantages(tiny, tmp_path, case):
    """TRL's completions table (`log_completions`: the frame rich prints and wandb / trackio receive, which TRL also
    writes to `completions/*.parquet`) gives each row's `source` and the advantage its tokens are trained with:
    the `per_source` baselines, or the row's mean of its importance-weighted per-token advantages."""
    # Explorer log-probs of -3 per token against the random learner's ~-6: token weights under the cap, all different.
    rollouts = write_oracle_rollouts(tiny, tmp_path / "lp.jsonl", logprob=-3.0)
    if case == "per_source":
        options = dict(advantage_grouping="per_source")
    else:
        options = dict(explorer_importance_sampling="token_truncate")
    args = s2l_args(tmp_path, rollouts, max_steps=3, mix_steps=3, log_completions=True, **options)
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    scored = []  # each round's batch as the loss receives it (TRL only shuffles and splits it)
    score = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: scored.append(score(inputs)) or scored[-1]
    trainer.train()

    folder = tmp_path / "out" / "completions"
    tables = [pd.read_parquet(folder / f"completions_{step:05d}.parquet") for step in (1, 2, 3)]
    # alpha = 1, 1/2, 0 -> G_w = 4, 2, 0 rows of each group of 4; 2 groups per step.
    assert [list(t["source"]).count("explorer") for t in tables] == [8, 4, 0]
    assert [list(t["source"]).count("learner") for t in tables] == [0, 4, 8]
    for table, batch in zip(tables, scored):
        assert list(table["source"]) == ["explorer" if e else "learner" for e in batch["s2l_is_explorer"].tolist()]
        adv, mask = batch["advantages"], batch["completion_mask"].float()
        trained = adv if adv.dim() == 1 else (adv * mask).sum(dim=1) / mask.sum(dim=1)
        assert table["advantage"].tolist() == pytest.approx(trained.tolist(), abs=1e-5)

    # The mixed step: the table no longer shows TRL's one-baseline advantages on explorer rows (learner rows keep them
    # under token IS) ...
    table, batch = tables[1], scored[1]
    is_explorer = batch["s2l_is_explorer"]
    logged_advantages = torch.tensor(table["advantage"].tolist())
    trl_advantages = _group_advantages(table["digit_reward"].tolist())
    assert (logged_advantages - trl_advantages)[is_explorer].abs().min() > 1e-3
    if case == "per_source":
        # ... but each source's own baseline: the oracle's identical explorer rows all get 0.
        assert logged_advantages[is_explorer].abs().max() < 1e-5
        assert logged_advantages[~is_explorer].abs().max() > 1e-3
    else:
        # ... but the mean over tokens whose weights differ, so the row mean is not any one token's value.
        adv, mask = batch["advantages"], batch["completion_mask"].bool()
        assert adv.dim() == 2
        assert all(len(set(adv[i][mask[i]].tolist())) > 1 for i in range(len(adv)) if is_explorer[i])
        assert logged_advantages[~is_explorer].tolist() == pytest.approx(
            trl_advantages[~is_explorer].tolist(), abs=1e-5
        )


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


class _RecordingOffline(OfflineExplorer):
    """The seeded offline explorer, recording the rows it hands out per request."""

    answers: list[list[list[int]]]

    def generate(self, prompt_ids, n, inputs=None):
        out = super().generate(prompt_ids, n, inputs=inputs)
        self.answers.append(out.completion_ids)
        return out


def _rounds(trainer) -> dict[int, tuple[float, float]]:
    """`round -> (alpha, G_w)` from the log history (alpha rounded: the logs carry float noise)."""
    return {
        int(h["s2l/round"]): (round(h["s2l/alpha"], 6), h["s2l/explorer_rows_per_group"])
        for h in trainer.state.log_history
        if "s2l/round" in h
    }


def test_resume_inside_a_generation_round_keeps_the_schedule_and_explorer_rows(tiny, tmp_path, oracle):
    """steps_per_generation = 2: rounds start at steps 1, 3, 5. A checkpoint at step 1 lies inside round 0; the
    resumed run regenerates round 0 with its own mix (not step 2's) and the same seeded offline explorer draws."""
    ds = tiny_dataset(tiny)
    rollouts = write_oracle_rollouts(tiny, tmp_path / "three.jsonl", per_prompt=6)
    rows = [json.loads(line) for line in rollouts.read_text().splitlines()]
    for i, r in enumerate(rows):  # distinguishable stored samples, so that the draws show
        r["response_ids"] = [r["response_ids"][0], 10 + i % 50] + r["response_ids"][1:]
    rollouts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def run(out_dir, callbacks=(), resume=None):
        explorer = _RecordingOffline(rollouts, seed=3)
        explorer.answers = []
        args = s2l_args(
            out_dir,
            max_steps=6,
            mix_steps=4,
            steps_per_generation=2,
            save_strategy="steps",
            save_steps=1,
        )
        trainer = S2LTrainer(
            str(tiny["learner"]),
            [accuracy_reward],
            args=args,
            train_dataset=ds,
            explorer=explorer,
            callbacks=list(callbacks),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, explorer

    full, full_explorer = run(tmp_path / "full")
    # G = 4, T_mix = 4: alpha(1) = 1, alpha(3) = 1/3, alpha(5) = 0 -> G_w 4, 2, 0 (the issue's [4, 2, 0] at 1/3/5).
    assert _rounds(full) == {0: (1.0, 4.0), 1: (round(1 / 3, 6), 2.0), 2: (0.0, 0.0)}
    run(tmp_path / "cut", callbacks=[_StopAt(1)])
    resumed, resumed_explorer = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "out" / "checkpoint-1"))
    assert _rounds(resumed) == _rounds(full)
    # Step 1 comes from the checkpoint's history; round 0 is regenerated at step 2, then rounds start at 3 and 5.
    assert [h["step"] for h in resumed.state.log_history if "s2l/round" in h] == [1, 2, 3, 5]
    # The regenerated round 0 and round 1 draw the very rows the uninterrupted run drew.
    assert resumed_explorer.answers == full_explorer.answers


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
    assert list(trainer.token_bridge.prompt_ids([1, 2, 3], row)) == list(expected_prompt)
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


def test_local_explorer_leaves_the_learner_random_stream_alone(tiny, tmp_path, oracle):
    """The in-process explorer samples with torch's generator; the learner's rows must be the ones it would draw
    with an explorer that uses no torch randomness at all (offline rows). lr = 0 keeps the learner fixed, so its
    second round depends on the random stream alone."""

    def learner_rows(name, **explorer_args):
        args = s2l_args(
            tmp_path / name, mix_schedule="constant", mix_alpha_start=0.5, learning_rate=0.0, **explorer_args
        )
        trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
        torch.manual_seed(0)
        batches = [_mixed_batch(trainer, tiny) for _ in range(2)]
        return [b["completion_ids"][~b["s2l_is_explorer"]] for b in batches]

    local = learner_rows("local", explorer_mode="local", explorer_model=str(tiny["explorer"]))
    offline = learner_rows("offline", explorer_mode="offline", explorer_rollouts=str(oracle))
    assert all(torch.equal(a, b) for a, b in zip(local, offline))


def test_empty_explorer_completion_is_an_empty_finished_answer(tiny, tmp_path):
    """A stored empty response is scored like a learner completion that stops at once (a lone EOS), not a crash."""
    path = write_oracle_rollouts(tiny, tmp_path / "empty.jsonl", logprob=-1.0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r.update(response="", response_ids=[], small_model_log_probs=[])
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = s2l_args(tmp_path, path, mix_schedule="constant", mix_alpha_start=0.5, mask_truncated_completions=True)
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    out = _mixed_batch(trainer, tiny)
    is_explorer = out["s2l_is_explorer"]
    mask = out["completion_mask"][is_explorer]
    assert mask.sum(dim=1).tolist() == [1] * int(is_explorer.sum())
    assert (out["completion_ids"][is_explorer][:, 0] == trainer.eos_token_ids[0]).all()


class _StepRecordingOffline(OfflineExplorer):
    """Seeded offline explorer that records, per request, the trainer's optimizer step and the rows it drew."""

    trainer = None

    def generate(self, prompt_ids, n, inputs=None):
        out = super().generate(prompt_ids, n, inputs=inputs)
        self.calls.append((self.trainer.state.global_step, out.completion_ids))
        return out


class _CountCallsAtStepEnd(TrainerCallback):
    def __init__(self, explorer):
        self.explorer, self.counts = explorer, []

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append((state.global_step, len(self.explorer.calls)))


def _prefetch_run(tiny, tmp_path, rollouts, prefetch: bool):
    explorer = _StepRecordingOffline(rollouts, seed=5)
    explorer.calls = []
    counter = _CountCallsAtStepEnd(explorer)
    args = s2l_args(tmp_path, max_steps=4, mix_steps=4, explorer_prefetch=prefetch)
    trainer = S2LTrainer(
        str(tiny["learner"]),
        [digit_reward],
        args=args,
        train_dataset=tiny_dataset(tiny),
        explorer=explorer,
        callbacks=[counter],
    )
    explorer.trainer = trainer
    trainer.train()
    return trainer, explorer, counter


def test_prefetch_draws_the_same_rows_one_round_ahead(tiny, tmp_path):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "r.jsonl", per_prompt=6)
    rows = [json.loads(line) for line in rollouts.read_text().splitlines()]
    for i, r in enumerate(rows):  # distinguishable stored samples, so that the draws show
        r["response_ids"] = [r["response_ids"][0], 10 + i % 50] + r["response_ids"][1:]
    rollouts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plain, plain_explorer, _ = _prefetch_run(tiny, tmp_path / "plain", rollouts, prefetch=False)
    ahead, ahead_explorer, counter = _prefetch_run(tiny, tmp_path / "ahead", rollouts, prefetch=True)
    # Rounds with explorer rows: steps 1-3 (G_w = 4, 3, 2); without prefetch each is requested during its own step
    # (optimizer step counter 0, 1, 2), with prefetch during the step before (0 for both round 0 and round 1).
    assert [step for step, _ in plain_explorer.calls] == [0, 1, 2]
    assert [step for step, _ in ahead_explorer.calls] == [0, 0, 1]
    # The same rows, in the same order, and the same training.
    assert [rows for _, rows in ahead_explorer.calls] == [rows for _, rows in plain_explorer.calls]
    assert logged(ahead, "loss") == pytest.approx(logged(plain, "loss"), rel=1e-6, abs=1e-7)
    # Never more than one round ahead: after step k, at most k + 1 rounds were requested; none past the last.
    assert all(calls <= step + 1 for step, calls in counter.counts), counter.counts
    assert len(ahead_explorer.calls) == 3
    assert max(logged(ahead, "s2l/explorer_wait_s")) >= 0.0


def test_prompts_without_rollouts_are_all_reported_before_training(tiny, tmp_path, oracle):
    """Every training prompt must have offline rollouts: the trainer checks at start-up and names all missing ones."""
    lines = oracle.read_text().splitlines()
    kept = [line for line in lines if '"add-0-3"' not in line and '"add-0-7"' not in line]
    assert len(kept) < len(lines)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(kept) + "\n")
    with pytest.raises(ExplorerError, match=r"2 of the .* training prompts.*add-0-3.*add-0-7"):
        S2LTrainer(
            str(tiny["learner"]),
            [accuracy_reward],
            args=s2l_args(tmp_path, partial),
            train_dataset=tiny_dataset(tiny),
        )


@pytest.mark.server
def test_a_server_serving_another_model_than_explorer_model_is_refused(
    tiny, tmp_path, explorer_server, foreign_explorer
):
    args = s2l_args(
        tmp_path,
        explorer_mode="server",
        explorer_server_base_url=explorer_server.base_url,
        explorer_model=str(foreign_explorer),
        explorer_server_timeout=30,
    )
    with pytest.raises(ExplorerError, match=r"serves .*explorer.*foreign"):
        S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))


def test_rollouts_sampled_on_other_prompt_ids_are_refused(tiny, tmp_path, oracle):
    """Stored prompt ids must be the ones this run builds, or explorer answers land after the wrong prompt."""
    rows = [json.loads(line) for line in oracle.read_text().splitlines()]
    for r in rows:
        r["prompt_ids"] = [5, 6, 7]  # e.g. sampled on the raw question instead of the chat-templated prompt
    stale = tmp_path / "stale.jsonl"
    stale.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ExplorerError, match=r"sampled on other prompt token ids.*add-0-0"):
        S2LTrainer(
            str(tiny["learner"]), [accuracy_reward], args=s2l_args(tmp_path, stale), train_dataset=tiny_dataset(tiny)
        )


class _PromptRecordingOffline(OfflineExplorer):
    """The seeded offline explorer, recording the prompts and rows of every call."""

    calls: list[tuple[list[list[int]], list[list[int]]]]

    def generate(self, prompt_ids, n, inputs=None):
        out = super().generate(prompt_ids, n, inputs=inputs)
        self.calls.append(([list(p) for p in prompt_ids], out.completion_ids))
        return out


def test_prefetch_after_a_resume_requests_the_rounds_own_prompts(tiny, tmp_path, caplog):
    """Shuffled data, two optimizer steps per round, so every round holds another batch. After a resume at a round
    boundary, the prefetch must peek the batch of the round it prefetches (its position follows the optimizer step,
    not TRL's micro-step counter, which is realigned only later): no dropped prefetch, the same explorer calls as the
    uninterrupted run from the resume on."""
    rollouts = write_oracle_rollouts(tiny, tmp_path / "r.jsonl", per_prompt=6)

    def run(out_dir, callbacks=(), resume=None):
        explorer = _PromptRecordingOffline(rollouts, seed=1)
        explorer.calls = []
        args = s2l_args(
            out_dir,
            max_steps=8,
            mix_steps=8,
            mix_schedule="constant",
            mix_alpha_start=0.5,
            steps_per_generation=2,
            save_strategy="steps",
            save_steps=2,
        )
        trainer = S2LTrainer(
            str(tiny["learner"]),
            [accuracy_reward],
            args=args,
            train_dataset=tiny_dataset(tiny),
            explorer=explorer,
            callbacks=list(callbacks),
        )
        assert trainer.prefetch_enabled
        trainer.train(resume_from_checkpoint=resume)
        return explorer.calls

    full = run(tmp_path / "full")
    assert len(full) == 4 and len({tuple(map(tuple, prompts)) for prompts, _ in full}) == 4  # 4 distinct batches
    run(tmp_path / "cut", callbacks=[_StopAt(2)])
    with caplog.at_level("WARNING"):
        resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "out" / "checkpoint-2"))
    assert "dropping them" not in caplog.text
    assert resumed == full[1:]


def test_close_explorer_releases_it_and_training_goes_on_learner_only(tiny, tmp_path, oracle):
    closed = []
    explorer = OfflineExplorer(oracle)
    explorer.close = lambda: closed.append(True)
    args = s2l_args(tmp_path, oracle, max_steps=1, mix_schedule="constant", mix_alpha_start=0.5)
    trainer = S2LTrainer(
        str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny), explorer=explorer
    )
    trainer.close_explorer()
    assert closed == [True] and trainer.explorer is None
    trainer.train()  # no explorer left: plain GRPO rows
    assert logged(trainer, "s2l/explorer_fraction") == []
