"""S2LTrainer against a real `trl vllm-serve` explorer on 127.0.0.1 (CPU vLLM)."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_utils import digit_reward, logged, s2l_args, tiny_dataset, write_oracle_rollouts
from transformers import AutoModelForCausalLM, TrainerCallback

from s2l_trl import S2LTrainer
from s2l_trl.devtools.vllm_server import VLLMServerProcess
from s2l_trl.explorers import ExplorerError

pytestmark = pytest.mark.server


def test_training_steps_against_real_explorer_server(tiny, tmp_path, explorer_server):
    args = s2l_args(
        tmp_path,
        explorer_mode="server",
        explorer_server_base_url=explorer_server.base_url,
        explorer_model=str(tiny["explorer"]),
        max_steps=3,
        mix_steps=3,
        explorer_importance_sampling="token_truncate",
    )
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    assert trainer.explorer_tokenizer_matches
    trainer.train()
    assert logged(trainer, "s2l/alpha") == pytest.approx([1.0, 0.5, 0.0])
    assert logged(trainer, "s2l/explorer_fraction") == pytest.approx([1.0, 0.5, 0.0])
    assert logged(trainer, "s2l/learner_rows_generated") == [0.0, 4.0, 8.0]
    assert len(logged(trainer, "s2l/reward/explorer")) == 2
    # The server returns sampled-token log-probs: explorer IS weights and the learner-minus-explorer gap use them.
    assert len(logged(trainer, "s2l/logp_gap")) == 2
    assert len(logged(trainer, "s2l/explorer_is_weight/mean")) == 2
    latency = logged(trainer, "s2l/explorer_latency_s")
    assert latency[0] > 0 and latency[1] > 0
    # Explorer completions obey the learner's length cap.
    assert max(logged(trainer, "s2l/completion_length/explorer")) <= args.max_completion_length


class _KillServerAfterSave(TrainerCallback):
    def __init__(self, server):
        self.server = server

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.server.stop()


def test_explorer_server_killed_mid_run(tiny, tmp_path):
    """A dead explorer stops training with an error naming the URL; the checkpoint written before stays usable."""
    server = VLLMServerProcess(tiny["explorer"], log_path=tmp_path / "server.log", startup_timeout=400).start()
    try:
        args = s2l_args(
            tmp_path,
            explorer_mode="server",
            explorer_server_base_url=server.base_url,
            max_steps=4,
            mix_steps=4,
            save_strategy="steps",
            save_steps=1,
            explorer_max_retries=1,
            explorer_request_timeout=20,
            # Without prefetch the dead server is met by step 2's own round; with it, by step 3's (fetched at 2).
            explorer_prefetch=False,
        )
        trainer = S2LTrainer(
            str(tiny["learner"]),
            [digit_reward],
            args=args,
            train_dataset=tiny_dataset(tiny),
            callbacks=[_KillServerAfterSave(server)],
        )
        with pytest.raises(ExplorerError, match=server.base_url.replace(".", r"\.")):
            trainer.train()
    finally:
        server.stop()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not (tmp_path / "out" / "checkpoint-2").exists()


@pytest.mark.parametrize("alpha, g_s", [(0.5, 2), (1.0, 0)])
def test_learner_on_vllm_server_path_generates_only_its_rows(tiny, tmp_path, explorer_server, monkeypatch, alpha, g_s):
    """TRL's vLLM-server learner path, with the frozen tiny server standing in for the learner's own server.

    It runs through TRL's real `VLLMGeneration` class and attribute names, under TRL's default importance-sampling
    correction. Weight sync needs CUDA, so it is a no-op here; what is exercised is the generation of G_s rows per
    group through the server, the slicing back to rows, and TRL's learner importance sampling next to the explorer's
    NaN log-probs (ratio exactly 1 on explorer rows), also at alpha 1 where the learner generates nothing.
    """
    from trl.generation.vllm_client import VLLMClient
    from trl.generation.vllm_generation import VLLMGeneration

    rollouts = write_oracle_rollouts(tiny, tmp_path / "oracle.jsonl")
    args = s2l_args(tmp_path, rollouts, mix_schedule="constant", mix_alpha_start=alpha)
    assert args.vllm_importance_sampling_correction  # TRL's default
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    # TRL's real generation object in server mode; only the NCCL weight-transfer set-up (CUDA) is skipped.
    monkeypatch.setattr(VLLMClient, "init_communicator", lambda self, device=0: None)
    generation = VLLMGeneration(
        trainer.model,
        trainer.accelerator,
        trainer.processing_class,
        mode="server",
        server_base_url=explorer_server.base_url,
        server_timeout=60,
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
        max_completion_length=args.max_completion_length,
        logprobs=0,
    )
    monkeypatch.setattr(generation, "sync_weights", lambda: None)
    requests = []
    original = generation.vllm_client.generate

    def recording_generate(**kw):
        requests.append((len(kw["prompts"]), kw["n"]))
        return original(**kw)

    generation.vllm_client.generate = recording_generate
    trainer.use_vllm = True
    trainer._last_loaded_step = 0
    trainer.vllm_generation = generation
    rows = [dict(r) for r in tiny_dataset(tiny).select(range(2))]
    trainer.model.train()
    out = trainer._generate_and_score_completions([r for r in rows for _ in range(4)])
    assert requests == ([(2, g_s)] if g_s else [])  # 2 groups, G_s learner rows each: never G
    is_explorer = out["s2l_is_explorer"]
    assert is_explorer.tolist() == [True] * (4 - g_s) + [False] * g_s + [True] * (4 - g_s) + [False] * g_s
    ratio = out["importance_sampling_ratio"]  # TRL's default sequence_mask: one ratio per row
    assert torch.all(ratio[is_explorer] == 1.0)
    sampling = out["sampling_per_token_logps"]
    mask = out["completion_mask"].float()
    tokens = mask.bool()
    assert torch.isnan(sampling[is_explorer][tokens[is_explorer]]).all()
    assert not torch.isnan(sampling[~is_explorer]).any()
    # Learner rows keep TRL's correction: exp(sum(old - sampling)), zeroed outside [clip_min, clip_max].
    expected = torch.exp(((out["old_per_token_logps"] - sampling) * mask)[~is_explorer].sum(-1, keepdim=True))
    expected = expected.masked_fill(expected > args.vllm_importance_sampling_clip_max, 0.0)
    assert torch.allclose(ratio[~is_explorer], expected, rtol=1e-4)
