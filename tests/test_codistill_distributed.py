"""CoDistill-GRPO in two real CPU processes under `accelerate launch`: DDP, and FSDP2 and DeepSpeed ZeRO-3 through
accelerate's own paths.

Both models are one module trained by one optimizer, so each engine shards / all-reduces both. Every process samples
its own rows with its own small-model explorer. The sharded runs use test-only CPU shims (tests/scripts/
fsdp2_cpu_shim.py, deepspeed_cpu_shim.py): accelerate maps `use_cpu` to plain multi-CPU DDP and drops an FSDP or
DeepSpeed plugin, while torch's FSDP2 and DeepSpeed's ZeRO-3 (its CPU accelerator) themselves run over gloo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_utils import launch_two_cpu_processes

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "scripts" / "codistill_two_process.py"


def _run(tmp_path: Path, engine: str) -> list[dict]:
    work = tmp_path / engine
    proc = launch_two_cpu_processes(str(SCRIPT), str(work), engine)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("codistill_ddp"), "ddp")


def test_ddp_both_processes_sample_their_own_rows_and_both_models_train_in_sync(ddp):
    assert [r["world_size"] for r in ddp] == [2, 2]
    assert [r["wrapped"] for r in ddp] == ["DistributedDataParallel"] * 2
    # G = 4, 6 rows per process: each process samples the G_w = 4 rows of each of its 2 groups (the group split 2 + 2
    # is asked for by both, each keeping its own slots), in each of the 2 rounds; nobody samples for the other.
    assert [r["sampled_rows"] for r in ddp] == [[8, 8], [8, 8]]
    assert ddp[0]["learner_rows"] == [0.0, 0.0]
    for model in ("large", "small"):
        assert ddp[0]["before"][model] == ddp[1]["before"][model]
        assert ddp[0]["after"][model] != ddp[0]["before"][model], f"{model} did not train"
        # Each rank saw different rows; identical weights afterwards mean the gradients were all-reduced.
        assert ddp[0]["after"][model] == pytest.approx(ddp[1]["after"][model], rel=1e-6, abs=1e-6), model
    assert [r["small_steps"] for r in ddp] == [2, 2]
    assert len(ddp[0]["kd_reward"]) == 2 and ddp[0]["small_loss"] == ddp[1]["small_loss"]


@pytest.mark.parametrize(
    ("engine", "type_", "wrapped", "sharded_key"),
    [
        ("fsdp2", "DistributedType.FSDP", "FSDP", "dtensor_params"),
        ("zero3", "DistributedType.DEEPSPEED", "DeepSpeedEngine", "partitioned_params"),
    ],
)
def test_sharded_engines_shard_both_models_and_train_them_as_ddp_does(
    tmp_path, ddp, engine, type_, wrapped, sharded_key
):
    if engine == "zero3":
        pytest.importorskip("deepspeed")
    ranks = _run(tmp_path, engine)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert {r["distributed_type"] for r in ranks} == {type_}
    assert ranks[0]["wrapped"].startswith(wrapped)
    for model in ("large", "small"):
        reports = [r["sharding"][model] for r in ranks]
        for report in reports:
            # Every parameter is sharded and each process holds half of the model's elements.
            assert report[sharded_key] == report["params"]
            assert report["local_numel"] * 2 == report["full_numel"], report
        assert sum(rep["local_numel"] for rep in reports) == reports[0]["full_numel"]
    assert [r["sampled_rows"] for r in ranks] == [[8, 8], [8, 8]]
    # Same seeds, same rows, same maths: the sharded run ends where the DDP run ends (full weights, gathered on the
    # main process).
    for model in ("large", "small"):
        assert ranks[0]["after"][model] != ranks[0]["before"][model], f"{model} did not train"
        assert ranks[0]["after"][model] == pytest.approx(ddp[0]["after"][model], rel=1e-5, abs=1e-5), model
    out = tmp_path / engine / "out"
    from transformers import AutoModelForCausalLM

    for sub in ("large_model", "small_model"):
        model = AutoModelForCausalLM.from_pretrained(out / sub)
        assert sum(p.numel() for p in model.parameters()) == ranks[0]["sharding"][sub.split("_")[0]]["full_numel"]
