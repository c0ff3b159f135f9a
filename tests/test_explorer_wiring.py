"""How `S2LTrainer` configures its explorer from `S2LConfig`: seeds per run and per process, and the log-probs mode
the server must have when explorer log-probs weigh the loss (against the fake vLLM server: no real engine)."""

from __future__ import annotations

import pytest
from trainer_utils import digit_reward, s2l_args, tiny_dataset
from transformers import AutoTokenizer

from s2l_trl import S2LTrainer
from s2l_trl.devtools.fake_server import FakeServer
from s2l_trl.explorers import ExplorerError, build_training_explorer
from s2l_trl.explorers.token_bridge import TokenBridge


def _explorer(tiny, tmp_path, server, process_index: int, seed: int = 0):
    args = s2l_args(tmp_path, explorer_mode="server", explorer_server_base_url=server.base_url, seed=seed)
    tok = AutoTokenizer.from_pretrained(tiny["learner"])
    bridge = TokenBridge(tok, None, [tok.eos_token_id], args.max_completion_length)
    return build_training_explorer(args, bridge, tok, process_index=process_index)


def test_server_draws_follow_the_run_seed_and_differ_between_processes(tiny, tmp_path):
    prompts = [[5, 6, 7], [8, 9]]
    with FakeServer(tiny["tokenizer"], mean_tokens=12, server_info=True) as server:
        first = _explorer(tiny, tmp_path, server, process_index=0).generate(prompts, 3).completion_ids
        again = _explorer(tiny, tmp_path, server, process_index=0).generate(prompts, 3).completion_ids
        other_process = _explorer(tiny, tmp_path, server, process_index=1).generate(prompts, 3).completion_ids
        other_seed = _explorer(tiny, tmp_path, server, process_index=0, seed=1).generate(prompts, 3).completion_ids
    assert first == again  # same seed, same process, same call: the same rows
    assert first != other_process and first != other_seed


@pytest.mark.parametrize("importance_sampling", ["token_truncate", "none"])
def test_raw_server_log_probs_are_refused_when_they_weigh_the_loss(tiny, tmp_path, importance_sampling, caplog):
    with FakeServer(tiny["tokenizer"], mean_tokens=12, server_info=True, logprobs_mode="raw_logprobs") as server:
        args = s2l_args(
            tmp_path,
            explorer_mode="server",
            explorer_server_base_url=server.base_url,
            explorer_importance_sampling=importance_sampling,
        )
        if importance_sampling == "none":
            with caplog.at_level("WARNING"):
                S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
            assert "raw_logprobs" in caplog.text
        else:
            with pytest.raises(ExplorerError, match=r"--logprobs-mode processed_logprobs"):
                S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
