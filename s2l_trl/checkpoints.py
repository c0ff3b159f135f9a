"""What a training run keeps in its `output_dir`: the lock that makes it the only run writing there, and its
checkpoints (which are complete, which one a rerun resumes from)."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import enum
import errno
import fcntl
import hashlib
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

from transformers import TrainerCallback

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
# What S2L adds to a checkpoint: the explorer's random state (explorers.rounds) and the run's settings (below).
S2L_STATE_NAME = "s2l_state.json"
SETTINGS_NAME = "s2l_run.json"


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it is complete.

    Complete means: ``trainer_state.json`` loads (`Trainer._save_checkpoint` writes it after everything else, so a
    save killed by SIGKILL or node loss has none, or a torn one); the model weights are there and whole
    (``*.safetensors`` headers and sizes, ``*.bin`` / ``*.pt`` archives read to their end record, CoDistill's
    ``small_model/`` included); so are the optimizer and scheduler states (a checkpoint without them, e.g. saved with
    ``save_only_model=True``, would resume with a fresh optimizer); and S2L's ``s2l_state.json`` and
    ``s2l_run.json``, where present, parse. Reads headers only: cheap at any model size. DeepSpeed's ``global_step*``
    and FSDP's sharded ``*_0`` folders are taken as they are.
    """
    from transformers import TrainerState

    folder = Path(checkpoint)
    state_path = folder / "trainer_state.json"
    if not state_path.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        TrainerState.load_from_json(str(state_path))
    except Exception as exc:  # a torn or hand-broken file: JSONDecodeError, TypeError on unknown keys, ...
        return f"trainer_state.json does not load ({type(exc).__name__}: {exc})"
    names = {p.name for p in folder.iterdir()}
    deepspeed = any(name.startswith("global_step") for name in names)
    sharded = {name for name in names if (folder / name).is_dir() and re.match(r".*_\d+$", name)}
    weights = [name for name in names if re.match(r"(model|adapter_model|pytorch_model)[-.].*(safetensors|bin)$", name)]
    if not (weights or deepspeed or any(name.startswith("pytorch_model_fsdp") for name in sharded)):
        return "no model weights (model.safetensors, adapter_model.safetensors, pytorch_model.bin or their shards)"
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith("global_step") or part in sharded for part in path.parts):
            problem = _file_problem(path)
            if problem is not None:
                return f"{path.relative_to(folder)} {problem}"
    if not (deepspeed or {"optimizer.pt", "optimizer.bin"} & names or any(n.startswith("optimizer") for n in sharded)):
        return "no optimizer state (optimizer.pt): resuming would start a fresh optimizer (save_only_model saves none)"
    if not deepspeed and "scheduler.pt" not in names:
        return "no scheduler.pt: resuming would restart the learning-rate schedule"
    return None


def _file_problem(path: Path) -> str | None:
    """What is wrong with one checkpoint file, judged by its format's own framing; `None` when it looks whole."""
    import zipfile

    try:
        if path.suffix == ".safetensors":
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(8)
                length = int.from_bytes(head, "little") if len(head) == 8 else -1
                if length < 2 or 8 + length > size:
                    return "is cut short (its safetensors header does not fit the file)"
                header = json.loads(f.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + length + end > size:
                return f"is cut short ({size} bytes, its header needs {8 + length + end})"
        elif path.suffix in (".pt", ".pth", ".bin"):
            if not zipfile.is_zipfile(path):
                return "is cut short or damaged (not a whole torch archive)"
        elif path.suffix == ".json" and path.name in (S2L_STATE_NAME, SETTINGS_NAME, "config.json"):
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return f"does not load ({type(exc).__name__}: {exc})"
    return None


def numbered_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    numbered = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            numbered.append((int(match.group(1)), path))
    return [path for _, path in sorted(numbered, reverse=True)]


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder of ``output_dir`` (see :func:`checkpoint_problem`), or ``None``.

    Newer incomplete checkpoints are skipped with a warning that names them and says why; they are left on disk.
    Use instead of `transformers.trainer_utils.get_last_checkpoint` when deciding where a rerun resumes.
    """
    for path in numbered_checkpoints(output_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s: %s. Resuming from an earlier one, if any.", path, problem)
    return None


# ---------------------------------------------------------------------- what a run is: compared when resuming
# TrainingArguments / GRPOConfig fields that change what a run computes. Left out on purpose: the length of the run
# (max_steps, num_train_epochs: extending a run is the usual reason to resume), saving, logging, evaluation, paths
# and the hub.
SHAPING_FIELDS = (
    "seed", "data_seed", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio",
    "weight_decay", "optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "generation_batch_size",
    "steps_per_generation", "num_iterations", "max_completion_length", "max_prompt_length", "temperature", "top_p",
    "top_k", "min_p", "repetition_penalty", "generation_kwargs", "chat_template_kwargs", "beta", "epsilon",
    "epsilon_high", "delta", "loss_type", "scale_rewards", "importance_sampling_level", "reward_weights",
    "multi_objective_aggregation", "mask_truncated_completions", "top_entropy_quantile", "entropy_coef",
    "use_vllm", "vllm_importance_sampling_correction", "vllm_importance_sampling_mode", "vllm_importance_sampling_cap",
    "off_policy_mask_threshold", "shuffle_dataset", "bf16", "fp16",
)  # fmt: skip
# Fields of S2LConfig / CoDistillConfig (all of which shape the run otherwise) that only say where and how fast the
# explorer is reached.
OPERATIONAL_FIELDS = frozenset(
    {
        "explorer_server_base_url", "explorer_server_timeout", "explorer_server_check_model_name",
        "explorer_prompts_per_request", "explorer_max_concurrent_requests", "explorer_request_timeout",
        "explorer_stall_timeout", "explorer_max_retries", "explorer_server_max_failures",
        "explorer_vllm_gpu_memory_utilization", "explorer_vllm_max_model_length", "explorer_vllm_enable_sleep_mode",
        "explorer_vllm_kwargs", "explorer_prefetch", "small_model_init_kwargs", "small_use_vllm",
    }
)  # fmt: skip
_ARCHITECTURE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "vocab_size",
)  # fmt: skip


def run_settings(
    args: Any, model: Any, train_dataset: Any = None, reward_funcs: Any = (), world_size: int | None = None
) -> dict[str, Any]:
    """What makes a run this run, as JSON: the model (its name and architecture), the training arguments that shape
    it (:data:`SHAPING_FIELDS`, and every field of an S2L / CoDistill config but :data:`OPERATIONAL_FIELDS`), the
    reward functions, the number of processes (the global batch) and a fingerprint of the training prompts.

    Args:
        args: the run's `GRPOConfig` / `S2LConfig` / `CoDistillConfig`.
        model: the learner: an id or path (its `config.json` is read where it is local or cached), or a model.
        train_dataset: the training data as the trainer gets it (a map-style data set is fingerprinted).
        reward_funcs: the reward functions (callables or model ids).
        world_size: processes of the run (default `args.world_size`).
    """
    from trl import GRPOConfig

    grpo = {f.name for f in dataclasses.fields(GRPOConfig)}
    own = [f.name for f in dataclasses.fields(args) if f.name not in grpo and f.name not in OPERATIONAL_FIELDS]
    training = {name: _plain(getattr(args, name)) for name in (*SHAPING_FIELDS, *own) if hasattr(args, name)}
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    settings: dict[str, Any] = {
        "model": _model_identity(model),
        "training": training,
        "reward_funcs": [getattr(f, "__name__", None) or str(f) for f in funcs],
        "world_size": int(world_size if world_size is not None else args.world_size),
    }
    data = _data_fingerprint(train_dataset)
    if data is not None:
        settings["data"] = data
    return settings


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    return json.loads(json.dumps(value, default=str))


def _model_identity(model: Any) -> dict[str, Any]:
    config: dict[str, Any] | None = None
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        local = Path(os.path.expanduser(name))
        path = local / "config.json" if local.is_dir() else None
        if local.is_dir():
            name = str(local.resolve())
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
            path = Path(cached) if isinstance(cached, str) else None
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                config = json.loads(path.read_text(encoding="utf-8"))
    else:
        model_config = getattr(model, "config", None)
        config = model_config.to_dict() if hasattr(model_config, "to_dict") else None
        name = (config or {}).get("_name_or_path") or type(model).__name__
        if os.path.isdir(name):
            name = str(Path(name).resolve())
    identity: dict[str, Any] = {"name": name}
    if config is not None:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        identity["architecture"] = {k: _plain(text[k]) for k in _ARCHITECTURE_KEYS if text.get(k) is not None}
    return identity


def _data_fingerprint(dataset: Any) -> dict[str, Any] | None:
    """Rows and a SHA-256 of the prompts (and solutions) of a map-style data set; `None` for other data sets."""
    columns = getattr(dataset, "column_names", None) or ()
    if dataset is None or not hasattr(dataset, "__len__") or "prompt" not in columns:
        return None
    digest = hashlib.sha256()
    kept = [c for c in ("prompt", "solution") if c in columns]
    rows = dataset.select_columns(kept) if hasattr(dataset, "select_columns") else dataset
    for start in range(0, len(rows), 4096):  # in slices: bounded memory at any data-set size
        digest.update(json.dumps(rows[start : start + 4096], sort_keys=True, default=str).encode())
    return {"rows": len(dataset), "sha256": digest.hexdigest()[:16]}


def read_run_settings(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a checkpoint was made with (:data:`SETTINGS_NAME`), or `None` when it records none."""
    path = Path(checkpoint) / SETTINGS_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def settings_differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """`what: before -> now` for every setting both record and that differs (one level into nested groups)."""
    if not saved:
        return []
    out = []
    for group, value in current.items():
        before = saved.get(group)
        if before is None:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            for key in value:
                if key in before and before[key] != value[key]:
                    sub_value, sub_before = value[key], before[key]
                    if isinstance(sub_value, dict) and isinstance(sub_before, dict):  # the model's architecture
                        out += [
                            f"{group}.{key}.{k}: {sub_before[k]!r} -> {sub_value[k]!r}"
                            for k in sub_value
                            if k in sub_before and sub_before[k] != sub_value[k]
                        ]
                    else:
                        label = key if group == "training" else f"{group}.{key}"
                        out.append(f"{label}: {sub_before!r} -> {sub_value!r}")
        elif before != value:
            out.append(f"{group}: {before!r} -> {value!r}")
    return out


class RunSettingsCallback(TrainerCallback):
    """Writes the run's settings (:func:`run_settings`) into every checkpoint the trainer saves, for the next run
    into the same `output_dir` to compare with (:func:`resolve_resume`)."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            from .jsonl import write_json_atomic

            write_json_atomic(folder / SETTINGS_NAME, self.settings)
        return control


# ---------------------------------------------------------------------- where a run resumes
_TRUE = ("true", "yes", "1", "last")
_FALSE = ("", "false", "no", "0", "none")
_announced: set[str] = set()  # checkpoints whose resume was announced (the CLI, then its trainer, check it)


def resolve_resume(
    output_dir: str | os.PathLike,
    requested: str | bool | None,
    settings: dict[str, Any],
    *,
    implicit: bool,
    ask: str,
) -> str | None:
    """The checkpoint a run resumes from, or `None` for a new run; refuses what would silently go wrong.

    Args:
        output_dir: the run's folder.
        requested: what the user asked: nothing (`None`, `False`, "false"), the newest complete checkpoint (`True`,
            "true", "last") or a checkpoint folder.
        settings: this run's :func:`run_settings`, compared with those the checkpoint records.
        implicit: whether a run that asked nothing resumes `output_dir`'s newest complete checkpoint by itself when
            its settings match (`s2l-train`, open-r1's convention), or refuses to start over it (the Python API,
            where TRL resumes only when asked).
        ask: how this caller asks for a resume, for messages (`--resume_from_checkpoint true`, ...).

    Rules: a resume is announced at WARNING with its checkpoint. Resuming by itself, a run refuses when the model or
    a setting that shapes it differs from the checkpoint's (the message lists them and the fixes); asked for, the
    resume goes on with a warning listing them. Torn or incomplete checkpoints (:func:`checkpoint_problem`) are
    skipped for an earlier complete one, with a warning; one named explicitly is refused. A new run never starts
    over another run's checkpoints: it would overwrite them.
    """
    folder = Path(output_dir)
    if isinstance(requested, str) and requested.strip().lower() in _TRUE:
        requested = True
    elif requested is False or (isinstance(requested, str) and requested.strip().lower() in _FALSE):
        requested = None
    existing = numbered_checkpoints(folder)
    if requested is None:
        if not existing:
            return None
        shown = ", ".join(p.name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        if not implicit:
            raise InputError(
                f"output_dir {str(folder)!r} already holds checkpoints of a run ({shown}): a new run would overwrite "
                f"them. Resume that run with {ask}, or choose another output_dir."
            )
        checkpoint = last_complete_checkpoint(folder)
        if checkpoint is None:
            problems = "; ".join(f"{p.name}: {checkpoint_problem(p)}" for p in existing[:3])
            raise InputError(
                f"output_dir {str(folder)!r} holds checkpoints but none is complete ({problems}): there is nothing to "
                "resume, and a new run would overwrite them. Choose another output_dir, or delete them."
            )
        saved = read_run_settings(checkpoint)
        differences = settings_differences(saved, settings)
        if differences:
            raise InputError(
                f"output_dir {str(folder)!r} holds a run whose newest checkpoint ({checkpoint}) was made with other "
                f"settings ({'; '.join(differences)}): resuming it would ignore the new ones. Choose another "
                f"output_dir for a new run, or pass {ask} to resume that run with these settings."
            )
        _announce(checkpoint, False, saved)
        return checkpoint
    if requested is True:
        checkpoint = last_complete_checkpoint(folder)
        if checkpoint is None:
            why = "; ".join(f"{p.name}: {checkpoint_problem(p)}" for p in existing[:3]) or "it has none"
            raise InputError(
                f"Resuming was asked for ({ask}), but output_dir {str(folder)!r} holds no complete checkpoint ({why})."
            )
    else:
        checkpoint = os.fspath(requested)
        if not Path(checkpoint).is_dir():
            raise InputError(f"resume_from_checkpoint {checkpoint!r} is not a checkpoint folder (it does not exist).")
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            earlier = last_complete_checkpoint(Path(checkpoint).parent)
            hint = f"; the newest complete one is {earlier}" if earlier else ""
            raise InputError(f"resume_from_checkpoint {checkpoint!r} cannot be resumed from: {problem}{hint}.")
    saved = read_run_settings(checkpoint)
    _announce(checkpoint, True, saved, settings_differences(saved, settings))
    return checkpoint


def _announce(checkpoint: str, asked: bool, saved: dict | None, differences: list[str] = ()) -> None:
    key = str(Path(checkpoint).resolve())
    if key in _announced:
        return
    _announced.add(key)
    where = f"Resuming from checkpoint {checkpoint} (step {_step_of(checkpoint)})"
    if differences:
        logger.warning(
            "%s as asked, although these settings differ from the checkpoint's: %s. The model, optimizer, schedule "
            "and step come from the checkpoint; the rest follows the new settings.",
            where,
            "; ".join(differences),
        )
        return
    same = "same model and settings" if saved is not None else "it records no run settings to compare with"
    if asked:
        logger.warning("%s, as asked (%s).", where, same)
    else:
        logger.warning("%s: output_dir holds this run (%s). For a new run, choose another output_dir.", where, same)


def _step_of(checkpoint: str) -> str:
    match = _CHECKPOINT_RE.match(Path(checkpoint).name)
    return match.group(1) if match else "?"


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
