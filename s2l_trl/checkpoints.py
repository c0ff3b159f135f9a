"""What a training run keeps in its `output_dir`: the lock that makes it the only run writing there, and its
checkpoints (which are complete, which one a rerun resumes from)."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .preflight import InputError, check_output_dir

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- the output_dir lock
# In output_dir, named so that `push_to_hub` leaves it out (transformers ignores "_*" when it uploads a folder).
LOCK_NAME = "_s2l_run.lock"


class OutputDirLock:
    """The lock of one `output_dir`: a file `LOCK_NAME` in it, `flock`ed while the run lives and holding the run's
    PID, host, start time and command line (for the message another run gets).

    Two runs writing one folder overwrite each other's checkpoints, so a second run is refused at once. The kernel
    drops an `flock` when its process dies (also by SIGKILL), so a lock left by a dead run on this machine is taken
    over, with a warning naming it; a lock written by a run on another host (a shared file system, where `flock` may
    not reach across machines) is refused until its file is deleted. Locks are per process and counted: the CLI and
    the trainer it builds take the same lock once; the file is removed when the last holder releases it, or when the
    process exits, and so is the folder when taking the lock created it and nothing else was written there.
    """

    _held: dict[str, OutputDirLock] = {}
    _guard = threading.Lock()

    def __init__(self, folder: Path, fd: int, created_folder: bool = False):
        self.folder = folder
        self.created_folder = created_folder  # removed again on release if the run left it empty
        self.path = folder / LOCK_NAME
        self._fd: int | None = fd
        self._count = 0
        self._pid = os.getpid()  # a forked child inherits the object (and the flock) but must not remove the file

    @classmethod
    def acquire(cls, output_dir: str | os.PathLike) -> OutputDirLock:
        """Lock `output_dir` for this process (creating the folder); raises `InputError` when another run holds it."""
        folder = Path(os.path.expanduser(os.fspath(output_dir))).resolve()
        with cls._guard:
            lock = cls._held.get(str(folder))
            if lock is None:
                lock = cls._take(folder)
                cls._held[str(folder)] = lock
            lock._count += 1
            return lock

    @classmethod
    def _take(cls, folder: Path) -> OutputDirLock:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_NAME
        for _ in range(10):  # the file may be removed by its releasing holder between our open and our flock
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise InputError(_held_message(folder, _read_owner(path), live=True)) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)
        else:
            raise InputError(f"output_dir {str(folder)!r}: could not take its lock {str(path)!r}; try again.")
        previous = _read_owner(path)
        if previous:
            if previous.get("host") not in (None, socket.gethostname()):
                os.close(fd)
                raise InputError(_held_message(folder, previous, live=False))
            logger.warning(
                "output_dir %s: taking over the lock of a run that is gone (PID %s on %s, started %s); its checkpoints "
                "are kept.",
                folder,
                previous.get("pid"),
                previous.get("host"),
                previous.get("started"),
            )
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        os.fsync(fd)
        lock = cls(folder, fd, created_folder=created)
        atexit.register(lock._drop)
        return lock

    def release(self) -> None:
        """Give this holder's share back; the lock is removed when the last holder of this process releases it."""
        with self._guard:
            self._count -= 1
            if self._count <= 0:
                self._drop()

    def _drop(self) -> None:
        if self._fd is None or os.getpid() != self._pid:
            return
        self._held.pop(str(self.folder), None)
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        if self.created_folder:  # a run that failed before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                self.folder.rmdir()


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}  # unreadable: held by something that is not an s2l run


def _held_message(folder: Path, owner: dict[str, Any], live: bool) -> str:
    who = f"PID {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    if owner.get("started"):
        who += f", started {owner['started']}"
    if owner.get("command"):
        who += f": {owner['command']}"
    if live:
        return (
            f"output_dir {str(folder)!r} is in use by another run ({who}); two runs writing one folder overwrite each "
            "other's checkpoints. Wait for that run to end or stop it, or choose another output_dir."
        )
    return (
        f"output_dir {str(folder)!r} is locked by a run on another host ({who}), which cannot be checked from here. "
        f"If that run has ended, delete {str(folder / LOCK_NAME)!r}; otherwise choose another output_dir."
    )


def hold_output_dir(output_dir: str | os.PathLike, owner: bool) -> OutputDirLock | None:
    """Lock `output_dir` on the process that writes it (`owner`: TrainingArguments' `should_save`), before anything
    is written there, and raise the same `InputError` on every process of a distributed run when it is taken: the
    other processes learn it from the owner instead of waiting for it in the next collective."""
    lock, error = None, None
    if owner:
        try:
            lock = OutputDirLock.acquire(output_dir)
        except InputError as exc:
            error = str(exc)
    errors = _gather_from_all_processes(error)
    if errors:
        if lock is not None:
            lock.release()
        raise InputError(errors[0])
    return lock


@contextlib.contextmanager
def output_dir_held(output_dir: str | os.PathLike, owner: bool) -> Iterator[None]:
    """A training command's hold on `output_dir` for the whole command: checked (a writable folder), locked
    (:func:`hold_output_dir`), released at the end, also on an error."""
    check_output_dir(output_dir)
    lock = hold_output_dir(output_dir, owner)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _gather_from_all_processes(value: str | None) -> list[str]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value] if value else []
    values: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return [v for v in values if v]


# ---------------------------------------------------------------------- checkpoints

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it is complete.

    `Trainer._save_checkpoint` writes ``trainer_state.json`` after the model, optimizer and scheduler, so a checkpoint
    whose ``trainer_state.json`` loads with `transformers.TrainerState.load_from_json` was saved to the end; one
    killed during the save (SIGKILL, node loss) has no or a torn ``trainer_state.json``.
    """
    from transformers import TrainerState

    state_path = Path(checkpoint) / "trainer_state.json"
    if not state_path.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        TrainerState.load_from_json(str(state_path))
    except Exception as exc:  # a torn or hand-broken file: JSONDecodeError, TypeError on unknown keys, ...
        return f"trainer_state.json does not load ({type(exc).__name__}: {exc})"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder of ``output_dir`` (see :func:`checkpoint_problem`), or ``None``.

    Newer incomplete checkpoints are skipped with a warning that names them and says why; they are left on disk.
    Use instead of `transformers.trainer_utils.get_last_checkpoint` when deciding where a rerun resumes.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    numbered = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            numbered.append((int(match.group(1)), path))
    for _, path in sorted(numbered, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s: %s. Resuming from an earlier one, if any.", path, problem)
    return None


def load_saved_weights(model, folder: str | Path) -> None:
    """Load the weights `save_pretrained` wrote into ``folder`` into ``model``, in place.

    A PEFT adapter (``adapter_model.safetensors``) is loaded into a PEFT model; otherwise every ``*.safetensors``
    file of the folder (one file, or the shards of an index) is loaded into the full model. Unexpected keys are an
    error (the folder holds another model); keys missing from the folder are logged (tied weights are saved once).
    Used to resume a model that Transformers does not resume itself (CoDistill's small model).
    """
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    adapter = folder / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No weights (*.safetensors or adapter_model.safetensors) in {folder}.")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(str(path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{folder} holds weights this model does not have, e.g. {sorted(unexpected)[:5]}.")
    if missing:
        logger.warning("Keys missing from %s (tied weights are saved once): %s", folder, sorted(missing)[:5])
