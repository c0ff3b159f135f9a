"""scripts/benchmark_single_gpu.py without training: its time budget, its JSON, the vLLM rows without vLLM, and the
table and targets it prints (the benchmark itself runs for minutes: see docs/benchmarks.md for its figures)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_single_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("benchmark_single_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_runs_past_the_budget_are_skipped_and_the_json_says_so(tmp_path):
    bench = _bench()
    out = tmp_path / "r.json"
    assert bench.main(["--output", str(out), "--work", str(tmp_path / "w"), "--budget_s", "1", "--runs", "grpo"]) == 0
    report = json.loads(out.read_text())
    assert report["device_kind"] == "cpu" and report["runs"] == {"grpo": {"status": "skipped (time budget)"}}
    # The models were built from configs: a learner bigger than the explorer, a 4k-word vocabulary on a CPU.
    assert report["parameters"]["learner"] > 2 * report["parameters"]["explorer"] > 0
    assert "| grpo | skipped (time budget) |" in report["table"]


def test_vllm_runs_say_not_installed_without_vllm(tmp_path, monkeypatch):
    bench = _bench()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    assert bench.run_one("s2l_a1_vllm", {}, tmp_path, 2, "cpu") == {"status": "not installed"}


def test_table_and_targets_use_the_mean_of_the_grpo_runs():
    bench = _bench()
    ok = {"status": "ok", "learner_generation_s": None, "explorer_latency_s": None, "explorer_wait_s": None}
    report = {
        "device_kind": "gpu",
        "runs": {
            "grpo": {**ok, "step_s": 4.0, "device_peak_gb": 12.3},
            "grpo_repeat": {**ok, "step_s": 6.0, "device_peak_gb": 12.3},
            "s2l_a0.5_vllm": {**ok, "step_s": 4.5, "overlapped": True, "device_peak_gb": 30.0},
            "s2l_a1_vllm": {**ok, "step_s": 3.5, "device_peak_gb": 30.0},
            "s2l_a0.5_local": {"status": "not installed"},
        },
    }
    assert bench.targets(report) == [
        "s2l_a0.5_vllm: step / GRPO = 0.90 (target <= 1.0: met)",
        "s2l_a1_vllm: step / GRPO = 0.70 (target <= 0.6: NOT met)",
    ]
    table = bench.table(report)
    assert "| s2l_a0.5_vllm | 4.500 | 0.90 | - | - | - | yes | 30.0 |" in table
    assert "| s2l_a0.5_local | not installed |" in table
