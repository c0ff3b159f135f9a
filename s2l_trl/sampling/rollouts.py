"""`s2l-sample`: G explorer completions per training prompt, in the authors' offline rollout schema.

Each output line is one sample with the fields of :data:`s2l_trl.explorers.offline.ROLLOUT_FIELDS`::

    prompt_id, prompt, prompt_ids, response, response_ids, small_model_log_probs, reward, is_correct,
    data_source, ground_truth

The prompts are the training data set read and mapped by :func:`s2l_trl.data.load_train_dataset` with the same data
arguments as `s2l-train` (:class:`s2l_trl.data.PromptDataArguments`), and the explorer is sampled on
:func:`s2l_trl.data.prompt_token_ids` of them, TRL's own tokenization of the trainer's prompt (chat template,
``chat_template_kwargs``). So, by construction:

* ``prompt`` is the conversational prompt the trainer sees (after `dataset_prompt_template` / `system_prompt`);
* ``prompt_ids`` are the token ids the trainer uses as the prompt, and the completions continue exactly them;
* ``prompt_id`` is the row's id column (`dataset_prompt_id_column`, dotted names reach nested fields, e.g.
  ``extra_info.index``; else a ``prompt_id`` column), or a stable hash of the prompt text when there is none;
* ``ground_truth`` is the row's ``solution`` (`dataset_solution_column`); ``reward``/``is_correct`` come from the
  same math-verify judge as `s2l-eval` (the trainer re-scores anyway).

Rows repeating a ``prompt_id`` are sampled once (``dedupe``); with ``dedupe=False`` each repeat adds G more rollouts
to the pool of that ``prompt_id``.

Sharding: ``num_shards`` workers can each run ``shard_index`` = 0 .. N-1 (rows ``i::N``) into
``rollouts-<i>-of-<N>.jsonl``; the one that finishes last merges every shard into ``rollouts.jsonl``. With one
shard the output is ``rollouts.jsonl`` directly. Lines are appended and flushed per prompt; a re-run skips prompts
that already have all G samples.

Resuming is only ever done with the same settings: ``sample_config.json`` beside the rollouts records the model, the
sampling settings (``seed`` included), G, the data arguments, ``dedupe``, ``max_prompts`` and a fingerprint of the
data set's prompts (ids, prompts and solutions, in order). A re-run with any of them changed stops with one line
naming each difference (before vs now) and the fix (another ``output_dir``, or remove the files), instead of keeping
samples drawn with another seed or appending another data set's prompts. A larger ``max_prompts`` extends the file
(the prompts are a prefix of the same list); a smaller one is refused.
"""

from __future__ import annotations

import dataclasses
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
from ..data import PromptDataArguments, load_train_dataset, parse_chat_template_kwargs
from ..explorers.base import SamplingSettings
from ..explorers.offline import prompt_text_key
from ..jsonl import JsonlWriter, drop_torn_tail, read_jsonl, write_jsonl_atomic
from ..preflight import InputError, check_model_path, check_output_dir
from .engine import EngineArguments, SamplingEngine

logger = logging.getLogger(__name__)

# The authors' offline sampler: temperature 0.7, top-p 0.95.
DEFAULT_SAMPLING = SamplingSettings(temperature=0.7, top_p=0.95, top_k=None, max_tokens=4096)
MERGED_NAME = "rollouts.jsonl"
CONFIG_NAME = "sample_config.json"
_JUDGE = "s2l-sample's judge (the reward and is_correct of every rollout)"


def stable_prompt_id(prompt: Any) -> str:
    """A prompt id that is the same in every run: a hash of :func:`prompt_text_key`."""
    return hashlib.sha1(prompt_text_key(prompt).encode("utf-8")).hexdigest()[:16]


def _shard_path(output_dir: Path, shard_index: int, num_shards: int) -> Path:
    if num_shards == 1:
        return output_dir / MERGED_NAME
    return output_dir / f"rollouts-{shard_index:05d}-of-{num_shards:05d}.jsonl"


def _completed_samplings(path: Path, num_generations: int, occurrences: Counter) -> Counter:
    """How many times each prompt id was fully sampled (G lines each) in ``path``.

    A torn last line and a prompt's lines beyond its last full set of G are removed (a killed run); more lines than
    the prompt's occurrences allow mean the file was made with other settings.
    """
    if not path.exists():
        return Counter()
    drop_torn_tail(path)  # written by a killed process
    lines = read_jsonl(path)
    counts = Counter(str(row["prompt_id"]) for row in lines)
    for pid, count in counts.items():
        limit = num_generations * max(1, occurrences.get(pid, 1))
        if count > limit:
            raise InputError(
                f"{path}: prompt_id {pid!r} has {count} rollouts, more than num_generations={num_generations} "
                f"x {max(1, occurrences.get(pid, 1))} occurrence(s); it was made with other settings."
            )
    extra = {pid: count % num_generations for pid, count in counts.items() if count % num_generations}
    if extra:
        # Drop the partly written last set of each such prompt, which will be sampled again.
        kept = []
        for row in reversed(lines):
            pid = str(row["prompt_id"])
            if extra.get(pid, 0) > 0:
                extra[pid] -= 1
                continue
            kept.append(row)
        write_jsonl_atomic(path, reversed(kept))
        counts = Counter(str(row["prompt_id"]) for row in kept)
    return Counter({pid: count // num_generations for pid, count in counts.items()})


# What must be equal for a re-run to resume a folder's rollouts, with the option that sets each (for messages).
_SETTING_KEYS = {
    "model": "model_path",
    "dataset_fingerprint": "the data set (its prompt ids, prompts and solutions, in order)",
    "num_generations": "num_generations",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "max_tokens": "max_tokens",
    "seed": "seed",
    "dedupe": "dedupe",
    "num_shards": "num_shards",
    "data": "the data arguments",
    "chat_template_kwargs": "chat_template_kwargs",
}


def dataset_fingerprint(rows: Any) -> str:
    """A SHA-256 of the mapped training rows' ``prompt_id``, ``prompt`` and ``solution``, in order: two data sets
    with the same ids but edited prompts or answers, or another order, differ."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.get("prompt_id"), row["prompt"], row.get("solution")], sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def _shown(key: str, value: Any) -> str:
    return f"fingerprint {value[:12]}" if key == "dataset_fingerprint" and isinstance(value, str) else repr(value)


def _check_settings(output_dir: Path, settings: dict[str, Any], existing: list[Path]) -> None:
    """Resume only rollouts sampled with the same settings (see the module docstring); record them otherwise."""
    path = output_dir / CONFIG_NAME
    files = ", ".join(str(p) for p in existing)
    fix = f"Give another --output_dir, or remove {files or 'its rollout files'} (and {path}) to sample them again."
    if not path.exists() or not existing:  # no rollouts yet (or none kept): nothing to keep or mix, record these
        if existing:
            raise InputError(
                f"{output_dir} holds rollouts ({files}) but no {CONFIG_NAME}: the settings they were sampled with are "
                f"unknown, so they cannot be resumed safely. {fix}"
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2))
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}). {fix}") from None
    clashes = [
        f"{_SETTING_KEYS[k]}: {_shown(k, old[k])} (before) vs {_shown(k, settings.get(k))} (now)"
        for k in _SETTING_KEYS
        if k in old and old[k] != settings.get(k)
    ]
    before, now = old.get("max_prompts"), settings.get("max_prompts")
    if "max_prompts" in old and before is not None and (now is None or now > before):
        logger.info("%s: extending rollouts of the first %s prompts to %s.", output_dir, before, now or "all")
    elif "max_prompts" in old and before != now:
        clashes.append(f"max_prompts: {before!r} (before) vs {now!r} (now; the folder holds more prompts)")
    if clashes:
        raise InputError(
            f"{output_dir} holds rollouts sampled with other settings, which a re-run would keep or mix with new "
            f"ones: {'; '.join(clashes)}. {fix}"
        )
    unknown = [_SETTING_KEYS[k] for k in _SETTING_KEYS if k not in old]
    if unknown and existing:
        logger.warning(
            "%s was written before s2l-sample recorded %s: resuming without checking them.", path, ", ".join(unknown)
        )
    path.write_text(json.dumps({**old, **settings}, indent=2))


def check_max_prompts(max_prompts: int | None) -> None:
    """``max_prompts`` is a positive count or ``None`` (every prompt)."""
    if max_prompts is not None and (isinstance(max_prompts, bool) or max_prompts < 1):
        raise InputError(
            f"max_prompts must be a positive number of prompts, got {max_prompts!r}: leave it unset to sample every "
            "prompt of the data set."
        )


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
    dataset: Any = None,
    output_dir: str | Path = "rollouts",
    model_path: str | None = None,
    *,
    data_args: PromptDataArguments | None = None,
    chat_template_kwargs: dict[str, Any] | str | None = None,
    engine: SamplingEngine | None = None,
    engine_args: EngineArguments | None = None,
    backend: str = "local",
    server_base_url: str | None = None,
    num_generations: int = 16,
    sampling: SamplingSettings | None = None,
    data_source: str | None = None,
    max_prompts: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    batch_prompts: int = 8,
    dedupe: bool = True,
) -> Path:
    """Sample ``num_generations`` explorer completions per training prompt into the offline rollout schema.

    Args:
        dataset: rows, a `datasets.Dataset`, or a local file/folder or Hub id (replaces ``data_args.dataset_name``);
            ``None`` reads ``data_args.dataset_name``.
        output_dir: folder of the shard files and ``rollouts.jsonl``.
        model_path: explorer model id or path (needed unless ``engine`` is given).
        data_args: the data arguments of the training run (columns, id column, template, system prompt); defaults
            to :class:`~s2l_trl.data.PromptDataArguments`'s.
        chat_template_kwargs: the training run's `chat_template_kwargs` (a dict or a JSON object string).
        engine: a ready :class:`SamplingEngine` (tests, notebooks); otherwise one is built from ``engine_args``.
        engine_args: backend settings; default ``EngineArguments(backend=backend, server_base_url=...)``.
        backend / server_base_url: shortcuts for ``engine_args``.
        num_generations: G, samples per prompt (default 16).
        sampling: sampling settings (default temperature 0.7, top-p 0.95, 4096 new tokens).
        data_source: ``data_source`` written when a row has none (default: the data set's name).
        max_prompts: use only the first N (deduplicated) prompts.
        num_shards / shard_index: this worker samples prompts ``shard_index::num_shards``.
        batch_prompts: prompts per generation request.
        dedupe: sample a repeated ``prompt_id`` once; ``False`` adds G rollouts per repeat.

    Returns:
        The path to pass as ``explorer_rollouts``: ``rollouts.jsonl`` once every shard is done, else this
        worker's shard file.
    """
    if not 0 <= shard_index < num_shards:
        raise InputError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}.")
    if num_generations < 1:
        raise InputError(f"num_generations must be >= 1, got {num_generations}.")
    check_max_prompts(max_prompts)
    if engine is None:
        check_model_path(model_path, "model_path")
    check_output_dir(output_dir)
    sampling = sampling or SamplingSettings(**vars(DEFAULT_SAMPLING))
    chat_template_kwargs = parse_chat_template_kwargs(chat_template_kwargs)
    output_dir = Path(output_dir)
    data_args = data_args or PromptDataArguments()
    rows = None
    if isinstance(dataset, (str, os.PathLike)):
        data_args = dataclasses.replace(data_args, dataset_name=str(dataset))
    elif dataset is not None:
        rows = dataset
    source_name = data_args.dataset_name if rows is None else "dataset"
    # The trainer's own loading and mapping (validated: bad rows are refused before anything is written).
    prompts = load_train_dataset(
        data_args, needs_solution=True, needed_by=_JUDGE, keep_columns=("data_source",), rows=rows
    )
    items, seen = [], set()
    for i, row in enumerate(prompts):
        pid = row["prompt_id"] if row.get("prompt_id") is not None else stable_prompt_id(row["prompt"])
        if dedupe and pid in seen:
            continue
        seen.add(pid)
        items.append({"prompt_id": pid, "row": row, "where": f"{source_name} (row {i})"})
    if max_prompts is not None:
        items = items[:max_prompts]
    items = items[shard_index::num_shards]

    model_name = model_path or getattr(getattr(engine, "explorer", None), "model", None)
    path = _shard_path(output_dir, shard_index, num_shards)
    # Rollout files (a started shard's may still be empty) and finished-shard markers: what a re-run would build on.
    existing = []
    if output_dir.is_dir():
        existing = sorted([*output_dir.glob("rollouts*.jsonl"), *output_dir.glob("rollouts*.done")])
    _check_settings(
        output_dir,
        {
            "model": str(model_name),
            "dataset": str(source_name),  # recorded, not compared: the same data may move
            "dataset_fingerprint": dataset_fingerprint(prompts),
            "num_generations": num_generations,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_tokens": sampling.max_tokens,
            "seed": sampling.seed,
            "dedupe": dedupe,
            "max_prompts": max_prompts,
            "num_shards": num_shards,
            "data": {k: v for k, v in dataclasses.asdict(data_args).items() if k != "dataset_name"},
            "chat_template_kwargs": chat_template_kwargs,
        },
        existing,
    )
    done = _completed_samplings(path, num_generations, Counter(item["prompt_id"] for item in items))
    todo = []
    for item in items:
        if done[item["prompt_id"]] > 0:
            done[item["prompt_id"]] -= 1
        else:
            todo.append(item)
    if todo:
        own_engine = engine is None
        if own_engine:
            if model_path is None:
                raise InputError("sample_rollouts needs model_path (or a ready engine).")
            engine_args = engine_args or EngineArguments(backend=backend, server_base_url=server_base_url)
            engine = engine_args.build_engine(model_path, sampling, chat_template_kwargs)
        elif chat_template_kwargs and engine.chat_template_kwargs != chat_template_kwargs:
            raise InputError(
                f"chat_template_kwargs {chat_template_kwargs!r} differ from the ready engine's "
                f"{engine.chat_template_kwargs!r}; build the engine with them."
            )
        try:
            prompt_ids = engine.encode_batch([item["row"]["prompt"] for item in todo])
            with (
                JsonlWriter(path) as out,
                tqdm(total=len(items), initial=len(items) - len(todo), desc="sampling rollouts", unit="prompt") as bar,
            ):
                stream = engine.stream(todo, prompt_ids, num_generations, batch_prompts, bar)
                for (item, completions), ids in zip(stream, prompt_ids):
                    # One prompt's G lines at a time: a killed run keeps every finished prompt.
                    out.write(*_rollout_records(item, ids, completions, data_source or str(source_name)))
        finally:
            if own_engine:
                engine.close()
    if not path.exists():  # a shard with no prompts of its own: an empty file, so the merge (and the path) exist
        path.touch()
    path.with_suffix(".done").write_text(json.dumps({"prompts": len(items), "rows": len(items) * num_generations}))
    merged = merge_shards(output_dir, num_shards)
    return merged or path


def _rollout_records(
    item: dict[str, Any], prompt_ids: list[int], completions, data_source: str
) -> list[dict[str, Any]]:
    row = item["row"]
    gold = row["solution"]
    judge = MathJudge(gold)
    records = []
    for c in completions:
        correct = judge.judge(c.text).correct
        records.append(
            {
                "prompt_id": item["prompt_id"],
                "prompt": row["prompt"],
                "prompt_ids": list(prompt_ids),
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
        )
    return records
