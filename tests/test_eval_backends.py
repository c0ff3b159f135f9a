"""`s2l-eval` and `s2l-sample` on the vLLM backends: in-process engine (CPU) and the real explorer server.

The in-process test runs first (conftest orders `own_vllm_engine` tests first) and in its own process, so that it
never overlaps the session's explorer server: at most one vLLM engine is alive at a time on this small CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2l_trl.cli.eval import main as eval_main
from s2l_trl.devtools.vllm_server import CPU_ENV
from s2l_trl.explorers import ROLLOUT_FIELDS, OfflineExplorer, SamplingSettings, read_rollouts
from s2l_trl.sampling.rollouts import sample_rollouts

REPO = Path(__file__).resolve().parents[1]


def _math_data(directory: Path) -> Path:
    """A short math benchmark (the tiny server's context is 512 tokens), int and LaTeX answers."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        {"question": "What is 12 + 30?", "answer": 42},
        {"question": "What is 7 + 8?", "answer": "15"},
        {"question": "Half of one?", "answer": "\\frac{1}{2}"},
    ]
    (directory / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


@pytest.mark.slow
@pytest.mark.own_vllm_engine
def test_vllm_inprocess_backend_end_to_end(tiny, tmp_path):
    data = _math_data(tmp_path / "data")
    env = {**CPU_ENV, **os.environ}
    cmd = [
        sys.executable,
        str(REPO / "eval" / "run_evaluation.py"),
        "--model_path",
        str(tiny["explorer"]),
        "--backend",
        "vllm",
        "--dtype",
        "float32",
        "--enforce_eager",
        "true",
        "--max_model_len",
        "512",
        "--k",
        "4",
        "--benchmarks",
        "math500",
        "--data_dir",
        str(data),
        "--max_tokens",
        "8",
        "--mode",
        "think",
        "--timestamp",
        "vllm",
        "--output_root",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    raw = [json.loads(line) for line in (tmp_path / "output" / "explorer_vllm" / "math500_raw.jsonl").open()]
    assert [r["answer"] for r in raw] == [42, "15", "\\frac{1}{2}"] and all(len(r["outputs"]) == 4 for r in raw)
    assert len({o for r in raw for o in r["outputs"]}) > 1  # sampled, not one repeated string
    result = json.loads((tmp_path / "result" / "explorer_vllm" / "math500.json").read_text())
    assert result["mode"] == "think" and set(result["math_verify"]["pass@k"]) == {"1", "2", "4"}


@pytest.mark.server
def test_server_backend_end_to_end(tiny, explorer_server, shared_eval_data, tmp_path):
    data = _math_data(tmp_path / "data")
    (data / "commonsenseqa.jsonl").write_text(
        "".join((shared_eval_data / "commonsenseqa.jsonl").read_text().splitlines(keepends=True)[:3])
    )
    summary = eval_main(
        [
            "--model_path",
            str(tiny["explorer"]),
            "--backend",
            "server",
            "--server_base_url",
            explorer_server.base_url,
            "--k",
            "4",
            "--benchmarks",
            "math500",
            "commonsenseqa",
            "--data_dir",
            str(data),
            "--max_tokens",
            "8",
            "--timestamp",
            "srv",
            "--output_root",
            str(tmp_path),
        ]
    )
    out = tmp_path / "output" / "explorer_srv"
    for bench in ("math500", "commonsenseqa"):
        lines = [json.loads(line) for line in (out / f"{bench}.jsonl").open()]
        assert len(lines) == 3 and all(len(r["outputs"]) == len(r["predicted_answers"]) == 4 for r in lines)
        assert summary["benchmarks"][bench]["num_problems"] == 3


@pytest.mark.server
def test_sample_over_server_round_trips_through_offline_explorer(tiny, explorer_server, tmp_path):
    sampling = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=8, seed=0)
    path = sample_rollouts(
        tiny["dataset"],
        tmp_path / "rollouts",
        str(tiny["explorer"]),
        backend="server",
        server_base_url=explorer_server.base_url,
        num_generations=3,
        sampling=sampling,
        max_prompts=4,
    )
    rows = read_rollouts(path)
    assert len(rows) == 12 and all(tuple(r) == ROLLOUT_FIELDS for r in rows)
    # The server reports the sampled tokens' log-probs; they are kept for the trainer.
    assert all(len(r["small_model_log_probs"]) == len(r["response_ids"]) for r in rows)
    assert all(lp is None or lp <= 0 for r in rows for lp in r["small_model_log_probs"])
    dataset_rows = [json.loads(line) for line in Path(tiny["dataset"]).open()][:4]
    out = OfflineExplorer(path, seed=0).generate([r["prompt_ids"] for r in rows[::3]], n=3, inputs=dataset_rows)
    for i, example in enumerate(dataset_rows):
        stored = sorted(r["response_ids"] for r in rows if r["prompt_id"] == example["prompt_id"])
        assert sorted(out.completion_ids[3 * i : 3 * i + 3]) == stored
