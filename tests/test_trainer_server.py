"""S2LTrainer against a real `trl vllm-serve` explorer on 127.0.0.1 (CPU vLLM)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, TrainerCallback

from s2l_trl import S2LTrainer
from s2l_trl.explorers import ExplorerError
from s2l_trl.vllm_server import VLLMServerProcess

from trainer_utils import digit_reward, logged, s2l_args, tiny_dataset

pytestmark = pytest.mark.server


def test_training_steps_against_real_explorer_server(tiny, tmp_path, explorer_server):
    args = s2l_args(tmp_path, explorer_mode="server", explorer_server_base_url=explorer_server.base_url,
                    explorer_model=str(tiny["explorer"]), max_steps=3, mix_steps=3)
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    assert trainer.explorer_tokenizer_matches
    trainer.train()
    assert logged(trainer, "s2l/alpha") == pytest.approx([1.0, 0.5, 0.0])
    assert logged(trainer, "s2l/explorer_fraction") == pytest.approx([1.0, 0.5, 0.0])
    assert logged(trainer, "s2l/learner_rows_generated") == [0.0, 4.0, 8.0]
    assert len(logged(trainer, "s2l/reward/explorer")) == 2
    # The server returns sampled-token log-probs, so the learner-minus-explorer gap is measured.
    assert len(logged(trainer, "s2l/logp_gap")) == 2
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
        args = s2l_args(tmp_path, explorer_mode="server", explorer_server_base_url=server.base_url, max_steps=4,
                        mix_steps=4, save_strategy="steps", save_steps=1, explorer_max_retries=1,
                        explorer_request_timeout=20)
        trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny),
                             callbacks=[_KillServerAfterSave(server)])
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
