"""The scale lab (scripts/benchmark_scale.py) runs end to end at a tiny size, so it cannot rot between releases."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_scale.py"


def test_scale_lab_measures_every_stage_of_both_backends(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark_scale", SCRIPT)
    lab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lab)
    common = ["--mean_tokens", "64", "--workdir", str(tmp_path)]
    results = lab.run(["--fractions", "0.0078125", "--backends", "server", *common])
    results += lab.run(["--fractions", "0.0078125", "0.015625", "--backends", "offline", *common])
    assert [(r["backend"], r["rows"]) for r in results] == [("server", 16), ("offline", 16), ("offline", 32)]
    for r in results:
        assert r["explorer_tokens"] == r["tokens"] > 0  # alpha = 1: every row came from the explorer
        assert all(r["times"][stage] > 0 for stage in ("explorer", "to_learner", "merge", "finish")), r["times"]
    out = capsys.readouterr().out
    assert out.count("growth exponent") == 1 and out.count("At paper scale") == 2
