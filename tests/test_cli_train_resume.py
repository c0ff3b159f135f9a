"""Crash-safe resume: a checkpoint torn by a kill during its save is skipped, and rerunning the same `s2l-train`
command resumes from the newest complete checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from s2l_trl.checkpoints import checkpoint_problem, last_complete_checkpoint
from s2l_trl.cli.train import cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def _command(tiny, out: Path) -> list[str]:
    return [
        "--config",
        str(RECIPES / "grpo" / "config_cpu.yaml"),
        "--model_name_or_path",
        str(tiny["learner"]),
        "--dataset_name",
        str(tiny["dataset"]),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--disable_tqdm",
        "true",
    ]


def _tear(checkpoint: Path) -> None:
    """What SIGKILL during `Trainer._save_checkpoint` leaves: weights, a 0-byte optimizer.pt, no trainer_state.json."""
    (checkpoint / "trainer_state.json").unlink()
    (checkpoint / "optimizer.pt").write_bytes(b"")


def test_rerun_resumes_from_the_newest_complete_checkpoint(tiny, tmp_path, monkeypatch, caplog):
    from trl import GRPOTrainer

    out = tmp_path / "run"
    cli(_command(tiny, out))
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2", "checkpoint-3"}
    _tear(out / "checkpoint-3")

    # The helper on its own: torn (no state) and corrupt (state cut mid-write) checkpoints are skipped.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.copytree(copy / "checkpoint-2", copy / "checkpoint-4")
    state = copy / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    (copy / "checkpoint-5").mkdir()  # created, nothing written yet
    with caplog.at_level(logging.WARNING, logger="s2l_trl.checkpoints"):
        assert last_complete_checkpoint(copy) == str(copy / "checkpoint-2")
    warned = caplog.text
    for name in ("checkpoint-5", "checkpoint-4", "checkpoint-3"):
        assert f"{copy / name}" in warned
    assert "does not load (JSONDecodeError" in warned and "no trainer_state.json" in warned
    assert checkpoint_problem(copy / "checkpoint-1") is None
    assert last_complete_checkpoint(tmp_path / "nowhere") is None

    # The same command again: it resumes from checkpoint-2 (not the torn checkpoint-3) and finishes step 3.
    resumed_from = []
    original = GRPOTrainer.train

    def spy(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return original(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "train", spy)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2l_trl.checkpoints"):
        cli(_command(tiny, out))
    assert resumed_from == [str(out / "checkpoint-2")]
    assert f"Skipping incomplete checkpoint {out / 'checkpoint-3'}" in caplog.text
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert checkpoint_problem(out / "checkpoint-3") is None  # saved again, completely this time


@pytest.mark.parametrize("content", [None, "", "{", '{"global_step": "x", "no_such_field": 1}'])
def test_checkpoint_problem_names_what_is_wrong(tmp_path, content):
    ckpt = tmp_path / "checkpoint-7"
    ckpt.mkdir()
    if content is not None:
        (ckpt / "trainer_state.json").write_text(content)
    problem = checkpoint_problem(ckpt)
    assert problem and ("no trainer_state.json" in problem or "does not load" in problem)
