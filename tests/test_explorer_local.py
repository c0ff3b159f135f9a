"""LocalExplorer: samples the processed distribution from a generator of its own (never torch's global one), so that it
can run in a thread beside the learner; seeded per call, resumable, cancellable; and the trainer runs it beside the
learner's generation."""

from __future__ import annotations

import threading

import pytest
import torch
from trainer_utils import digit_reward, s2l_args, tiny_dataset

from s2l_trl import S2LTrainer
from s2l_trl.explorers import LocalExplorer, SamplingSettings
from s2l_trl.explorers.local import ExplorerCancelled, warp_logits

PROMPT = [1, 5, 6, 7]


def _explorer(tiny, **sampling) -> LocalExplorer:
    settings = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 6, "seed": 3, **sampling}
    return LocalExplorer(str(tiny["explorer"]), sampling=SamplingSettings(**settings), batch_size=64)


def test_samples_the_processed_distribution_and_records_its_log_probs(tiny):
    """20,000 one-token draws of one prompt: frequencies match softmax(warp(logits)) (temperature 0.7, top-k 40,
    top-p 0.9) within sampling error, no token outside top-k / top-p is drawn, and each recorded log-prob is the
    processed distribution's."""
    explorer = _explorer(tiny, max_tokens=1, top_k=40, top_p=0.9, seed=1)
    explorer.batch_size = 20_000
    out = explorer.generate([PROMPT], 20_000)
    tokens = torch.tensor([c[0] for c in out.completion_ids])
    with torch.no_grad():
        logits = explorer.model(torch.tensor([PROMPT])).logits[0, -1].float()
    probs = warp_logits(logits[None], 0.7, 40, 0.9).softmax(-1)[0]
    freq = torch.bincount(tokens, minlength=probs.numel()).double() / tokens.numel()
    assert probs.max() < 0.2, "the test needs a spread-out distribution"
    assert probs[freq > 0].min() > 0, "a token outside top-k / top-p was sampled"
    # 5 standard errors of a binomial frequency, for every token.
    tolerance = 5 * (probs.double() * (1 - probs.double()) / tokens.numel()).sqrt() + 1e-4
    assert ((freq - probs.double()).abs() <= tolerance).all()
    recorded = torch.tensor([lp[0] for lp in out.logprobs])
    assert torch.allclose(recorded, probs.log()[tokens], atol=1e-5)


def test_temperature_zero_is_greedy_decoding(tiny):
    explorer = _explorer(tiny, temperature=0.0)
    out = explorer.generate([PROMPT], 2)
    with torch.no_grad():
        greedy = explorer.model.generate(torch.tensor([PROMPT]), max_new_tokens=6, do_sample=False)[0, len(PROMPT) :]
    expected = greedy.tolist()
    eos = next((i + 1 for i, t in enumerate(expected) if t in explorer.eos_token_ids), len(expected))
    assert out.completion_ids == [expected[:eos]] * 2


def test_draws_are_seeded_per_call_resumable_and_leave_the_global_generator_alone(tiny):
    prompts = [PROMPT, [1, 9, 10]]
    a, b = _explorer(tiny), _explorer(tiny)
    before = torch.get_rng_state()
    first, second = a.generate(prompts, 3), a.generate(prompts, 3)
    assert torch.equal(torch.get_rng_state(), before), "the explorer drew from torch's global generator"
    assert b.generate(prompts, 3).completion_ids == first.completion_ids  # same seed, same first call
    assert second.completion_ids != first.completion_ids  # each call has its own seed
    assert a.state_dict() == {"seed": 3, "calls": 2}
    b.load_state_dict({"seed": 3, "calls": 1})  # a resumed run restores the counter
    assert b.generate(prompts, 3).completion_ids == second.completion_ids
    other_stream = LocalExplorer(
        str(tiny["explorer"]), sampling=SamplingSettings(temperature=0.7, max_tokens=6, seed=3), seed_stream=1
    )
    assert other_stream.generate(prompts, 3).completion_ids != first.completion_ids  # another training process
    # No seed: one is drawn from the global generator at construction, so torch.manual_seed makes runs repeat.
    torch.manual_seed(11)
    unseeded = _explorer(tiny, seed=None)
    torch.manual_seed(11)
    assert _explorer(tiny, seed=None).seed == unseeded.seed


def test_compiled_decoding_pads_to_fixed_shapes_and_decodes_the_same(tiny):
    """`compile=True` pads batches to `batch_size` rows and prompts to a width bucket (64), with a static KV cache
    (compiled on accelerators only): greedy rows are those of the plain path, padding rows are dropped."""
    plain = _explorer(tiny, temperature=0.0)
    static = LocalExplorer(str(tiny["explorer"]), sampling=plain.sampling, batch_size=4, compile=True)
    shapes = []
    generate = static.model.generate

    def recording_generate(*a, **kw):
        shapes.append((tuple(kw["input_ids"].shape), kw["generation_config"].cache_implementation))
        return generate(*a, **kw)

    static.model.generate = recording_generate
    prompts = [PROMPT, [1, 9, 10, 11, 12], [1, 2]]  # 3 rows -> one batch of 4
    assert static.generate(prompts, 1).completion_ids == plain.generate(prompts, 1).completion_ids
    assert shapes == [((4, 64), "static")]


def test_cancel_stops_a_call_in_flight(tiny):
    explorer = _explorer(tiny, max_tokens=200)
    started = threading.Event()
    forward = explorer.model.forward

    def slow_forward(*a, **kw):
        started.set()
        return forward(*a, **kw)

    explorer.model.forward = slow_forward
    errors = []

    def run():
        try:
            explorer.generate([PROMPT] * 64, 4)
        except ExplorerCancelled as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    explorer.cancel()
    worker.join(30)
    assert not worker.is_alive() and len(errors) == 1
    explorer.model.forward = forward
    assert len(explorer.generate([PROMPT], 1).completion_ids) == 1  # the next call is not cancelled


def test_local_explorer_decodes_while_the_learner_generates(tiny, tmp_path):
    """The explorer's decoding and the learner's generation must be under way at the same time: the explorer's
    first forward pass waits for the learner's generation to start, and the learner's waits for the explorer's
    decoding to start. Run one after the other (in the foreground, before or after the learner), one side times out.
    """
    args = s2l_args(
        tmp_path,
        explorer_mode="local",
        explorer_model=str(tiny["explorer"]),
        mix_schedule="constant",
        mix_alpha_start=0.5,
        max_steps=1,
    )
    trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    explorer_decoding, learner_generating = threading.Event(), threading.Event()
    explorer_threads = []
    explorer_model = trainer.explorer.model
    explorer_forward = explorer_model.forward

    def handshake_forward(*a, **kw):
        explorer_threads.append(threading.current_thread().name)
        explorer_decoding.set()
        if not learner_generating.wait(20):
            raise RuntimeError("the learner did not generate while the explorer decoded")
        return explorer_forward(*a, **kw)

    explorer_model.forward = handshake_forward
    learner_generate = trainer.model.generate

    def handshake_generate(*a, **kw):
        learner_generating.set()
        if not explorer_decoding.wait(20):
            raise RuntimeError("the explorer was not decoding while the learner generated")
        return learner_generate(*a, **kw)

    trainer.model.generate = handshake_generate
    trainer.train()
    assert set(explorer_threads) == {"s2l-explorer_0"}
    assert trainer.state.log_history[0]["s2l/explorer_fraction"] == pytest.approx(0.5)


def test_loaded_whole_and_never_collective_under_sharded_loading(tiny, tmp_path):
    """Under a training config that names DeepSpeed ZeRO-3 (zero.Init partitions every model Transformers builds) or
    FSDP with cpu-RAM-efficient loading (zeros on every process but local rank 0, for FSDP to broadcast), the
    explorer, which no engine wraps, is still loaded whole with the checkpoint's weights; the switches are left on for
    the models the engine does wrap; its `generate` is never collective; a partitioned model object is refused.
    One process (gloo, world size 1) in a subprocess of its own, so that DeepSpeed's global state stays there."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("deepspeed")
    script = Path(__file__).parent / "scripts" / "explorer_whole_loading.py"
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOCAL_RANK": "0"}
    proc = subprocess.run(
        [sys.executable, str(script), str(Path(tiny["explorer"]).parent), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    # The conditions are real: a plain load under them is zero-filled / partitioned.
    assert result["fsdp_plain_load_zero"] and result["zero3_plain_load_partitioned"]
    assert result["fsdp_whole"] and result["zero3_whole"]
    assert result["fsdp_env_kept"] and result["zero3_config_kept"]
    assert result["synced_gpus"] == [False]
    assert "sharded across processes by DeepSpeed ZeRO-3" in result["partitioned_object"]
    assert "Pass the model's path" in result["partitioned_object"]
