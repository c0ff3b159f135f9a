"""`s2l-train --config recipe.yaml`: S2L-PO (or plain GRPO) training driven by `TrlParser`, open-r1 style."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import transformers
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from ..callbacks import MixProgressCallback
from ..config import S2LConfig
from ..data import load_prompt_dataset, to_conversational
from ..rewards import get_reward_funcs

logger = logging.getLogger(__name__)


@dataclass
class S2LScriptArguments(ScriptArguments):
    r"""
    Script arguments of `s2l-train` (on top of TRL's `ScriptArguments`: `dataset_name`, `dataset_config`,
    `dataset_train_split`, `dataset_test_split`, ...). `dataset_name` is a Hub id or a local JSONL/JSON/parquet/CSV
    file or saved dataset directory.

    Args:
        trainer (`str`, *optional*, defaults to `"s2l"`):
            `"s2l"` trains with `S2LTrainer` / `S2LConfig`; `"grpo"` with plain `GRPOTrainer` / `GRPOConfig`, so a
            baseline recipe differs from its S2L-PO twin only by the explorer block.
        reward_funcs (`list[str]`, *optional*, defaults to `["accuracy", "format"]`):
            Reward functions by name, from `s2l_trl.rewards.REWARD_FUNCS`.
        dataset_prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column with the prompt (a string or a chat message list). Dotted names reach into nested columns.
        dataset_solution_column (`str`, *optional*, defaults to `"solution"`):
            Column with the gold answer, e.g. `reward_model.ground_truth` for DAPO-Math-17k.
        dataset_prompt_id_column (`str`, *optional*):
            Column identifying each problem (e.g. `extra_info.index`), used to match offline explorer rollouts.
        dataset_prompt_template (`str`, *optional*):
            `str.format` pattern with `{prompt}` applied to string prompts.
        system_prompt (`str`, *optional*):
            System message prepended to string prompts.
    """

    trainer: str = field(
        default="s2l",
        metadata={"help": "`s2l` (S2LTrainer) or `grpo` (plain GRPOTrainer).", "choices": ["s2l", "grpo"]},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"], metadata={"help": "Reward functions by name."}
    )
    dataset_prompt_column: str = field(default="prompt", metadata={"help": "Prompt column."})
    dataset_solution_column: str = field(default="solution", metadata={"help": "Gold-answer column."})
    dataset_prompt_id_column: str | None = field(default=None, metadata={"help": "Problem id column."})
    dataset_prompt_template: str | None = field(default=None, metadata={"help": "Template for string prompts."})
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt for string prompts."})


def main(script_args: S2LScriptArguments, training_args: S2LConfig | GRPOConfig, model_args: ModelConfig) -> None:
    set_seed(training_args.seed)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir):
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info("Checkpoint found, resuming training at %s.", last_checkpoint)

    raw = load_prompt_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split)
    train_dataset = raw.map(
        to_conversational,
        remove_columns=raw.column_names,
        fn_kwargs={
            "prompt_column": script_args.dataset_prompt_column,
            "solution_column": script_args.dataset_solution_column,
            "prompt_id_column": script_args.dataset_prompt_id_column
            or ("prompt_id" if "prompt_id" in raw.column_names else None),
            "prompt_template": script_args.dataset_prompt_template,
            "system_prompt": script_args.system_prompt,
        },
    )
    reward_funcs = get_reward_funcs(script_args.reward_funcs)

    # GRPOTrainer loads the learner from its id with these (trust_remote_code lives on the config itself).
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {
        **{k: v for k, v in model_init_kwargs.items() if v is not None},
        **(training_args.model_init_kwargs or {}),
    }
    if script_args.trainer == "grpo":
        trainer_cls = GRPOTrainer
    else:
        from ..trainer import S2LTrainer as trainer_cls

    trainer = trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
        callbacks=[MixProgressCallback()],
    )
    checkpoint = training_args.resume_from_checkpoint or last_checkpoint
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name=script_args.dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


def make_parser(trainer: str = "s2l") -> TrlParser:
    if trainer not in ("s2l", "grpo"):
        raise ValueError(f"trainer must be 's2l' or 'grpo', got {trainer!r}.")
    return TrlParser((S2LScriptArguments, S2LConfig if trainer == "s2l" else GRPOConfig, ModelConfig))


def _requested_trainer(argv: list[str]) -> str:
    """The `trainer` of a run, from `--trainer` or the recipe, read before parsing to pick the config class."""
    for i, arg in enumerate(argv):
        if arg.startswith("--trainer="):
            return arg.split("=", 1)[1]
        if arg == "--trainer" and i + 1 < len(argv):
            return argv[i + 1]
    for i, arg in enumerate(argv):
        path = (
            arg.split("=", 1)[1]
            if arg.startswith("--config=")
            else (argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
        )
        if path:
            import yaml

            with open(path) as f:
                return (yaml.safe_load(f) or {}).get("trainer", "s2l")
    return "s2l"


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(_requested_trainer(argv))
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    main(script_args, training_args, model_args)


if __name__ == "__main__":
    cli()
