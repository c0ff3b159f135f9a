"""`s2l-sample`: offline explorer rollouts for S2L-PO's `explorer_rollouts`, in the authors' JSONL schema.

The data arguments are `s2l-train`'s own (`dataset_name`, `dataset_prompt_column`, `dataset_solution_column`,
`dataset_prompt_id_column`, `dataset_prompt_template`, `system_prompt`, ...), and `chat_template_kwargs` is the
training run's: give the same values as the recipe (recipes/launch/s2l_po_offline.sh passes them for you) and the
explorer is sampled on exactly the prompt token ids the trainer uses, each row carrying the problem's `prompt_id`.

    s2l-sample --model_path Qwen/Qwen3-1.7B-Base --output_dir data/rollouts/qwen3-1.7b \\
        --dataset_name open-r1/DAPO-Math-17k-Processed --dataset_config all \\
        --dataset_prompt_id_column extra_info.index --num_generations 16
    s2l-sample --config sample.yaml                                   # the same fields as YAML keys
    s2l-sample ... --backend server --server_base_url http://127.0.0.1:8000 --num_shards 4 --shard_index 0

Re-running the same command resumes: prompts with all G samples are skipped. A re-run with other settings (model,
seed, sampling, G, data set or data arguments) stops with one line naming what differs (recorded in
`sample_config.json` beside the rollouts): give another --output_dir, or remove the old files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

from trl import TrlParser

from ..data import PromptDataArguments, parse_chat_template_kwargs
from ..explorers.base import SamplingSettings
from ..sampling.engine import EngineArguments
from ..sampling.rollouts import DEFAULT_SAMPLING, check_max_prompts, sample_rollouts
from .errors import run_cli


@dataclass(kw_only=True)
class SampleArguments(EngineArguments):
    r"""
    Settings of one `s2l-sample` run (on top of the backend settings of [`~s2l_trl.sampling.engine.EngineArguments`]
    and the data arguments [`~s2l_trl.data.PromptDataArguments`] it shares with `s2l-train`).

    Parameters:
        model_path (`str`):
            Explorer model id or path.
        output_dir (`str`):
            Folder of `rollouts.jsonl` (and of the shard files while sharded sampling runs).
        chat_template_kwargs (`dict` or `str` or `None`, *optional*, defaults to `None`):
            The training run's `chat_template_kwargs` (a JSON object on the command line), applied with the chat
            template when the prompts are tokenized, as the trainer does.
        num_generations (`int`, *optional*, defaults to `16`):
            G, samples per prompt.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature (the authors' explorer setting).
        top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus sampling threshold (the authors' explorer setting).
        top_k (`int` or `None`, *optional*, defaults to `None`):
            Top-k sampling cut-off; `None` samples from the whole vocabulary.
        max_tokens (`int`, *optional*, defaults to `4096`):
            Completion length cap; give the recipe's `max_completion_length`.
        seed (`int`, *optional*, defaults to `0`):
            Sampling seed.
        data_source (`str` or `None`, *optional*, defaults to `None`):
            `data_source` written for rows that have none (default: the data set's name).
        max_prompts (`int` or `None`, *optional*, defaults to `None`):
            Sample only the first N (deduplicated) prompts.
        dedupe (`bool`, *optional*, defaults to `True`):
            Sample a repeated `prompt_id` once; `--no_dedupe` adds G rollouts to its pool per repeat.
        num_shards (`int`, *optional*, defaults to `1`):
            Number of workers sharing the prompts (each runs with its own `shard_index`).
        shard_index (`int`, *optional*, defaults to `0`):
            This worker's share: prompts `shard_index::num_shards`.
        batch_prompts (`int`, *optional*, defaults to `8`):
            Prompts per generation request (outputs are still flushed per prompt).
    """

    model_path: str = field(metadata={"help": "Explorer model id or path."})
    output_dir: str = field(
        metadata={"help": "Folder of `rollouts.jsonl` (and of the shard files while sharded sampling runs)."}
    )
    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "The training run's `chat_template_kwargs` (a JSON object on the command line), applied with the "
            "chat template when the prompts are tokenized, as the trainer does."
        },
    )
    num_generations: int = field(default=16, metadata={"help": "G, samples per prompt."})
    temperature: float = field(
        default=DEFAULT_SAMPLING.temperature, metadata={"help": "Sampling temperature (the authors' explorer setting)."}
    )
    top_p: float = field(
        default=DEFAULT_SAMPLING.top_p,
        metadata={"help": "Nucleus sampling threshold (the authors' explorer setting)."},
    )
    top_k: int | None = field(
        default=None, metadata={"help": "Top-k sampling cut-off; `None` samples from the whole vocabulary."}
    )
    max_tokens: int = field(
        default=DEFAULT_SAMPLING.max_tokens,
        metadata={"help": "Completion length cap; give the recipe's `max_completion_length`."},
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    data_source: str | None = field(
        default=None,
        metadata={"help": "`data_source` written for rows that have none (default: the data set's name)."},
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Sample only the first N (deduplicated) prompts."})
    dedupe: bool = field(
        default=True,
        metadata={"help": "Sample a repeated `prompt_id` once; `--no_dedupe` adds G rollouts to its pool per repeat."},
    )
    num_shards: int = field(
        default=1, metadata={"help": "Number of workers sharing the prompts (each runs with its own `shard_index`)."}
    )
    shard_index: int = field(default=0, metadata={"help": "This worker's share: prompts `shard_index::num_shards`."})
    batch_prompts: int = field(
        default=8, metadata={"help": "Prompts per generation request (outputs are still flushed per prompt)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.chat_template_kwargs = parse_chat_template_kwargs(self.chat_template_kwargs)
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}.")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index must be in [0, num_shards={self.num_shards}), got {self.shard_index}.")
        check_max_prompts(self.max_prompts)

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, max_tokens=self.max_tokens, seed=self.seed
        )


def make_parser() -> TrlParser:
    return TrlParser(
        (PromptDataArguments, SampleArguments),
        prog="s2l-sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None):
    data_args, args = make_parser().parse_args_and_config(args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = sample_rollouts(
        None,
        args.output_dir,
        args.model_path,
        data_args=data_args,
        chat_template_kwargs=args.chat_template_kwargs,
        engine_args=args,
        num_generations=args.num_generations,
        sampling=args.sampling(),
        data_source=args.data_source,
        max_prompts=args.max_prompts,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        batch_prompts=args.batch_prompts,
        dedupe=args.dedupe,
    )
    print(f"rollouts: {path}")
    return path


def command() -> None:
    """The `s2l-sample` console command: bad input ends with one line on stderr and exit status 2 (`--debug` or
    `S2L_DEBUG=1` for the traceback); `main` raises instead, for Python callers."""
    run_cli("s2l-sample", main)


if __name__ == "__main__":
    command()
