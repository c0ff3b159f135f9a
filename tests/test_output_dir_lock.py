"""Two runs cannot write one output_dir (issue 26): the second is refused at once, in the CLI and the Python API, on
every process of a distributed run; a lock left by a killed run is taken over with a warning."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts

from s2l_trl import S2LTrainer
from s2l_trl.checkpoints import LOCK_NAME, OutputDirLock
from s2l_trl.cli.errors import run_cli
from s2l_trl.cli.train import cli
from s2l_trl.devtools.vllm_server import free_port
from s2l_trl.preflight import InputError
from s2l_trl.rewards import accuracy_reward

REPO = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent(
    """
    import sys, time
    from s2l_trl.checkpoints import OutputDirLock
    OutputDirLock.acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(300)
    """
)


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


@pytest.fixture()
def holder(tmp_path):
    """Another process holding the lock of tmp_path / "out" (killed at the end)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=_env(), start_new_session=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_second_run_into_a_locked_output_dir_is_refused_at_once(tiny, tmp_path, holder, capsys, caplog):
    out, proc = holder
    with pytest.raises(InputError, match=rf"output_dir '{out}' is in use by another run \(PID {proc.pid} on host"):
        OutputDirLock.acquire(out)

    # The CLI: one line, exit 2, before the data or the model is loaded.
    argv = ["--config", str(REPO / "recipes/tiny/grpo/config_cpu.yaml"), "--model_name_or_path", str(tiny["learner"])]
    argv += ["--dataset_name", str(tiny["dataset"]), "--output_dir", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("s2l-train", cli, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and f"is in use by another run (PID {proc.pid}" in err[0]
    assert "overwrite each other's checkpoints" in err[0] and "choose another output_dir" in err[0]

    # The Python API, before TRL builds anything.
    rollouts = write_oracle_rollouts(tiny, tmp_path / "r.jsonl")
    with pytest.raises(InputError, match="is in use by another run"):
        S2LTrainer(
            str(tiny["learner"]), [accuracy_reward], args=s2l_args(tmp_path, rollouts), train_dataset=tiny_dataset(tiny)
        )
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the holder's lock, untouched

    # The holder is killed (no clean-up): its lock is taken over, with a warning that names it.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with caplog.at_level(logging.WARNING, logger="s2l_trl.checkpoints"):
        lock = OutputDirLock.acquire(out)
    assert f"taking over the lock of a run that is gone (PID {proc.pid}" in caplog.text
    assert f'"pid": {os.getpid()}' in (out / LOCK_NAME).read_text()
    lock.release()
    assert not (out / LOCK_NAME).exists() and out.is_dir()  # the folder existed before: kept


def test_the_lock_is_counted_per_process_and_a_folder_it_created_goes_with_it(tmp_path):
    out = tmp_path / "new" / "run"
    first, second = OutputDirLock.acquire(out), OutputDirLock.acquire(str(out) + "/")
    assert first is second and (out / LOCK_NAME).exists()
    first.release()
    assert (out / LOCK_NAME).exists()  # still held by the second holder (the CLI and its trainer, say)
    second.release()
    assert not out.exists()  # created by the lock and left empty: removed


def test_a_trainer_that_fails_to_build_leaves_no_lock_and_no_folder(tiny, tmp_path):
    rollouts = write_oracle_rollouts(tiny, tmp_path / "r.jsonl")
    args = s2l_args(tmp_path, rollouts, max_completion_length=100_000)  # prompts + completions exceed the context
    with pytest.raises(InputError, match="do not fit"):
        S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    assert not (tmp_path / "out").exists()
    OutputDirLock.acquire(tmp_path / "out").release()  # and nothing holds it


DISTRIBUTED = textwrap.dedent(
    """
    import sys
    import torch.distributed as dist
    dist.init_process_group("gloo")
    from s2l_trl.checkpoints import hold_output_dir
    from s2l_trl.preflight import InputError
    rank = dist.get_rank()
    # One report file per rank: the ranks' prints share torchrun's stdout and can interleave mid-line.
    with open(f"{sys.argv[1]}/rank{rank}.txt", "w") as report:
        for out in sys.argv[2:]:
            try:
                lock = hold_output_dir(out, owner=rank == 0)
                report.write(f"rank {rank} of {dist.get_world_size()}: holds {lock is not None}\\n")
            except InputError as exc:
                report.write(f"rank {rank} of {dist.get_world_size()}: refused: {exc}\\n")
    # A gloo rank that exits while the other still talks to it can abort (SIGABRT, seen once in 12 runs): leave
    # together.
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_every_process_of_a_distributed_run_learns_that_the_lock_is_taken(tmp_path, holder):
    """Only the main process takes the lock; the others learn the outcome from it (no deadlock, no second lock)."""
    out, proc = holder
    script = tmp_path / "lock_ranks.py"
    script.write_text(DISTRIBUTED)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    command += [str(free_port()), str(script), str(tmp_path), str(out), str(tmp_path / "free")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = sorted(line for rank in (0, 1) for line in (tmp_path / f"rank{rank}.txt").read_text().splitlines())
    refused = [line for line in lines if "refused" in line]
    assert [line.split(":")[0] for line in refused] == ["rank 0 of 2", "rank 1 of 2"]
    assert all(f"output_dir '{out}' is in use by another run (PID {proc.pid}" in line for line in refused)
    assert [line for line in lines if "refused" not in line] == ["rank 0 of 2: holds True", "rank 1 of 2: holds False"]


def test_the_cli_releases_the_lock_and_its_empty_folder_when_it_ends(tiny, tmp_path, capsys):
    data = tmp_path / "no_solution.jsonl"
    data.write_text('{"prompt": "1 + 1 = ?"}\n')
    out = tmp_path / "out"
    argv = ["--config", str(REPO / "recipes/tiny/grpo/config_cpu.yaml"), "--model_name_or_path", str(tiny["learner"])]
    with pytest.raises(SystemExit):
        run_cli("s2l-train", cli, [*argv, "--dataset_name", str(data), "--output_dir", str(out)])
    assert "no solution column 'solution'" in capsys.readouterr().err
    assert not out.exists() and str(out) not in OutputDirLock._held
