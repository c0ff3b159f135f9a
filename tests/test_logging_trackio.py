"""`report_to: trackio` receives the S2L-PO metrics: a 2-step tiny run logged to trackio's local SQLite store.

trackio logs locally (no Space, no network) when `trackio_space_id` is unset. Its store directory is read from
`TRACKIO_DIR` once, when trackio is first imported, and TRL's GRPO trainer module imports trackio as soon as it is
installed, i.e. before this test runs; so the run happens in a fresh interpreter with `TRACKIO_DIR` pointed at tmp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("trackio")

PROJECT = "s2l-trl-tests"
RUN = "s2l-trackio-test"

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    from s2l_trl import S2LTrainer
    from s2l_trl.rewards import accuracy_reward
    from s2l_trl.devtools.tiny import build_tiny_setup
    from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts

    tmp, project, run = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    tiny = build_tiny_setup(tmp / "tiny")
    rollouts = write_oracle_rollouts(tiny, tmp / "oracle.jsonl")
    # trackio_static_space_id=False: never create or sync a Space (this would need the Hub).
    args = s2l_args(tmp, rollouts, max_steps=2, mix_steps=2, report_to=["trackio"], project=project, run_name=run,
                    trackio_static_space_id=False, log_completions=True)
    trainer = S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    trainer.train()

    # Read back through trackio's own storage layer, as its dashboard does.
    from trackio.sqlite_storage import SQLiteStorage
    from trackio.utils import TRACKIO_DIR

    logs = SQLiteStorage.get_logs(project, run)
    print("S2L_TRACKIO " + json.dumps({"dir": str(TRACKIO_DIR), "db": str(SQLiteStorage.get_project_db_path(project)),
                                      "logs": logs}, default=str))
""")


def test_trackio_local_run_contains_s2l_metrics(tiny, tmp_path):
    store = tmp_path / "trackio"
    tests_dir = str(Path(__file__).parent)
    env = {
        **os.environ,
        "TRACKIO_DIR": str(store),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p),
    }
    # Reuse the session's tiny models: build_tiny_setup skips what already exists.
    (tmp_path / "tiny").symlink_to(Path(tiny["learner"]).parent, target_is_directory=True)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), PROJECT, RUN],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("S2L_TRACKIO ")]
    result = json.loads(line.removeprefix("S2L_TRACKIO "))

    assert Path(result["dir"]) == store
    assert Path(result["db"]).is_file() and Path(result["db"]).parent == store
    # The Trainer's trackio callback prefixes training metrics with "train/" (transformers' rewrite_logs).
    steps = [log for log in result["logs"] if "train/s2l/alpha" in log]
    assert [log["train/global_step"] for log in steps] == [1, 2]
    assert [log["train/s2l/alpha"] for log in steps] == pytest.approx([1.0, 0.0])
    assert [log["train/s2l/explorer_fraction"] for log in steps] == pytest.approx([1.0, 0.0])
    # Oracle explorer rows always score 1; the random learner's rows 0.
    assert steps[0]["train/s2l/reward/explorer"] == pytest.approx(1.0)
    assert steps[1]["train/s2l/reward/learner"] == pytest.approx(0.0)
    # TRL's completions table reaches trackio with S2L's `source` column: alpha = 1, then 0, over 2 groups of 4.
    tables = [log["completions"] for log in result["logs"] if "completions" in log]
    # (Transformers' end-of-training log makes TRL log the last step's table once more.)
    assert [t["_type"] for t in tables] == ["trackio.table"] * 3
    sources = [[row["source"] for row in t["_value"]] for t in tables]
    assert sources == [["explorer"] * 8, ["learner"] * 8, ["learner"] * 8], sources
    assert all("advantage" in row for t in tables for row in t["_value"])
