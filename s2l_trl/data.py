"""Training prompts: the data arguments shared by `s2l-train` and `s2l-sample`, loading by Hub id or local file,
validation before anything runs, mapping into TRL's conversational ``prompt`` + ``solution`` layout, and the prompt
token ids exactly as TRL's ``GRPOTrainer`` builds them.

`s2l-sample` (offline explorer rollouts) and `s2l-train` both go through :func:`load_train_dataset` and
:func:`prompt_token_ids`, so stored rollouts carry the ``prompt_id`` and the prompt token ids the trainer will use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jsonl import read_jsonl
from .preflight import InputError, MissingPathError, check_prompt

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class PromptDataArguments:
    r"""
    Which training prompts a run uses and how each data-set row becomes TRL's conversational ``prompt``. Shared, field
    for field, by `s2l-train` and `s2l-sample`, so offline explorer rollouts are sampled on exactly the prompts (and
    prompt ids) the trainer uses. In a recipe YAML these are top-level keys.

    Parameters:
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Training data set: a Hub id (e.g. `open-r1/DAPO-Math-17k-Processed`), a local JSONL/JSON/parquet/CSV file,
            or a folder written by `datasets.save_to_disk`. Required. `--dataset` is accepted as well.
        dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Configuration name of a Hub data set (the `name` argument of `datasets.load_dataset`, e.g. `all`).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split of the data set to train on. `--split` is accepted as well.
        dataset_prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column holding the prompt: a string (becomes a user turn) or a list of chat messages (used as it is).
            Dotted names reach into nested columns. `--prompt_column` is accepted as well.
        dataset_solution_column (`str`, *optional*, defaults to `"solution"`):
            Column holding the gold answer passed to reward functions as `solution`, e.g. `reward_model.ground_truth`
            for DAPO-Math-17k. Dotted names reach into nested columns. A row without it is refused when a reward
            function needs it. `--answer_column` is accepted as well.
        dataset_prompt_id_column (`str` or `None`, *optional*, defaults to `None`):
            Column identifying each problem (e.g. `extra_info.index`), stored as `prompt_id` with offline explorer
            rollouts and used to match them to training prompts. When unset, a `prompt_id` column is used if the
            data set has one.
        dataset_prompt_template (`str` or `None`, *optional*, defaults to `None`):
            `str.format` pattern with a `{prompt}` field applied to string prompts, e.g. `"{prompt}\nAnswer:"`.
        system_prompt (`str` or `None`, *optional*, defaults to `None`):
            System message put before string prompts (message-list prompts are kept as they are).
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training data set: a Hub id (e.g. `open-r1/DAPO-Math-17k-Processed`), a local "
            "JSONL/JSON/parquet/CSV file, or a folder written by `datasets.save_to_disk`. Required. `--dataset` is "
            "accepted as well.",
            "aliases": ["--dataset"],
        },
    )
    dataset_config: str | None = field(
        default=None,
        metadata={
            "help": "Configuration name of a Hub data set (the `name` argument of `datasets.load_dataset`, e.g. `all`)."
        },
    )
    dataset_train_split: str = field(
        default="train",
        metadata={"help": "Split of the data set to train on. `--split` is accepted as well.", "aliases": ["--split"]},
    )
    dataset_prompt_column: str = field(
        default="prompt",
        metadata={
            "help": "Column holding the prompt: a string (becomes a user turn) or a list of chat messages (used as it "
            "is). Dotted names reach into nested columns. `--prompt_column` is accepted as well.",
            "aliases": ["--prompt_column"],
        },
    )
    dataset_solution_column: str = field(
        default="solution",
        metadata={
            "help": "Column holding the gold answer passed to reward functions as `solution`, e.g. "
            "`reward_model.ground_truth` for DAPO-Math-17k. Dotted names reach into nested columns. A row without it "
            "is refused when a reward function needs it. `--answer_column` is accepted as well.",
            "aliases": ["--answer_column"],
        },
    )
    dataset_prompt_id_column: str | None = field(
        default=None,
        metadata={
            "help": "Column identifying each problem (e.g. `extra_info.index`), stored as `prompt_id` with offline "
            "explorer rollouts and used to match them to training prompts. When unset, a `prompt_id` column is used "
            "if the data set has one."
        },
    )
    dataset_prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "`str.format` pattern with a `{prompt}` field applied to string prompts, e.g. "
            '`"{prompt}\\nAnswer:"`.'
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System message put before string prompts (message-list prompts are kept as they are).",
        },
    )

    def __post_init__(self):
        if self.dataset_prompt_template is not None:
            try:
                formatted = self.dataset_prompt_template.format(prompt="\0")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"dataset_prompt_template {self.dataset_prompt_template!r} is not a `str.format` pattern with "
                    f"only a {{prompt}} field ({type(exc).__name__}: {exc}); write literal braces as '{{{{' and '}}}}'."
                ) from exc
            if "\0" not in formatted:
                raise ValueError(
                    f"dataset_prompt_template {self.dataset_prompt_template!r} has no {{prompt}} field; expected a "
                    "pattern such as '{prompt}\\nAnswer:'."
                )


def load_prompt_dataset(name: str, config: str | None = None, split: str = "train"):
    """A `datasets.Dataset` from a local JSONL/JSON/parquet/CSV file, a saved dataset directory, or a Hub id.

    A local JSONL file is read line by line, so a malformed line is an error naming the file and the line. A single
    file, or a folder holding one saved `Dataset`, is one split, `"train"`: another `split` is refused rather than
    ignored (it would train on the whole file); a saved `DatasetDict` must have the split asked for.
    """
    import datasets

    path = Path(name)
    if path.suffix in LOCAL_FORMATS:
        if not path.exists():
            raise MissingPathError(f"dataset file {name!r} does not exist.")
        _check_single_split(name, "file", split)
        if path.suffix == ".jsonl":  # read here so that a malformed line is an error naming file and line
            return datasets.Dataset.from_list(read_jsonl(path))
        return datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    if path.is_dir():
        if any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(path))
            if not isinstance(loaded, datasets.DatasetDict):
                _check_single_split(name, "folder holding one saved Dataset", split)
                return loaded
            if split not in loaded:
                raise InputError(
                    f"dataset_train_split {split!r} is not a split of {name!r}, which has the splits {sorted(loaded)}; "
                    "set dataset_train_split to one of them."
                )
            return loaded[split]
    try:  # a folder of data files, or a Hub id
        return datasets.load_dataset(str(path) if path.is_dir() else name, config, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:  # no such data set / config / split, no Hub
        raise InputError(
            f"dataset_name {name!r} (dataset_config {config!r}, dataset_train_split {split!r}) cannot be loaded: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _check_single_split(name: str, what: str, split: str) -> None:
    if split != "train":
        raise InputError(
            f"dataset_train_split {split!r} does not apply to {name!r}: a {what} is one split, 'train', so the run "
            "would train on all of it. Leave dataset_train_split at 'train', or give a data set with that split (a "
            "Hub id, or a folder saved by `DatasetDict.save_to_disk`)."
        )


def get_field(row: dict[str, Any], column: str) -> Any:
    """`row[column]`, where a dotted column (`reward_model.ground_truth`) reaches into nested dicts."""
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"column {column!r} not found in data-set row with keys {sorted(row.keys())}")
        value = value[part]
    return value


def _has_field(row: dict[str, Any], column: str) -> bool:
    try:
        get_field(row, column)
    except KeyError:
        return False
    return True


def to_conversational(
    row: dict[str, Any],
    prompt_column: str = "prompt",
    solution_column: str | None = "solution",
    prompt_id_column: str | None = None,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    keep_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """Map a raw row to `{"prompt": [messages], "solution": str, "prompt_id": str?, <keep_columns>}`.

    A string prompt becomes a user turn (formatted by `prompt_template`, a `str.format` pattern with `{prompt}`),
    preceded by `system_prompt` when given; a message-list prompt is kept as it is. `solution` is the gold answer as
    a string (`None` stays `None`: :func:`validate_prompt_rows` refuses it where a reward needs it); a
    `solution_column` of `None` leaves `solution` out.
    """
    prompt = get_field(row, prompt_column)
    if isinstance(prompt, str):
        text = prompt_template.format(prompt=prompt) if prompt_template else prompt
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt = messages + [{"role": "user", "content": text}]
    out: dict[str, Any] = {"prompt": prompt}
    if solution_column is not None:
        solution = get_field(row, solution_column)
        out["solution"] = None if solution is None else str(solution)
    if prompt_id_column:
        out["prompt_id"] = str(get_field(row, prompt_id_column))
    for column in keep_columns:
        out[column] = row.get(column)
    return out


def _describe(name: Any, split: str) -> str:
    return f"data set {str(name)!r} (split {split!r})"


def prompt_id_column_of(args: PromptDataArguments, column_names: Sequence[str]) -> str | None:
    """The column that gives each problem its `prompt_id`: `dataset_prompt_id_column`, else `prompt_id` if present."""
    return args.dataset_prompt_id_column or ("prompt_id" if "prompt_id" in column_names else None)


def validate_prompt_rows(
    rows, args: PromptDataArguments, needs_solution: bool = True, needed_by: str = "the reward functions"
) -> None:
    """Refuse a data set the run cannot train on, before anything is built or written.

    Checks that there is at least one row; that every row has a usable prompt in `dataset_prompt_column`; when
    ``needs_solution``, that every row has a non-empty gold answer in `dataset_solution_column`; and that every row
    has a `prompt_id` when an id column is in use, one id never naming two different prompts. Errors name the data
    set, the row, the bad value and what was expected.

    Args:
        rows: a `datasets.Dataset` or a list of dicts (the raw rows, before :func:`to_conversational`).
        args: the data arguments of the run.
        needs_solution: whether something (a reward function, the sampler's judge) reads `solution`.
        needed_by: who needs the solution, for the error message.
    """
    what = _describe(args.dataset_name if isinstance(args.dataset_name, str) else "<rows>", args.dataset_train_split)
    if len(rows) == 0:
        raise InputError(f"{what} has no rows; expected at least one training prompt.")
    column_names = list(getattr(rows, "column_names", None) or rows[0].keys())
    id_column = prompt_id_column_of(args, column_names)
    seen_ids: dict[str, tuple[int, Any]] = {}
    for i, row in enumerate(rows):
        where = f"{what}, row {i}"
        try:
            prompt = get_field(row, args.dataset_prompt_column)
        except KeyError:
            raise InputError(
                f"{where}: no prompt column {args.dataset_prompt_column!r} (dataset_prompt_column); the row has "
                f"columns {sorted(row)}."
            ) from None
        check_prompt(prompt, where, args.dataset_prompt_column)
        if needs_solution:
            try:
                solution = get_field(row, args.dataset_solution_column)
            except KeyError:
                raise InputError(
                    f"{where}: no solution column {args.dataset_solution_column!r} (dataset_solution_column), which "
                    f"{needed_by} need; the row has columns {sorted(row)}."
                ) from None
            if solution is None or (isinstance(solution, str) and not solution.strip()):
                raise InputError(
                    f"{where}: the solution in column {args.dataset_solution_column!r} is {solution!r}; {needed_by} "
                    "need a gold answer in every row."
                )
        if id_column is not None:
            try:
                pid = get_field(row, id_column)
            except KeyError:
                raise InputError(
                    f"{where}: no prompt id column {id_column!r} (dataset_prompt_id_column); the row has columns "
                    f"{sorted(row)}."
                ) from None
            if pid is None:
                raise InputError(f"{where}: the prompt id in column {id_column!r} is None; expected an id per row.")
            key = str(pid)
            if key in seen_ids and seen_ids[key][1] != prompt:
                raise InputError(
                    f"{where}: prompt id {key!r} (column {id_column!r}) already names a different prompt in row "
                    f"{seen_ids[key][0]}; expected one id per problem."
                )
            seen_ids.setdefault(key, (i, prompt))


def load_train_dataset(
    args: PromptDataArguments,
    *,
    needs_solution: bool = True,
    needed_by: str = "the reward functions",
    keep_columns: Sequence[str] = (),
    rows=None,
):
    """The training data set exactly as `s2l-train` feeds it to the trainer: loaded, validated, mapped.

    Rows go through :func:`validate_prompt_rows` (so bad data is refused before a trainer or an output folder
    exists), then :func:`to_conversational` with the columns of ``args``: columns ``prompt`` (chat messages),
    ``solution`` (when the data set has the solution column), ``prompt_id`` (see :func:`prompt_id_column_of`) and
    the ``keep_columns`` the data set has.

    Args:
        args: the data arguments (`dataset_name` is read unless ``rows`` is given).
        needs_solution: refuse rows without a gold answer (a reward function or the sampler's judge reads it).
        needed_by: who needs the solution, for error messages.
        keep_columns: raw columns copied through unchanged when the data set has them (e.g. `data_source`).
        rows: a ready `datasets.Dataset` or list of dicts to use instead of loading `dataset_name`.
    """
    import datasets

    if rows is None:
        if not args.dataset_name:
            raise InputError("dataset_name is required: a Hub id or a local JSONL/JSON/parquet/CSV file or folder.")
        raw = load_prompt_dataset(args.dataset_name, args.dataset_config, args.dataset_train_split)
    elif isinstance(rows, datasets.Dataset):
        raw = rows
    elif not len(rows):
        raw = datasets.Dataset.from_dict({})
    else:
        try:
            raw = datasets.Dataset.from_list([dict(r) for r in rows])
        except (TypeError, ValueError) as exc:  # pyarrow's ArrowInvalid / ArrowTypeError are ValueError / TypeError
            raise InputError(
                f"the rows do not form a data set: {exc}; expected one type per column in every row (as a file "
                "read by `datasets` needs too)."
            ) from exc
    validate_prompt_rows(raw, args, needs_solution=needs_solution, needed_by=needed_by)
    first = raw[0]
    return raw.map(
        to_conversational,
        remove_columns=raw.column_names,
        fn_kwargs={
            "prompt_column": args.dataset_prompt_column,
            "solution_column": args.dataset_solution_column
            if (needs_solution or _has_field(first, args.dataset_solution_column))
            else None,
            "prompt_id_column": prompt_id_column_of(args, raw.column_names),
            "prompt_template": args.dataset_prompt_template,
            "system_prompt": args.system_prompt,
            "keep_columns": [c for c in keep_columns if c in raw.column_names],
        },
    )


def parse_chat_template_kwargs(value: dict | str | None, name: str = "chat_template_kwargs") -> dict[str, Any]:
    """`chat_template_kwargs` given as a dict (YAML) or a JSON object string (command line), as a dict."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name} {value!r} is not valid JSON; expected an object such as '{{\"x\": 1}}'.") from exc
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be a mapping (JSON object), got {value!r}.")
    return dict(value)


def prompt_token_ids(
    tokenizer, prompts: Sequence[Any], chat_template_kwargs: Mapping[str, Any] | None = None
) -> list[list[int]]:
    """The prompt token ids TRL's `GRPOTrainer._tokenize_prompts` gives (text models, no tools, default template).

    Conversational prompts (judged on the first, as TRL does): ``apply_chat_template(conversation=prompts,
    tools=None, chat_template=None, add_generation_prompt=True, tokenize=True, return_dict=True,
    **chat_template_kwargs)["input_ids"]``; plain strings: ``tokenizer(text=prompts)["input_ids"]``. Explorer
    rollouts sampled on these ids continue exactly the prompt the learner sees.
    """
    from trl.data_utils import is_conversational

    prompts = list(prompts)
    if not prompts:
        return []
    if is_conversational({"prompt": prompts[0]}):
        tokenized = tokenizer.apply_chat_template(
            conversation=prompts,
            tools=None,
            chat_template=None,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **dict(chat_template_kwargs or {}),
        )
        return [list(ids) for ids in tokenized["input_ids"]]
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(
            f"A prompt must be a string or a list of chat messages, got {type(prompts[0]).__name__} "
            f"({str(prompts[0])[:80]!r})."
        )
    return [list(ids) for ids in tokenizer(text=prompts)["input_ids"]]
