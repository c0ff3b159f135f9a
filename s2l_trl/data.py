"""Loading training prompts by Hub id or local file, into TRL's conversational `prompt` + `solution` layout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .jsonl import read_jsonl

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# DAPO-Math-17k (the paper's training set): `prompt` is already a chat message list holding the full instruction,
# the gold answer sits in `reward_model.ground_truth`, and `extra_info.index` identifies the problem.
DAPO_MATH_17K = "BytedTsinghua-SIA/DAPO-Math-17k"


def load_prompt_dataset(name: str, config: str | None = None, split: str = "train"):
    """A `datasets.Dataset` from a local JSONL/JSON/parquet/CSV file, a saved dataset directory, or a Hub id.

    A local JSONL file is read line by line, so a malformed line is an error naming the file and the line.
    """
    import datasets

    path = Path(name)
    if path.suffix == ".jsonl":  # read here so that a malformed line is an error naming file and line
        if not path.exists():
            raise FileNotFoundError(f"dataset file {name!r} does not exist.")
        return datasets.Dataset.from_list(read_jsonl(path))
    if path.suffix in LOCAL_FORMATS:
        if not path.exists():
            raise FileNotFoundError(f"dataset file {name!r} does not exist.")
        return datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(str(path), config, split=split)
    return datasets.load_dataset(name, config, split=split)  # Hub id


def get_field(row: dict[str, Any], column: str) -> Any:
    """`row[column]`, where a dotted column (`reward_model.ground_truth`) reaches into nested dicts."""
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"column {column!r} not found in data-set row with keys {sorted(row.keys())}")
        value = value[part]
    return value


def to_conversational(
    row: dict[str, Any],
    prompt_column: str = "prompt",
    solution_column: str = "solution",
    prompt_id_column: str | None = None,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """Map a raw row to `{"prompt": [messages], "solution": str, "prompt_id": str?}`.

    A string prompt becomes a user turn (formatted by `prompt_template`, a `str.format` pattern with `{prompt}`),
    preceded by `system_prompt` when given; a message-list prompt is kept as it is.
    """
    prompt = get_field(row, prompt_column)
    if isinstance(prompt, str):
        text = prompt_template.format(prompt=prompt) if prompt_template else prompt
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt = messages + [{"role": "user", "content": text}]
    out = {"prompt": prompt, "solution": str(get_field(row, solution_column))}
    if prompt_id_column:
        out["prompt_id"] = str(get_field(row, prompt_id_column))
    return out
