"""S2LTrainer with the learner on TRL's vLLM paths, under TRL's default importance-sampling correction: explorer
rows carry NaN sampling log-probs whatever G_s is (alpha 1, the paper's first step, included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_utils import write_oracle_rollouts

from s2l_trl.devtools.vllm_server import CPU_ENV

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "s2l_vllm_colocate.py"


def _server_running(request) -> bool:
    defs = request._fixturemanager.getfixturedefs("explorer_server", request.node) or []
    return any(d.cached_result is not None for d in defs)


@pytest.mark.slow
@pytest.mark.own_vllm_engine
def test_colocated_learner_engine_at_alpha_1_and_half_with_default_correction(tiny, tmp_path, request):
    pytest.importorskip("vllm")
    if _server_running(request):
        pytest.skip("the session's explorer server is already up; a second vLLM engine would overload this CPU")
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
