"""Every explorer backend and CoDistill under every engine the recipes use, on two CPU processes.

One `accelerate launch` per engine (DDP; FSDP2 with cpu-RAM-efficient loading; DeepSpeed ZeRO-2 and ZeRO-3, through
the test-only shims in tests/scripts/) runs tests/scripts/engine_matrix.py, which trains one step of each of
`server` (the fake vLLM server, started here), `offline`, `local` and CoDistill at alpha 1, 0.5 and 0, with unequal
row counts on the two processes and clipping on (plain SGD at learning rate 1, so the step is the clipped gradient).
Per engine it asserts:

* no hang: the launch ends in time (gloo's timeout is cut to 3 minutes there, so a collective mismatch fails fast);
* every model's weights at the first step, on every process, are the checkpoint's (the explorer loaded whole, the
  zero-filled / partitioned models of the sharded engines filled in);
* the explorer's rows are those a one-process replay of its calls draws (the offline draws of a group split across
  the processes are those of one process asking for every group), and every row is the DDP run's;
* each model's gradient norm is the DDP run's, and each model moved by exactly its own clipped norm (CoDistill: the
  large model by `max_grad_norm`, the small one by `small_max_grad_norm`); CoDistill's exact KL (`codistill/kd_kl`,
  the KD loss term, dominating the small model's gradient; at 0.5 one process has no small rows) is the DDP run's;
* under ZeRO-3, CoDistill's large model generates with only its own parameters gathered.

The in-process vLLM explorer is not in the matrix: see docs/engines.md ("what it cannot cover here").

`S2L_MATRIX_CONFIGS="codistill:0.5 local:1.0"` runs only those configurations (to check one case quickly).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_utils import launch_two_cpu_processes

pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).parent / "scripts"
SCRIPT = SCRIPTS / "engine_matrix.py"
ENGINES = ("ddp", "fsdp2", "zero2", "zero3")
TYPES = {
    "ddp": "DistributedType.MULTI_CPU",
    "fsdp2": "DistributedType.FSDP",
    "zero2": "DistributedType.DEEPSPEED",
    "zero3": "DistributedType.DEEPSPEED",
}


def _matrix():
    sys.path.insert(0, str(SCRIPTS))
    import engine_matrix

    return engine_matrix


def _configs() -> list[str]:
    return os.environ.get("S2L_MATRIX_CONFIGS", "").split()


@pytest.fixture(scope="module")
def server(tiny):
    from s2l_trl.devtools.fake_server import FakeServer

    with FakeServer(str(tiny["tokenizer"]), mean_tokens=3, server_info=True) as fake:
        yield fake


@pytest.fixture(scope="module")
def runs(tiny, server, tmp_path_factory):
    """`runs(engine)`: both ranks' results of that engine's launch (launched once)."""
    done: dict[str, tuple[list[dict], Path, float]] = {}

    def run(engine: str):
        if engine not in done:
            work = tmp_path_factory.mktemp(f"matrix_{engine}")
            start = time.perf_counter()
            proc = launch_two_cpu_processes(
                str(SCRIPT),
                str(work),
                engine,
                str(Path(tiny["learner"]).parent),
                server.base_url,
                *_configs(),
                timeout=540,
            )
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
            ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]
            done[engine] = (ranks, work, time.perf_counter() - start)
        return done[engine]

    return run


@pytest.fixture(scope="module")
def checkpoints(tiny) -> dict[str, dict[str, list[float]]]:
    """The checkpoints' weights, per parameter (sum, sum of squares), loaded in this one plain process."""
    from transformers import AutoModelForCausalLM

    m = _matrix()
    out = {}
    for role, path in (("learner", tiny["learner"]), ("explorer", tiny["explorer"])):
        out[role] = m.fingerprint(dict(AutoModelForCausalLM.from_pretrained(path).named_parameters()))
    out["large"], out["small"] = out["learner"], out["explorer"]
    return out


def _replay_explorer(backend: str, rank: int, work: Path, tiny, server_url: str):
    """The explorer process `rank` built, rebuilt here (one process) from the same settings."""
    from transformers import AutoTokenizer

    from s2l_trl import S2LConfig
    from s2l_trl.devtools.tiny import tiny_training_kwargs
    from s2l_trl.explorers import build_training_explorer
    from s2l_trl.explorers.token_bridge import TokenBridge

    m = _matrix()
    settings = m.explorer_settings(backend, work, tiny, server_url)
    args = S2LConfig(
        **tiny_training_kwargs(output_dir=str(work / "replay"), max_completion_length=m.EXPLORER_TOKENS, **settings)
    )
    tok = AutoTokenizer.from_pretrained(tiny["learner"])
    bridge = TokenBridge(
        tok,
        args.explorer_model,
        [tok.eos_token_id],
        args.max_completion_length,
        retokenizes_itself=backend == "offline",
    )
    return build_training_explorer(args, bridge, tok, process_index=rank)


def _rows_by_group(call: dict) -> dict[int, list[list[int]]]:
    n = call["n"]
    return {fields["s2l_group"]: call["ids"][k * n : (k + 1) * n] for k, fields in enumerate(call["inputs"])}


@pytest.mark.parametrize("engine", ENGINES)
def test_every_backend_and_codistill_under_the_engine(engine, runs, tiny, server, checkpoints):
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed")
    m = _matrix()
    ranks, work, seconds = runs(engine)
    ddp, _, _ = runs("ddp")
    print(f"{engine}: launch {seconds:.1f} s, trainers {ranks[0]['seconds']:.1f} s")
    assert [r["world_size"] for r in ranks] == [2, 2]
    configs = _configs() or [f"{b}:{a}" for b in m.BACKENDS for a in m.ALPHAS]
    assert list(ranks[0]["configs"]) == configs
    for config in configs:
        backend, alpha = config.split(":")
        alpha = float(alpha)
        results = [r["configs"][config] for r in ranks]
        reference = [r["configs"][config] for r in ddp]
        assert {r["distributed_type"] for r in results} == {TYPES[engine]}, config
        assert [r["steps"] for r in results] == [1, 1], config

        # Every model whole and equal to its checkpoint on every process, at the first step.
        for result in results:
            for role, weights in result["weights"].items():
                expected = checkpoints[role]
                assert weights.keys() == expected.keys(), (config, role)
                for name, (total, squares) in weights.items():
                    assert total == pytest.approx(expected[name][0], rel=1e-9, abs=1e-9), (config, role, name)
                    assert squares == pytest.approx(expected[name][1], rel=1e-9), (config, role, name)
        if backend == "local":
            assert all("explorer" in r["weights"] for r in results)

        # Unequal rows: the layouts the matrix means to exercise.
        flags = [r["rounds"][0]["is_explorer"] for r in results]
        if alpha == 0.5 and backend == "codistill":
            assert flags == [[True, True], [False, False]], config  # one process only small, the other only large
        elif alpha == 0.5:
            assert flags == [[True, True, False, False, True, True], [False, False, True, True, False, False]], config

        # The same rows as the DDP run, on each process (learner and explorer rows alike).
        assert [r["rounds"] for r in results] == [r["rounds"] for r in reference], config

        # Explorer rows: what its calls draw when replayed in one process.
        if backend != "codistill" and alpha > 0:
            for rank, result in enumerate(results):
                assert len(result["calls"]) == 1, config
                explorer = _replay_explorer(backend, rank, work, tiny, server.base_url)
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # as on the ranks (OMP_NUM_THREADS=1)
                try:
                    for call in result["calls"]:
                        explorer.load_state_dict(call["state"])
                        out = explorer.generate(call["prompt_ids"], call["n"], inputs=call["inputs"])
                        assert out.completion_ids == call["ids"], (config, rank)
                finally:
                    torch.set_num_threads(threads)
                    close = getattr(explorer, "close", None)
                    if callable(close):
                        close()
        if backend == "offline" and alpha > 0:
            # One process asking for every group of the round draws, per group, what the two processes drew.
            calls = [r["calls"][0] for r in results]
            groups = {}
            for call in calls:
                for k, fields in enumerate(call["inputs"]):
                    groups.setdefault(fields["s2l_group"], (call["prompt_ids"][k], fields))
            explorer = _replay_explorer(backend, 0, work, tiny, server.base_url)
            explorer.load_state_dict(calls[0]["state"])
            order = sorted(groups)
            whole = explorer.generate(
                [groups[g][0] for g in order], calls[0]["n"], inputs=[groups[g][1] for g in order]
            )
            one_process = _rows_by_group(
                {"n": calls[0]["n"], "ids": whole.completion_ids, "inputs": [groups[g][1] for g in order]}
            )
            for call in calls:
                for group, rows in _rows_by_group(call).items():
                    assert rows == one_process[group], (config, group)
            split = set(_rows_by_group(calls[0])) & set(_rows_by_group(calls[1]))
            # At alpha 1 group 1's explorer slots are split 2 + 2 (at 0.5 its two explorer slots are on process 0).
            assert bool(split) == (alpha == 1.0), (config, split)
            for group in split:  # stored rollouts drawn without replacement: no repeats within the group
                assert len({tuple(r) for r in one_process[group]}) == len(one_process[group]), (config, group)

        # Gradient norms: each model's, as under DDP; each model moved by exactly its own clipped norm.
        for key in ("grad_norm", "large_norm", "small_norm"):
            assert results[0][key] == pytest.approx(reference[0][key], rel=1e-4, abs=1e-6), (config, key)
        clips = {"learner": m.MAX_GRAD_NORM, "large": m.MAX_GRAD_NORM, "small": m.SMALL_MAX_GRAD_NORM}
        norms = {"learner": results[0]["grad_norm"], "large": results[0]["large_norm"]}
        norms["small"] = results[0]["small_norm"]
        for role, step in results[0]["moved"].items():
            (norm,) = norms[role]
            expected = min(norm, clips[role])
            if role == "small" and alpha == 0:
                expected = 0.0  # no small rows: the small model is left as it was
            else:
                assert norm > clips[role], (config, role, norm)  # the clip is on
            assert step == pytest.approx(expected, rel=1e-3, abs=1e-7), (config, role)
        if backend == "codistill":
            assert results[0]["small_norm"] and results[0]["large_norm"] == results[0]["grad_norm"], config
            assert bool(results[0]["kd_kl"]) == (alpha > 0), config
            assert results[0]["kd_kl"] == pytest.approx(reference[0]["kd_kl"], rel=1e-5), config

        # ZeRO-3: the large model generates with only its own parameters gathered, not both models'.
        gathered = results[0]["gathered_while_large_generates"]
        if engine == "zero3" and backend == "codistill" and alpha < 1:
            assert gathered and set(gathered) == {results[0]["large_numel"]}, config
            assert results[0]["large_numel"] < results[0]["module_numel"]
