"""Checks that run before a training or sampling run does any work or writes anything.

Shared by the CLIs and the Python API (`S2LTrainer.__init__`, `CoDistillTrainer.__init__`): every check raises one
`InputError` whose message names the option, the bad value and the fix. The CLIs print that message without a
traceback (`s2l_trl.cli.errors`); the Python API raises it.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input found before a run started: the message names the option, the bad value and the fix."""


class MissingPathError(InputError, FileNotFoundError):
    """A path the run needs does not exist (an `InputError` that `except FileNotFoundError` also catches)."""


class MissingPackageError(InputError, ImportError):
    """A package the run asks for is not installed (an `InputError` that `except ImportError` also catches)."""


class DiskFullError(OSError):
    """A write failed because its disk is full (`errno.ENOSPC`); the message names the folder and the free space."""


# ---------------------------------------------------------------------- model paths
_HUB_ID = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?")


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub id (``name`` or ``org/name``).

    True when it exists; starts with ``/``, ``.``, ``-`` or ``~``; ends with a separator, ``.`` or ``-``; is no
    valid Hub id (more than one ``/``, characters other than letters, digits, ``-``, ``_``, ``.``); or is
    ``org/name`` whose ``org`` is an existing local folder (``outputs/run`` when ``outputs/`` exists).
    """
    if os.path.exists(name) or name in (".", ".."):
        return True
    # A Hub id neither starts nor ends with "." or "-" (huggingface_hub's rule): `.tiny/explorer` is a path.
    if name.startswith(("/", ".", "-", "~")) or name.endswith(("/", os.sep, ".", "-")):
        return True
    if not _HUB_ID.fullmatch(name) or ".." in name:
        return True
    return "/" in name and os.path.isdir(name.split("/", 1)[0])


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off (`HF_HUB_OFFLINE=1`)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached (one request of at most `timeout` seconds, through the proxies the
    environment names), or `None` when it answers. `huggingface_hub` itself retries a failed connection for tens of
    seconds before it gives up; this says so at once."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{constants.ENDPOINT}: {type(exc).__name__}: {exc}"
    return None


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return any(isinstance(try_to_load_from_cache(name, f), str) for f in ("config.json", "tokenizer_config.json"))
    except HFValidationError:  # not a valid Hub id: not in the cache either
        return False


def check_model_path(name: Any, option: str = "model_path", hint: str = "") -> None:
    """Refuse a model that cannot load: a local path that does not exist or is a file, or a Hub id that is not in the
    local Hugging Face cache while the Hub is offline (`HF_HUB_OFFLINE=1`) or cannot be reached (one quick request,
    :func:`hub_unreachable`). Model objects pass. `hint` is appended to every message."""
    if not isinstance(name, (str, os.PathLike)):
        return
    name = os.fspath(name)
    fix = "expected a model folder (with config.json and the tokenizer) or a Hub id of the form 'org/name'"
    if not name.strip():
        raise InputError(f"{option} is empty; {fix}.{hint}")
    if looks_like_local_path(name):
        path = Path(os.path.expanduser(name))
        if not path.exists():
            raise MissingPathError(f"{option} {name!r} looks like a local path but does not exist; {fix}.{hint}")
        if not path.is_dir():
            raise InputError(f"{option} {name!r} is a file; {fix}.{hint}")
        return
    if _in_hub_cache(name):
        return
    if hub_offline():
        raise InputError(
            f"{option} {name!r} is neither a local folder nor a model in the Hugging Face cache, and the Hub is "
            f"offline (HF_HUB_OFFLINE=1); give the path of a model folder, or download the model first.{hint}"
        )
    reason = hub_unreachable()
    if reason is not None:
        raise InputError(
            f"{option} {name!r} is neither a local folder nor a model in the Hugging Face cache, and the Hub cannot "
            f"be reached ({reason}); give the path of a model folder, or download the model first (`hf download "
            f"{name}`).{hint}"
        )


# ---------------------------------------------------------------------- distributed engines
def check_deepspeed_installed(deepspeed: Any) -> None:
    """DeepSpeed asked for (the `deepspeed` option or `accelerate launch`'s ACCELERATE_USE_DEEPSPEED) but not
    installed: refused here, because TrainingArguments would otherwise fail inside transformers with `TypeError:
    object.__init__() takes exactly one argument`."""
    from_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")
    if not (deepspeed or from_env):
        return
    from accelerate.utils import is_deepspeed_available

    if is_deepspeed_available():
        return
    asked = f"deepspeed={deepspeed!r}" if deepspeed else "ACCELERATE_USE_DEEPSPEED=true (accelerate DeepSpeed config)"
    raise InputError(
        f"{asked} asks for DeepSpeed, which is not installed: `pip install deepspeed`, or launch without DeepSpeed "
        "(another accelerate config, or FSDP)."
    )


# ---------------------------------------------------------------------- output folder
def check_output_dir(path: str | os.PathLike, option: str = "output_dir") -> None:
    """Refuse an `output_dir` the run cannot write to: a file, a read-only folder, or one under a read-only parent."""
    out = Path(os.path.expanduser(os.fspath(path)))
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {str(path)!r} is a file; expected a folder for checkpoints and the final model.")
    existing = out
    while not existing.exists():  # the nearest ancestor that exists is where the folder will be created
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {str(path)!r} lies under the file {str(existing)!r}; expected a folder path.")
    if not _can_write_in(existing):
        where = "is" if existing == out else f"would be created in {str(existing)!r}, which is"
        raise InputError(
            f"{option} {str(path)!r} {where} not writable; choose a writable folder (checkpoints and the final model "
            "are written there)."
        )


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in `folder`: tried, since permission bits say nothing to root and nothing of a
    read-only file system."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".s2l-write-check-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def no_space_error(exc: BaseException, folder: str | os.PathLike) -> DiskFullError | None:
    """A clear `DiskFullError` (an `OSError(ENOSPC)`) for a write under `folder` that failed because its disk is
    full, else `None`.

    Python's writes say `OSError(ENOSPC)`; torch's C++ writer says `basic_ios::clear: iostream error` or `unexpected
    pos ...`, so any other write error on a disk with less than 64 MiB left is taken for a full disk too (the
    original message is kept in the new one).
    """
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    if not full and (free is None or free > 64 * 2**20):
        return None
    shown = "unknown" if free is None else f"{free / 2**20:.1f} MiB"
    return DiskFullError(
        errno.ENOSPC,
        f"No space left on device while writing to {str(folder)!r} (free: {shown}); free some space or set "
        f"output_dir on a larger disk (original error: {type(exc).__name__}: {str(exc)[:200]})",
    )


@contextlib.contextmanager
def explained_write_errors(folder: str | os.PathLike) -> Iterator[None]:
    """Re-raise a write error caused by a full disk under `folder` as `no_space_error` explains it."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        clear = no_space_error(exc, folder)
        if clear is None:
            raise
        raise clear from exc


# ---------------------------------------------------------------------- prompts and data
def _content_is_empty(content: Any) -> bool:
    if content is None:
        return True
    if isinstance(content, str):
        return not content.strip()
    if isinstance(content, list):  # multimodal parts: some part must carry text or an image
        return not any(
            (isinstance(p, Mapping) and (p.get("type") != "text" or str(p.get("text") or "").strip())) for p in content
        )
    return False


def check_prompt(prompt: Any, where: str, column: str) -> None:
    """A prompt must be a non-empty string, or a non-empty list of chat messages with `role` and non-empty
    `content`."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError(f"{where}: the prompt in column {column!r} is empty; expected the problem text.")
        return
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in prompt)
    ):
        empty = [m["role"] for m in prompt if _content_is_empty(m["content"])]
        if empty:
            raise InputError(
                f"{where}: the prompt in column {column!r} has a {empty[0]!r} message with empty content "
                f"({str(prompt)[:100]}); every message needs its text."
            )
        return
    raise InputError(
        f"{where}: the prompt in column {column!r} is {str(prompt)[:100]!r} ({type(prompt).__name__}); expected a "
        "non-empty string or a list of chat messages with 'role' and 'content'."
    )


def reads_argument(func: Callable, argument: str) -> bool:
    """Whether `func` (a reward function) takes `argument` (a data-set column) by name."""
    try:
        return argument in inspect.signature(func).parameters
    except (TypeError, ValueError):  # not introspectable (a model, a C callable): assume it does not
        return False


def check_train_dataset(dataset: Any, reward_funcs: Sequence[Any] = (), option: str = "train_dataset") -> None:
    """What the Python API gets as `train_dataset`: rows, a `prompt` column with usable prompts, and a `solution`
    column when a reward function takes `solution`. (The CLIs check the raw data set first, naming its columns.)"""
    if dataset is None or not hasattr(dataset, "__len__"):
        return  # an iterable data set is not checked up front
    if len(dataset) == 0:
        raise InputError(f"{option} has no rows; expected at least one training prompt.")
    columns = list(getattr(dataset, "column_names", None) or dataset[0].keys())
    if "prompt" not in columns:
        raise InputError(
            f"{option} has no 'prompt' column (columns: {columns}); GRPO trains on a 'prompt' column: rename the "
            "column holding the problems (e.g. `dataset.rename_column('question', 'prompt')`)."
        )
    needs = [getattr(f, "__name__", repr(f)) for f in reward_funcs if callable(f) and reads_argument(f, "solution")]
    if needs and "solution" not in columns:
        raise InputError(
            f"{option} has no 'solution' column (columns: {columns}), which the reward functions {needs} take; add "
            "the gold answers as a 'solution' column."
        )
    prompts = dataset["prompt"] if hasattr(dataset, "column_names") else [row["prompt"] for row in dataset]
    for i, prompt in enumerate(prompts):
        check_prompt(prompt, f"{option}, row {i}", "prompt")
    if needs:
        solutions = dataset["solution"] if hasattr(dataset, "column_names") else [row["solution"] for row in dataset]
        for i, solution in enumerate(solutions):
            if solution is None or (isinstance(solution, str) and not solution.strip()):
                raise InputError(
                    f"{option}, row {i}: the solution is {solution!r}; the reward functions {needs} need a gold "
                    "answer in every row."
                )


def check_prompt_lengths(
    lengths: Sequence[int],
    labels: Callable[[int], str],
    completion_tokens: int,
    limits: Iterable[tuple[str, int | None, str]],
) -> None:
    """Refuse prompts that do not fit a model's context together with the completion.

    Args:
        lengths: prompt lengths in tokens, one per training row.
        labels: row index -> how to name that row (its `prompt_id`, or its index).
        completion_tokens: the completion length the run asks for (`max_completion_length`).
        limits: `(which model, its context in tokens or None when unknown, the option that sets it)`.
    """
    if not lengths:
        return
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    for model, context, option in limits:
        if not isinstance(context, int) or lengths[longest] + completion_tokens <= context:
            continue
        too_long = sum(1 for n in lengths if n + completion_tokens > context)
        raise InputError(
            f"{too_long} training prompt(s) do not fit the {model}'s context of {context} tokens ({option}) with "
            f"max_completion_length={completion_tokens}: the longest, {labels(longest)}, has {lengths[longest]} "
            "tokens. Filter or shorten those prompts (e.g. `dataset.filter(...)`), lower max_completion_length, or "
            f"raise {option} if the model supports it."
        )


# ---------------------------------------------------------------------- schedules and explorer objects
def schedule_probe_steps(max_steps: int) -> list[int]:
    """Steps at which a user's schedule callable is tried before training: the first ones, and the quarters and end of
    the run when its length is known (`max_steps > 0`); never a step the run will not reach."""
    steps = {1, 2, 3}
    if max_steps > 0:
        steps |= {max(1, max_steps * q // 4) for q in (1, 2, 3, 4)}
        steps = {s for s in steps if s <= max_steps}
    return sorted(steps)


def check_alpha_fn(alpha_fn: Callable[[int], float], steps: Iterable[int], option: str = "mix_schedule") -> None:
    """Call a schedule at a few steps and refuse one that fails or leaves [0, 1] (it would fail at that step)."""
    for step in steps:
        try:
            alpha = float(alpha_fn(step))
        except Exception as exc:
            raise InputError(
                f"The {option} callable failed at step {step} ({type(exc).__name__}: {exc}); it must map every "
                "1-based optimizer step to an explorer fraction in [0, 1]."
            ) from exc
        if not 0.0 <= alpha <= 1.0:
            raise InputError(
                f"The {option} callable returned alpha={alpha!r} at step {step}; expected a value in [0, 1] "
                "(the share of each group the explorer fills)."
            )


def check_explorer_object(explorer: Any, option: str = "explorer") -> None:
    """An explorer object passed to a trainer must have a callable `generate(prompt_ids, n, inputs=None)`."""
    if explorer is None:
        return
    generate = getattr(explorer, "generate", None)
    if not callable(generate):
        raise InputError(
            f"{option}={type(explorer).__name__} has no callable `generate`; an explorer needs "
            "`generate(prompt_ids, n, inputs=None) -> ExplorerOutput` (see s2l_trl.explorers.Explorer)."
        )
    try:
        inspect.signature(generate).bind([[1]], 1, inputs=None)
    except TypeError as exc:
        raise InputError(
            f"{option}={type(explorer).__name__}.generate does not accept (prompt_ids, n, inputs=None) ({exc}); "
            "see s2l_trl.explorers.Explorer."
        ) from exc
    except ValueError:  # no signature to inspect (a C callable): take it on trust
        pass


# ---------------------------------------------------------------------- nothing left behind
class removing_created_folder:  # noqa: N801 (used as a context manager, like contextlib's)
    """On an error inside the block, remove `path` again if the block created it and left nothing in it but empty
    folders (a trainer whose `__init__` fails must not leave an empty `output_dir` behind)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(os.fspath(path))
        self.existed = self.path.exists()

    def __enter__(self) -> removing_created_folder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or self.existed or not self.path.is_dir():
            return
        for folder, _, files in sorted(os.walk(self.path), key=lambda entry: -len(entry[0])):
            if files:
                return
            try:
                os.rmdir(folder)
            except OSError:
                return


# ---------------------------------------------------------------------- a trainer's arguments
def check_trainer_inputs(
    model: Any,
    reward_funcs: Any,
    args: Any,
    train_dataset: Any,
    explorer: Any = None,
    mix_schedule: Callable[[int], float] | None = None,
) -> None:
    """What `S2LTrainer` can check before TRL builds anything or writes `output_dir`: the output folder, the model
    paths, an explorer object, the training data, and a schedule callable at the steps the run reaches."""
    check_output_dir(args.output_dir)
    check_model_path(model, "model")
    # Also for a server or offline explorer: its tokenizer decides whether explorer ids are used as learner ids, so
    # a tokenizer that cannot be loaded is refused here rather than assumed to match.
    if explorer is None and args.explorer_model:
        hint = (
            ""
            if args.explorer_mode in ("local", "vllm")
            else " (With a server or offline explorer it names the tokenizer the explorer's ids are checked against: "
            "without it they are used as learner ids unchecked.)"
        )
        check_model_path(args.explorer_model, "explorer_model", hint)
    check_explorer_object(explorer)
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    check_train_dataset(train_dataset, [f for f in funcs if callable(f)])
    if mix_schedule is not None:
        check_alpha_fn(mix_schedule, schedule_probe_steps(args.max_steps))


def check_prompts_fit(
    dataset: Any,
    tokenize: Callable[[list[Any]], list[list[int]]],
    limits: Iterable[tuple[str, int | None, str, int]],
) -> None:
    """Refuse training prompts that do not fit a model's context with the completion (the learner would train past
    its positions; a server explorer would fail the round with HTTP 400).

    Args:
        dataset: the training `datasets.Dataset` (`prompt`, optional `prompt_id`); other data sets (an
            `IterableDataset`, read as training goes) are not checked.
        tokenize: prompts -> prompt token ids, as the trainer builds them.
        limits: `(which model, its context or None, the option that sets it, completion tokens it generates)`.
    """
    if (
        dataset is None
        or not hasattr(dataset, "__len__")
        or not hasattr(dataset, "column_names")
        or "prompt" not in (dataset.column_names or ())
    ):
        return
    prompts = dataset["prompt"]
    lengths = [len(ids) for begin in range(0, len(prompts), 1024) for ids in tokenize(prompts[begin : begin + 1024])]
    ids = dataset["prompt_id"] if "prompt_id" in dataset.column_names else None

    def label(i: int) -> str:
        return f"row {i}" + (f" (prompt_id {ids[i]!r})" if ids is not None else "")

    for model, context, option, completion_tokens in limits:
        check_prompt_lengths(lengths, label, completion_tokens, [(model, context, option)])
