"""`s2l-sample`: G explorer completions per training prompt, in the authors' offline rollout schema.

Each output line is one sample with the fields of :data:`s2l_trl.explorers.offline.ROLLOUT_FIELDS`::

    prompt_id, prompt, prompt_ids, response, response_ids, small_model_log_probs, reward, is_correct,
    data_source, ground_truth

``prompt`` is the data set's prompt value unchanged (a string or a list of chat messages) and ``prompt_id`` its
``prompt_id`` column when it has one, else a stable hash of the prompt text, so the trainer's
:class:`~s2l_trl.explorers.OfflineExplorer` (``explorer_rollouts``) finds the rows of every training prompt.
``reward``/``is_correct`` come from the same math-verify judge as `s2l-eval` (the trainer re-scores anyway).

Default data set: ``BytedTsinghua-SIA/DAPO-Math-17k`` (split ``train``). Its ``prompt`` is a one-message
conversation ``[{"role": "user", "content": "Solve the following math problem step by step. The last line of your
response should be of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\\n\\n
<problem>\\n\\nRemember to put your answer on its own line after \\"Answer:\\"."}]``, the gold answer sits in
``reward_model["ground_truth"]``, and ``data_source`` is ``"math_dapo"``. The Hub copy repeats each of its ~17.9k
problems many times; rows whose prompt text was already seen are skipped (``dedupe``) when the data set has no
``prompt_id`` column, since the trainer matches such rows by prompt text anyway.

Sharding: ``num_shards`` workers can each run ``shard_index`` = 0 .. N-1 (rows ``i::N``) into
``rollouts-<i>-of-<N>.jsonl``; the one that finishes last merges every shard into ``rollouts.jsonl``. With one
shard the output is ``rollouts.jsonl`` directly. Lines are appended and flushed per prompt; a re-run skips prompts
that already have all G samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..answers import MathJudge
from ..data import get_field, load_prompt_dataset
from ..explorers.base import SamplingSettings
from ..explorers.factory import build_explorer
from ..explorers.offline import prompt_text_key
from ..jsonl import drop_torn_tail, read_jsonl
from .engine import SamplingEngine

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "BytedTsinghua-SIA/DAPO-Math-17k"
# The authors' offline sampler: temperature 0.7, top-p 0.95.
DEFAULT_SAMPLING = SamplingSettings(temperature=0.7, top_p=0.95, top_k=None, max_tokens=4096)
_ANSWER_COLUMNS = ("solution", "answer", "ground_truth", "reward_model.ground_truth")
MERGED_NAME = "rollouts.jsonl"


def load_prompts(dataset: Any, split: str = "train", config: str | None = None) -> list[dict[str, Any]]:
    """Rows of a training data set given as rows, a `datasets.Dataset`, a local file/folder or a Hub id.

    Paths and Hub ids are read by :func:`s2l_trl.data.load_prompt_dataset`, the trainer's loader (a malformed JSONL
    line is an error naming file and line).
    """
    if isinstance(dataset, list):
        return [dict(r) for r in dataset]
    if not isinstance(dataset, (str, os.PathLike)):  # a datasets.Dataset
        return [dict(r) for r in dataset]
    return [dict(r) for r in load_prompt_dataset(str(dataset), config, split)]


def _ground_truth(row: dict[str, Any], answer_column: str | None, where: str) -> str:
    columns = (answer_column,) if answer_column else _ANSWER_COLUMNS
    for column in columns:
        try:
            value = get_field(row, column)
        except KeyError:
            continue
        if isinstance(value, list) and value:
            value = value[0]
        return str(value)
    raise ValueError(
        f"{where}: no answer column; looked for {list(columns)} in {sorted(row)} (set answer_column / --answer_column)."
    )


def stable_prompt_id(prompt: Any) -> str:
    """A prompt id that is the same in every run: a hash of :func:`prompt_text_key`."""
    return hashlib.sha1(prompt_text_key(prompt).encode("utf-8")).hexdigest()[:16]


def _shard_path(output_dir: Path, shard_index: int, num_shards: int) -> Path:
    if num_shards == 1:
        return output_dir / MERGED_NAME
    return output_dir / f"rollouts-{shard_index:05d}-of-{num_shards:05d}.jsonl"


def _completed_prompts(path: Path, num_generations: int) -> set[str]:
    """Prompt ids with all G samples in ``path``; a torn last line and incomplete prompts are removed."""
    if not path.exists():
        return set()
    drop_torn_tail(path)  # written by a killed process
    lines = read_jsonl(path)
    counts = Counter(str(row["prompt_id"]) for row in lines)
    too_many = [pid for pid, c in counts.items() if c > num_generations]
    if too_many:
        raise ValueError(
            f"{path}: prompt_id {too_many[0]!r} has {counts[too_many[0]]} rollouts, more than "
            f"num_generations={num_generations}; it was made with other settings."
        )
    complete = {pid for pid, c in counts.items() if c == num_generations}
    kept = [row for row in lines if str(row["prompt_id"]) in complete]
    if len(kept) != len(lines):
        # Rewrite without the partly written prompt, which will be sampled again.
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in kept:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return complete


def _check_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    path = output_dir / "sample_config.json"
    if path.exists():
        old = json.loads(path.read_text())
        keys = ("model", "num_generations", "temperature", "top_p", "top_k", "max_tokens", "num_shards")
        clashes = [
            f"{k}: {old.get(k)!r} (before) vs {settings.get(k)!r} (now)" for k in keys if old.get(k) != settings.get(k)
        ]
        if clashes:
            raise ValueError(
                f"{output_dir} holds rollouts sampled with other settings: {'; '.join(clashes)}. "
                "Use another output directory."
            )
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2))


def merge_shards(output_dir: str | Path, num_shards: int) -> Path | None:
    """Concatenate finished shards into ``rollouts.jsonl``; ``None`` while some shard is still unfinished."""
    output_dir = Path(output_dir)
    shards = [_shard_path(output_dir, i, num_shards) for i in range(num_shards)]
    if num_shards == 1:
        return shards[0] if shards[0].with_suffix(".done").exists() else None
    if not all(p.with_suffix(".done").exists() for p in shards):
        return None
    merged = output_dir / MERGED_NAME
    tmp = merged.with_suffix(".jsonl.tmp")
    with tmp.open("wb") as out:
        for shard in shards:
            out.write(shard.read_bytes())
    os.replace(tmp, merged)
    return merged


def sample_rollouts(
    dataset: Any = DEFAULT_DATASET,
    output_dir: str | Path = "rollouts",
    model_path: str | None = None,
    *,
    engine: SamplingEngine | None = None,
    backend: str = "local",
    tokenizer_path: str | None = None,
    num_generations: int = 16,
    sampling: SamplingSettings | None = None,
    server_base_url: str | None = None,
    tensor_parallel_size: int = 1,
    vllm_kwargs: dict[str, Any] | None = None,
    split: str = "train",
    dataset_config: str | None = None,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    data_source: str | None = None,
    max_prompts: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    batch_prompts: int = 8,
    batch_size: int = 64,
    dedupe: bool = True,
) -> Path:
    """Sample ``num_generations`` explorer completions per prompt into the offline rollout schema.

    Args:
        dataset: rows, a `datasets.Dataset`, a local JSONL/parquet/`save_to_disk` path, or a Hub id
            (default DAPO-Math-17k).
        output_dir: folder of the shard files and ``rollouts.jsonl``.
        model_path: explorer model id or path (needed unless ``engine`` is given).
        engine: a ready :class:`SamplingEngine` (tests, notebooks); otherwise one is built for ``backend``.
        backend: ``"vllm"``, ``"server"`` or ``"local"`` (see :func:`build_explorer`).
        tokenizer_path: explorer tokenizer (default ``model_path``).
        num_generations: G, samples per prompt (default 16).
        sampling: sampling settings (default temperature 0.7, top-p 0.95, 4096 new tokens).
        server_base_url / tensor_parallel_size / vllm_kwargs: backend settings.
        split / dataset_config: Hub split and config.
        prompt_column: column holding the prompt (string or chat messages).
        answer_column: column (dotted path for nested fields) of the gold answer; default: the first of
            ``solution``, ``answer``, ``ground_truth``, ``reward_model.ground_truth`` that exists.
        data_source: ``data_source`` written when a row has none (default: the data set's name).
        max_prompts: use only the first N (deduplicated) prompts.
        num_shards / shard_index: this worker samples rows ``shard_index::num_shards``.
        batch_prompts: prompts per generation request.
        batch_size: rows per ``generate`` call (transformers backend).
        dedupe: skip repeated prompts when the data set has no ``prompt_id`` column.

    Returns:
        The path to pass as ``explorer_rollouts``: ``rollouts.jsonl`` once every shard is done, else this
        worker's shard file.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}.")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}.")
    sampling = sampling or SamplingSettings(**vars(DEFAULT_SAMPLING))
    output_dir = Path(output_dir)
    source_name = dataset if isinstance(dataset, (str, os.PathLike)) else "dataset"
    rows = load_prompts(dataset, split=split, config=dataset_config)
    if not rows:
        raise ValueError(f"{source_name}: the data set has no rows.")
    if prompt_column not in rows[0]:
        raise ValueError(f"{source_name}: no prompt column {prompt_column!r}; columns are {sorted(rows[0])}.")
    has_ids = "prompt_id" in rows[0]
    items, seen = [], set()
    for i, row in enumerate(rows):
        prompt = row[prompt_column]
        pid = str(row["prompt_id"]) if has_ids else stable_prompt_id(prompt)
        if not has_ids and dedupe:
            if pid in seen:
                continue
            seen.add(pid)
        items.append({"prompt_id": pid, "prompt": prompt, "row": row, "where": f"{source_name} (row {i})"})
    if max_prompts is not None:
        items = items[:max_prompts]
    items = items[shard_index::num_shards]

    model_name = model_path or getattr(getattr(engine, "explorer", None), "model", None)
    _check_settings(
        output_dir,
        {
            "model": str(model_name),
            "dataset": str(source_name),
            "num_generations": num_generations,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_tokens": sampling.max_tokens,
            "num_shards": num_shards,
        },
    )
    path = _shard_path(output_dir, shard_index, num_shards)
    done = _completed_prompts(path, num_generations)
    todo = [item for item in items if item["prompt_id"] not in done]
    if todo:
        own_engine = engine is None
        if own_engine:
            if model_path is None:
                raise ValueError("sample_rollouts needs model_path (or a ready engine).")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
            explorer = build_explorer(
                backend,
                model=model_path,
                sampling=sampling,
                tokenizer=tokenizer,
                server_base_url=server_base_url,
                tensor_parallel_size=tensor_parallel_size,
                batch_size=batch_size,
                vllm_kwargs=vllm_kwargs,
            )
            engine = SamplingEngine(explorer, tokenizer)
        try:
            prompt_ids = [engine.encode(item["prompt"]) for item in todo]
            ids_of = {item["prompt_id"]: ids for item, ids in zip(todo, prompt_ids)}
            with (
                path.open("a", encoding="utf-8") as f,
                tqdm(total=len(items), initial=len(items) - len(todo), desc="sampling rollouts", unit="prompt") as bar,
            ):
                for item, completions in engine.stream(todo, prompt_ids, num_generations, batch_prompts, bar):
                    f.write(
                        _rollout_lines(
                            item, ids_of[item["prompt_id"]], completions, answer_column, data_source or str(source_name)
                        )
                    )
                    f.flush()  # one prompt's G lines at a time: a killed run keeps every finished prompt
        finally:
            if own_engine:
                engine.close()
    path.with_suffix(".done").write_text(json.dumps({"prompts": len(items), "rows": len(items) * num_generations}))
    merged = merge_shards(output_dir, num_shards)
    return merged or path


def _rollout_lines(
    item: dict[str, Any], prompt_ids: list[int], completions, answer_column: str | None, data_source: str
) -> str:
    row = item["row"]
    gold = _ground_truth(row, answer_column, item["where"])
    judge = MathJudge(gold)
    lines = []
    for c in completions:
        correct = judge.judge(c.text).correct
        record = {
            "prompt_id": item["prompt_id"],
            "prompt": item["prompt"],
            "prompt_ids": prompt_ids,
            "response": c.text,
            "response_ids": c.token_ids,
            # JSON has no NaN: an unknown log-prob is null (read back as NaN by the offline explorer).
            "small_model_log_probs": None
            if c.logprobs is None
            else [None if (lp is None or math.isnan(lp)) else lp for lp in c.logprobs],
            "reward": float(correct),
            "is_correct": correct,
            "data_source": row.get("data_source") or data_source,
            "ground_truth": gold,
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)
