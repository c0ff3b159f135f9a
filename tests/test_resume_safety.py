"""Resuming an output_dir (issue 26): a rerun with other settings is refused instead of silently resuming the old
run; a resume is said at WARNING; damaged checkpoints are skipped for the previous complete one, or refused when
named; an explorer state from another backend is dropped with a warning. CLI (`s2l-train`) and Python API."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts

from s2l_trl import S2LTrainer
from s2l_trl.checkpoints import SETTINGS_NAME, checkpoint_problem, last_complete_checkpoint
from s2l_trl.cli.errors import run_cli
from s2l_trl.cli.train import cli
from s2l_trl.explorers.rounds import STATE_NAME, ExplorerRounds
from s2l_trl.preflight import InputError
from s2l_trl.rewards import accuracy_reward

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def _command(tiny, out: Path, *extra: str) -> list[str]:
    argv = ["--config", str(RECIPES / "grpo" / "config_cpu.yaml"), "--model_name_or_path", str(tiny["learner"])]
    argv += ["--dataset_name", str(tiny["dataset"]), "--output_dir", str(out), "--max_steps", "2"]
    return [*argv, "--save_strategy", "steps", "--save_steps", "1", "--disable_tqdm", "true", *extra]


def _step(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


# ---------------------------------------------------------------- s2l-train
def test_a_rerun_with_other_settings_is_refused_and_the_same_run_resumes_loudly(tiny, tmp_path, capsys, caplog):
    out = tmp_path / "reuse"
    cli(_command(tiny, out))
    weights = (out / "model.safetensors").read_bytes()
    assert json.loads((out / "checkpoint-2" / SETTINGS_NAME).read_text())["training"]["seed"] == 0
    capsys.readouterr()

    # The probe: another seed and learning rate into the same folder. Refused, naming both, before any work.
    with pytest.raises(SystemExit) as exit_info:
        run_cli("s2l-train", cli, _command(tiny, out, "--seed", "7", "--learning_rate", "3e-4"))
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert f"output_dir '{out}' holds a run whose newest checkpoint ({out / 'checkpoint-2'})" in err[0]
    assert "seed: 0 -> 7" in err[0] and "learning_rate: 0.0001 -> 0.0003" in err[0]
    assert "Choose another output_dir" in err[0] and "--resume_from_checkpoint true" in err[0]
    # Another learner (architecture): refused by name and shape, not by a size-mismatch traceback.
    with pytest.raises(SystemExit):
        run_cli("s2l-train", cli, _command(tiny, out, "--model_name_or_path", str(tiny["explorer"])))
    err = capsys.readouterr().err
    assert "model.name:" in err and "model.architecture.hidden_size: 64 -> 32" in err
    # Other training prompts (one row fewer): refused too.
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(tiny["dataset"].read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(SystemExit):
        run_cli("s2l-train", cli, _command(tiny, out, "--dataset_name", str(fewer)))
    assert "data.rows: 64 -> 63" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights and _step(out) == 2  # nothing was touched

    # The same run, longer: resumed from its newest checkpoint, said at WARNING.
    with caplog.at_level(logging.WARNING, logger="s2l_trl.checkpoints"):
        cli(_command(tiny, out, "--max_steps", "3"))
    said = f"Resuming from checkpoint {out / 'checkpoint-2'} (step 2): output_dir holds this run (same model and"
    assert said in caplog.text
    assert _step(out) == 3
    # Asked for explicitly, a resume with other settings goes on, listing them.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2l_trl.checkpoints"):
        cli(_command(tiny, out, "--max_steps", "4", "--seed", "7", "--resume_from_checkpoint", "true"))
    assert f"Resuming from checkpoint {out / 'checkpoint-3'} (step 3) as asked, although" in caplog.text
    assert "seed: 0 -> 7" in caplog.text and _step(out) == 4


# ---------------------------------------------------------------- the Python API
def _trainer(tiny, tmp_path, rollouts, **overrides):
    args = s2l_args(tmp_path, rollouts, **{"max_steps": 2, "save_strategy": "steps", "save_steps": 1, **overrides})
    return S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))


def test_the_api_resumes_only_when_asked_and_never_from_a_damaged_checkpoint(tiny, tmp_path, caplog):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "r.jsonl")
    _trainer(tiny, tmp_path, rollouts).train()
    out = tmp_path / "out"
    for checkpoint in ("checkpoint-1", "checkpoint-2"):  # S2L's state is written before trainer_state.json
        folder = out / checkpoint
        assert (folder / STATE_NAME).stat().st_mtime_ns <= (folder / "trainer_state.json").stat().st_mtime_ns

    # Not asked: a new run would overwrite the old one's checkpoints.
    with pytest.raises(InputError, match=r"already holds checkpoints of a run \(checkpoint-2, checkpoint-1\).*"):
        _trainer(tiny, tmp_path, rollouts).train()

    # Torn weights in the newest checkpoint: resume_from_checkpoint=True falls back to the previous complete one.
    shutil.copytree(out / "checkpoint-2", tmp_path / "checkpoint-2.bak")
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="s2l_trl.checkpoints"):
        resumed = _trainer(tiny, tmp_path, rollouts)
        resumed.train(resume_from_checkpoint=True)
    assert f"Skipping incomplete checkpoint {out / 'checkpoint-2'}: model.safetensors is cut short" in caplog.text
    said = f"Resuming from checkpoint {out / 'checkpoint-1'} (step 1), as asked (same model and settings)"
    assert said in caplog.text
    assert resumed.state.global_step == 2

    # A checkpoint without its optimizer state is refused when named (never a silent fresh optimizer).
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    with pytest.raises(InputError, match=r"checkpoint-2' cannot be resumed from: no optimizer state \(optimizer.pt\)"):
        _trainer(tiny, tmp_path, rollouts).train(resume_from_checkpoint=str(out / "checkpoint-2"))


# ---------------------------------------------------------------- the completeness check, file by file
def _complete_checkpoint(folder: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import TrainerState

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(64)}, str(folder / "model.safetensors"))
    (folder / "small_model").mkdir()
    save_file({"w": torch.zeros(64)}, str(folder / "small_model" / "model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"last_epoch": 1}, folder / "scheduler.pt")
    (folder / STATE_NAME).write_text('{"explorer": "OfflineExplorer", "explorer_state": {}}')
    (folder / SETTINGS_NAME).write_text('{"training": {"seed": 0}}')
    TrainerState(global_step=1).save_to_json(str(folder / "trainer_state.json"))
    return folder


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 8])


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda f: _cut(f / "model.safetensors"), "model.safetensors is cut short"),
        (lambda f: _cut(f / "small_model" / "model.safetensors"), "small_model/model.safetensors is cut short"),
        (lambda f: (f / "model.safetensors").unlink(), "no model weights"),
        (lambda f: (f / "optimizer.pt").write_bytes(b""), "optimizer.pt is cut short or damaged"),
        (lambda f: (f / "optimizer.pt").unlink(), "no optimizer state (optimizer.pt)"),
        (lambda f: _cut(f / "scheduler.pt"), "scheduler.pt is cut short or damaged"),
        (lambda f: (f / "scheduler.pt").unlink(), "no scheduler.pt"),
        (lambda f: (f / STATE_NAME).write_text('{"explorer": "Off'), f"{STATE_NAME} does not load (JSONDecodeError"),
        (lambda f: (f / SETTINGS_NAME).write_text("{"), f"{SETTINGS_NAME} does not load (JSONDecodeError"),
    ],
)
def test_the_completeness_check_covers_every_file_a_resume_reads(tmp_path, damage, problem, caplog):
    older = _complete_checkpoint(tmp_path / "checkpoint-1")
    newest = _complete_checkpoint(tmp_path / "checkpoint-2")
    assert checkpoint_problem(newest) is None
    damage(newest)
    assert problem in checkpoint_problem(newest)
    with caplog.at_level(logging.WARNING, logger="s2l_trl.checkpoints"):
        assert last_complete_checkpoint(tmp_path) == str(older)
    assert f"Skipping incomplete checkpoint {newest}" in caplog.text


# ---------------------------------------------------------------- the explorer's state
class _CallCounter:
    """Stands in for the local / vLLM explorers, whose state has the same keys as a server explorer's."""

    def __init__(self):
        self.calls = 0

    def state_dict(self):
        return {"seed": 0, "calls": self.calls}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


def test_an_explorer_state_from_another_backend_is_dropped_with_a_warning(tiny, tmp_path, caplog):
    """Server -> offline (the issue's KeyError 'requests_served', also from a file that does not name its backend),
    and server -> local (same keys, another meaning: only the recorded backend tells them apart)."""
    from s2l_trl.explorers.offline import OfflineExplorer

    offline = OfflineExplorer(write_oracle_rollouts(tiny, tmp_path / "r.jsonl"), seed=0)
    server_state = {"seed": 0, "calls": 3}
    for explorer, saved in [
        (offline, {"explorer": "ServerExplorer", "explorer_state": server_state}),
        (offline, {"explorer_state": server_state}),  # written before the backend was recorded
        (_CallCounter(), {"explorer": "ServerExplorer", "explorer_state": server_state}),
    ]:
        (tmp_path / STATE_NAME).write_text(json.dumps(saved))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="s2l_trl.explorers.rounds"):
            ExplorerRounds(explorer).restore(tmp_path)
        assert f"{tmp_path / STATE_NAME} holds" in caplog.text and "explorer draws start afresh" in caplog.text
        assert explorer.state_dict() in ({"seed": 0, "requests_served": 0}, {"seed": 0, "calls": 0})
    # The same backend continues its draws.
    counter = _CallCounter()
    (tmp_path / STATE_NAME).write_text(json.dumps({"explorer": "_CallCounter", "explorer_state": server_state}))
    ExplorerRounds(counter).restore(tmp_path)
    assert counter.calls == 3
    offline.close()


def test_a_torn_explorer_state_is_an_error_naming_the_file(tmp_path):
    (tmp_path / STATE_NAME).write_text('{"explorer": "Offl')
    with pytest.raises(InputError, match=rf"{tmp_path / STATE_NAME} does not load \(JSONDecodeError"):
        ExplorerRounds(object()).restore(tmp_path)
