"""The tiny recipe under `accelerate launch` with 2 CPU processes (DDP over gloo) against the real explorer server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from trainer_utils import launch_two_cpu_processes

pytestmark = [pytest.mark.server, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny/s2l_po/config_cpu.yaml"
ACCELERATE_CONFIG = REPO / "recipes/accelerate_configs/ddp.yaml"
STEP_LINE = re.compile(r"\[s2l\] step\s+(\d+) \| alpha\s+([\d.]+) \| explorer fraction\s+([\d.]+) \|")


def test_tiny_recipe_two_cpu_processes(tiny, explorer_server, tmp_path):
    out = tmp_path / "out"
    # ddp.yaml is the GPU file (MULTI_GPU, bf16, 8 processes); the command line overrides its topology and precision.
    # `--cpu --num_processes 2` would silently run ONE process: `--multi_gpu` with the recipe's `use_cpu: true`
    # really starts two ranks and DDP runs over gloo.
    proc = launch_two_cpu_processes(
        "-m",
        "s2l_trl.cli.train",
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(tiny["learner"]),
        "--explorer_model",
        str(tiny["explorer"]),
        "--dataset_name",
        str(tiny["dataset"]),
        "--explorer_server_base_url",
        explorer_server.base_url,
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        # info on the main process: the Trainer's "Total train batch size (w. parallel, ...)" line.
        "--log_level",
        "info",
        config_file=str(ACCELERATE_CONFIG),
        cwd=REPO,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    # World size, from two independent sources. (1) The Trainer's own count: per-device batch 4 x 2 processes x
    # accumulation 1. With one process it would read 4.
    match = re.search(r"Total train batch size \(w\. parallel, distributed & accumulation\) = (\d+)", log)
    assert match, log[-6000:]
    assert int(match.group(1)) == 8
    # (2) What the run did: the generation batch holds 2 groups of G = 4 (one per process), so the learner generated
    # G_s = 0, 1, 2 rows in each of 2 groups at steps 1-3 (summed over processes). One process: 0, 1, 2.
    state = json.loads((out / "trainer_state.json").read_text())
    rows = [h["s2l/learner_rows_generated"] for h in state["log_history"] if "s2l/learner_rows_generated" in h]
    assert rows == [0.0, 2.0, 4.0]
    assert state["global_step"] == 3

    # MixProgressCallback prints one line per step, on the main process only, with the recipe's linear schedule
    # (T_mix = 4, alpha 1 -> 0: 1, 2/3, 1/3) and G_w / G = 4/4, 3/4, 2/4.
    steps = [(int(s), float(a), float(f)) for s, a, f in STEP_LINE.findall(log)]
    assert steps == [(1, 1.0, 1.0), (2, 0.667, 0.75), (3, 0.333, 0.5)], log[-6000:]

    # s2l-train saved the model and its S2L-PO card on the main process.
    assert (out / "model.safetensors").exists()
    assert "## S2L-PO provenance" in (out / "README.md").read_text()
