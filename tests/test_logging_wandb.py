"""`report_to: wandb` receives the S2L-PO metrics: a 2-step tiny run in wandb offline mode, read back from disk."""

from __future__ import annotations

import time

import pytest
from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts

from s2l_trl import S2LTrainer
from s2l_trl.rewards import accuracy_reward

wandb = pytest.importorskip("wandb")


def test_wandb_offline_run_contains_s2l_metrics(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "s2l-trl-tests")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rollouts = write_oracle_rollouts(tiny, tmp_path / "oracle.jsonl")
    args = s2l_args(tmp_path, rollouts, max_steps=2, mix_steps=2, report_to=["wandb"], run_name="s2l-wandb-test")
    trainer = S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    try:
        trainer.train()
    finally:
        wandb.finish()

    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    # The run's records (protobuf in the .wandb transaction log, which `wandb sync` uploads) carry every logged key
    # as plain bytes. wandb-core flushes the log asynchronously after finish(), so give it a few seconds.
    keys = (b"s2l/alpha", b"s2l/explorer_fraction", b"s2l/reward/explorer")
    deadline = time.monotonic() + 30
    while True:
        records = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
        if all(k in records for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
        assert key in records, key
