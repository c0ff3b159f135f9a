"""Same seed, same run: a short miniature S2L-PO run (in-process explorer) repeated with the same seed gives the same
rollouts, per-step rewards and losses, and the same held-out evaluations."""

from __future__ import annotations

import json

import pytest

from s2l_trl.miniature.family import FamilySpec, build_family
from s2l_trl.miniature.rl_experiment import run_one
from s2l_trl.miniature.runs import RecordingExplorer
from s2l_trl.miniature.settings import RLSettings

# Logged once per step by TRL / S2L: what a rerun must reproduce exactly.
PER_STEP_KEYS = ("loss", "reward", "reward_std", "s2l/reward/learner", "s2l/reward/explorer", "grad_norm")

# The test process runs with this machine's own kernel settings (family builds are pinned by default); a few
# held-out problems per checkpoint suffice here.
MICRO = {"numerics": "native", "heldout_problems": 16}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; a second thread only slows a shared 2-core machine
    spec = FamilySpec(sizes=["S", "M"], sft_steps=20, train_problems=300, batch_size=16, checkpoints=[10], **MICRO)
    yield build_family(tmp_path_factory.mktemp("mini") / "family", spec)
    torch.set_num_threads(before)


def _per_step(run_dir) -> dict[int, dict[str, float]]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: {k: h[k] for k in PER_STEP_KEYS if k in h} for h in history if "loss" in h}


def test_recording_explorer_runs_where_the_wrapped_explorer_runs():
    class Foreground:
        runs_in_background = False

    class Unspecified:
        pass

    assert RecordingExplorer(Foreground(), recorder=None).runs_in_background is False
    assert RecordingExplorer(Unspecified(), recorder=None).runs_in_background is True  # the trainer's default


def test_s2l_po_same_seed_same_run(family, tmp_path):
    # Explorer rows in steps 1-5 (G_w = 4, 4, 3, 2, 1 of G = 4) and learner rows from step 2: the two sources sample in
    # the same steps, which is where a threaded explorer raced the learner for torch's global generator.
    settings = RLSettings(
        learner="M",
        explorer="S",
        steps=8,
        mix_steps=6,
        eval_every=8,
        eval_problems=4,
        eval_samples=2,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=24,
        seeds=[0],
    )
    runs = [run_one(family, settings, "s2l_po", 0, tmp_path / name) for name in ("a", "b")]
    dirs = [tmp_path / name / "runs" / "s2l_po-seed0" for name in ("a", "b")]
    per_step = [_per_step(d) for d in dirs]
    assert sorted(per_step[0]) == list(range(1, 9))
    assert all(per_step[0][s].keys() >= {"loss", "reward", "s2l/reward/explorer"} for s in range(1, 6))
    mixed = [s for s in runs[0]["per_step"] if s["explorer_tokens"] > 0 and s["learner_rows"] > 0]
    assert len(mixed) >= 3, "the run must have steps in which both sources sample"
    for step in per_step[0]:
        assert per_step[0][step] == per_step[1][step], f"step {step} differs between two runs with seed 0"
    rollouts = [(d / "rollouts.jsonl").read_text() for d in dirs]
    assert rollouts[0] == rollouts[1]
    assert runs[0]["evals"] == runs[1]["evals"]
