"""Two real CPU processes under `accelerate launch`: groups that straddle processes keep their exact composition."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
from trainer_utils import launch_two_cpu_processes

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "scripts" / "two_process_mix.py"


def test_group_straddling_two_processes_has_exact_composition(tmp_path):
    # `accelerate launch --cpu --num_processes 2` silently runs one process; --multi_gpu with use_cpu=True (gloo)
    # really starts two, which the test checks through the world size each rank reports.
    proc = launch_two_cpu_processes(str(SCRIPT), str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    expected_g_w = {1: 4, 2: 3, 3: 2, 4: 0}  # G = 4, T_mix = 4, linear
    for step in expected_g_w:
        groups = defaultdict(list)
        for rank in ranks:
            (record,) = [r for r in rank["records"] if r["step"] == step]
            assert record["g_w"] == expected_g_w[step]
            for row in record["rows"]:
                groups[row["group"]].append(row)
        assert len(groups) == 3
        spans = {g: len(rows) for g, rows in groups.items()}
        assert sorted(spans.values()) == [4, 4, 4]
        straddling = {row["group"] for row in ranks[0]["records"][step - 1]["rows"]} & {
            row["group"] for row in ranks[1]["records"][step - 1]["rows"]
        }
        assert straddling, "the test needs a group split across the two processes"
        for rows in groups.values():
            explorer = [r for r in rows if r["explorer"]]
            assert len(explorer) == expected_g_w[step]
            assert sorted(r["slot"] for r in explorer) == list(range(expected_g_w[step]))
            # Oracle explorer rows score 1, the random learner's rows 0: each row's completion came from the
            # source the plan assigned, on whichever process it lives.
            assert all(r["reward"] == 1.0 for r in explorer)
            assert all(r["reward"] == 0.0 for r in rows if not r["explorer"])
    # The learner generated only G_s rows per group (3 groups), summed over both processes.
    assert ranks[0]["learner_rows_generated"] == [0.0, 3.0, 6.0, 12.0]
    # One group per step split 2 + 2: process 0 holds only explorer rows, process 1 only learner rows; both
    # processes still enter the learner's generation, and every row comes from its source.
    for rank, only_explorer in ((ranks[0], True), (ranks[1], False)):
        assert len(rank["split_records"]) == 2
        for record in rank["split_records"]:
            assert record["g_w"] == 2
            assert [r["explorer"] for r in record["rows"]] == [only_explorer] * 2
            assert [r["reward"] for r in record["rows"]] == [1.0 if only_explorer else 0.0] * 2
    assert ranks[0]["split_rewards"] == [0.5, 0.5]
    # TRL's completions table (written by the main process) holds both processes' rows in TRL's order, each with its
    # source and the advantage the loss used.
    for step in expected_g_w:
        table = pd.read_parquet(tmp_path / "out" / "completions" / f"completions_{step:05d}.parquet")
        records = [[r for r in rank["records"] if r["step"] == step][0] for rank in ranks]
        rows = [row for record in records for row in record["rows"]]
        assert list(table["source"]) == ["explorer" if row["explorer"] else "learner" for row in rows]
        advantages = [a for record in records for a in record["advantages"]]
        assert table["advantage"].tolist() == pytest.approx(advantages, abs=1e-6)
        if 0 < expected_g_w[step] < 4:  # mixed groups: explorer rows (reward 1) and learner rows (0) differ
            assert len(set(table["advantage"].tolist())) > 1, "the order check needs advantages that differ"


SHARDED_SCRIPT = Path(__file__).parent / "scripts" / "s2l_sharded_two_process.py"


@pytest.mark.parametrize(
    ("engine", "type_", "sharded_key"),
    [("fsdp2", "DistributedType.FSDP", "dtensor_params"), ("zero3", "DistributedType.DEEPSPEED", "partitioned_params")],
)
def test_s2l_under_a_sharded_engine_shards_the_learner_across_two_cpu_processes(tmp_path, engine, type_, sharded_key):
    """accelerate's FSDP2 / DeepSpeed ZeRO-3 path, over gloo (the test-only shims tests/scripts/fsdp2_cpu_shim.py and
    deepspeed_cpu_shim.py turn the `fsdp` / `deepspeed` config into that engine where accelerate would fall back to
    plain multi-CPU DDP): the learner is sharded, generates its G_s rows per group with sharded parameters, and trains
    to the same weights on both processes."""
    if engine == "zero3":
        pytest.importorskip("deepspeed")
    proc = launch_two_cpu_processes(str(SHARDED_SCRIPT), str(tmp_path), engine)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert {r["distributed_type"] for r in ranks} == {type_} and all(
        r["is_fsdp_enabled"] == (engine == "fsdp2") for r in ranks
    )
    for rank in ranks:
        report = rank["sharding"]
        assert report[sharded_key] == report["params"], report
        assert report["local_numel"] * 2 == report["full_numel"], report
    # G = 4, 4 rows per process, alpha 0.5: 2 explorer and 2 learner rows per group; 2 groups per step.
    assert ranks[0]["explorer_rows"] == [2.0, 2.0] and ranks[0]["learner_rows"] == [4.0, 4.0]
    assert ranks[0]["after"] != ranks[0]["before"], "the learner did not train"
    assert ranks[0]["loss"] == ranks[1]["loss"]


@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_sharded_learner_rows_of_unequal_length_on_two_processes_do_not_hang(tmp_path, engine):
    """One process's learner rows stop after 2 tokens (as when they all hit EOS), the other's after 8. With the learner
    sharded every forward all-gathers parameters, so the early process must keep stepping (synced decoding) or the
    other waits forever. Transformers turns it on for ZeRO-3 and for FSDP2 (torch's `fully_shard` marks the modules
    `_is_fsdp_managed_module`); TRL's generation inherits it and S2L-PO must keep it."""
    if engine == "zero3":
        pytest.importorskip("deepspeed")
    proc = launch_two_cpu_processes(str(SHARDED_SCRIPT), str(tmp_path), engine, "uneven", timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Logged globally: the mean over both processes' learner rows, 2 and 8 tokens long (no EOS from the tiny model).
    assert all(2 < length < 8 for length in ranks[0]["learner_length"]), ranks[0]["learner_length"]
    # Synced: the early process ran as many forwards as the late one (8 per step, 2 steps), not 2 per step.
    assert ranks[0]["forwards_without_grad"] == ranks[1]["forwards_without_grad"] == 16
