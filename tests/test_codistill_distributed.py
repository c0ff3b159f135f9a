"""CoDistill-GRPO in two real CPU processes under `accelerate launch`: both models train, in sync on both ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_utils import launch_two_cpu_processes

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "scripts" / "codistill_two_process.py"


def test_codistill_two_processes_train_both_models_in_sync(tmp_path):
    # `accelerate launch --cpu --num_processes 2` silently runs one process: --multi_gpu with use_cpu=True (gloo).
    proc = launch_two_cpu_processes(str(SCRIPT), str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["small_wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    for model in ("large", "small"):
        assert ranks[0]["before"][model] == ranks[1]["before"][model]
        assert ranks[0]["after"][model] != ranks[0]["before"][model], f"{model} did not train"
        # Each rank saw different rows; identical weights afterwards mean the gradients were all-reduced.
        assert ranks[0]["after"][model] == pytest.approx(ranks[1]["after"][model], rel=1e-6, abs=1e-6), model
    assert ranks[0]["learner_rows"] == [0.0, 0.0]
    assert len(ranks[0]["kd_reward"]) == 2 and len(ranks[0]["small_loss"]) == 2
    assert ranks[0]["small_loss"] == ranks[1]["small_loss"]
