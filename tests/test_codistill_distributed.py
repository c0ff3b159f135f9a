"""CoDistill-GRPO in two real CPU processes under `accelerate launch`: both models train, in sync on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2l_trl.devtools.vllm_server import free_port

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "scripts" / "codistill_two_process.py"


def test_codistill_two_processes_train_both_models_in_sync(tmp_path):
    # `accelerate launch --cpu --num_processes 2` silently runs one process: --multi_gpu with use_cpu=True (gloo).
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
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
