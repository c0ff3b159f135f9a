"""`s2l-train --config recipe.yaml`: S2L-PO (or plain GRPO) training driven by `TrlParser`, open-r1 style."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import datasets
import transformers
from transformers import set_seed
from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config

from ..callbacks import MixProgressCallback
from ..checkpoints import RunSettingsCallback, output_dir_held, resolve_resume, run_settings
from ..config import S2LConfig
from ..data import PromptDataArguments, load_train_dataset
from ..preflight import check_deepspeed_installed, check_model_path, check_output_dir, reads_argument
from ..rewards import get_reward_funcs
from .errors import CliParser, run_cli

logger = logging.getLogger(__name__)

TRAINERS = ("s2l", "grpo")


@dataclass
class S2LScriptArguments(PromptDataArguments):
    r"""
    Script arguments of `s2l-train`: the data arguments shared with `s2l-sample`
    ([`~s2l_trl.data.PromptDataArguments`]: `dataset_name`, `dataset_config`, `dataset_train_split`,
    `dataset_prompt_column`, `dataset_solution_column`, `dataset_prompt_id_column`, `dataset_prompt_template`,
    `system_prompt`) plus the two below.

    Parameters:
        trainer (`str`, *optional*, defaults to `"s2l"`):
            `"s2l"` trains with `S2LTrainer` / `S2LConfig`; `"grpo"` with plain `GRPOTrainer` / `GRPOConfig`, so a
            baseline recipe differs from its S2L-PO twin only by the explorer block.
        reward_funcs (`list[str]`, *optional*, defaults to `["accuracy", "format"]`):
            Reward functions by name, from `s2l_trl.rewards.REWARD_FUNCS`.
    """

    trainer: str = field(
        default="s2l",
        metadata={
            "help": '`"s2l"` trains with `S2LTrainer` / `S2LConfig`; `"grpo"` with plain `GRPOTrainer` / `GRPOConfig`, '
            "so a baseline recipe differs from its S2L-PO twin only by the explorer block."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": "Reward functions by name, from `s2l_trl.rewards.REWARD_FUNCS`."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.trainer not in TRAINERS:
            raise ValueError(f"trainer must be 's2l' or 'grpo', got {self.trainer!r}.")


def prepare_run(script_args, training_args, model_args: ModelConfig) -> tuple[list, Any, str | None, list]:
    """What every training CLI does before building its trainer: seed and logging, the reward functions, the data
    set (validated before a trainer or an output folder exists), the checkpoint to resume from, and the learner's
    loading arguments. Returns `(reward_funcs, train_dataset, checkpoint, callbacks)`.

    Resuming follows open-r1: a rerun into an `output_dir` that holds a run resumes it from its newest complete
    checkpoint, said at WARNING, when the model and the settings that shape the run are the checkpoint's; when they
    differ it is refused, naming them, unless `--resume_from_checkpoint true` (or a checkpoint path) asks for the
    resume anyway (`checkpoints.resolve_resume`). `--resume_from_checkpoint false` never resumes, so an `output_dir`
    with checkpoints is refused."""
    set_seed(training_args.seed)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    # Data and paths first: what the run cannot use is refused before a trainer or an output folder exists.
    check_output_dir(training_args.output_dir)
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    need_solution = [
        name for name, func in zip(script_args.reward_funcs, reward_funcs) if reads_argument(func, "solution")
    ]
    train_dataset = load_train_dataset(
        script_args, needs_solution=bool(need_solution), needed_by=f"the reward functions {need_solution}"
    )

    check_model_path(model_args.model_name_or_path, "model_name_or_path")

    # Resume from the newest checkpoint that was saved to the end (a kill during a save leaves a torn one behind),
    # when this run is that run; every checkpoint records the settings compared here.
    settings = run_settings(training_args, model_args.model_name_or_path, train_dataset, reward_funcs)
    checkpoint = resolve_resume(
        training_args.output_dir,
        training_args.resume_from_checkpoint,
        settings,
        implicit=training_args.resume_from_checkpoint is None,
        ask="--resume_from_checkpoint true (or a checkpoint folder)",
    )

    # The trainer loads the learner from its id with these (trust_remote_code lives on the config itself).
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {
        **{k: v for k, v in model_init_kwargs.items() if v is not None},
        **(training_args.model_init_kwargs or {}),
    }
    return reward_funcs, train_dataset, checkpoint, [MixProgressCallback(), RunSettingsCallback(settings)]


def main(script_args: S2LScriptArguments, training_args: S2LConfig | GRPOConfig, model_args: ModelConfig) -> None:
    # The only run writing output_dir (a second one is refused at once), from before anything is read or written.
    with output_dir_held(training_args.output_dir, owner=training_args.should_save):
        run_training(script_args, training_args, model_args)


def run_training(
    script_args: S2LScriptArguments, training_args: S2LConfig | GRPOConfig, model_args: ModelConfig
) -> None:
    reward_funcs, train_dataset, checkpoint, callbacks = prepare_run(script_args, training_args, model_args)
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
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if hasattr(trainer, "close_explorer"):
        trainer.close_explorer()
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name=script_args.dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


def make_parser(trainer: str = "s2l") -> CliParser:
    """The parser of one kind of run: script arguments, `S2LConfig` (or `GRPOConfig` for `trainer="grpo"`), model."""
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be 's2l' or 'grpo', got {trainer!r}.")
    return CliParser((S2LScriptArguments, S2LConfig if trainer == "s2l" else GRPOConfig, ModelConfig), prog="s2l-train")


def _config_flag_apart(argv: list[str]) -> list[str]:
    """``--config=PATH`` as ``--config PATH``, the only form `TrlParser` reads."""
    out = []
    for arg in argv:
        out += ["--config", arg.split("=", 1)[1]] if arg.startswith("--config=") else [arg]
    return out


def parse_args(argv: list[str] | None = None) -> tuple[S2LScriptArguments, S2LConfig | GRPOConfig, ModelConfig]:
    """Parse a command line (and its `--config` YAML) into script, training and model arguments.

    The script arguments are parsed first, alone (YAML and flags, other keys left over), because their `trainer`
    field decides the training-arguments class: `S2LConfig` for `s2l`, `GRPOConfig` for `grpo`.
    """
    argv = _config_flag_apart(list(sys.argv[1:] if argv is None else argv))
    # No -h here (the full parser prints the full help) and no abbreviations (a training flag must never be taken
    # for a prefix of a script flag).
    script_parser = CliParser(S2LScriptArguments, prog="s2l-train", add_help=False, allow_abbrev=False)
    script_args, _ = script_parser.parse_args_and_config(args=argv, return_remaining_strings=True)
    # Before GRPOConfig's own __post_init__ (trainer "grpo" too), which fails inside transformers without DeepSpeed.
    check_deepspeed_installed(None)
    return make_parser(script_args.trainer).parse_args_and_config(args=argv)


def cli(argv: list[str] | None = None) -> None:
    main(*parse_args(argv))


def command() -> None:
    """The `s2l-train` console command: bad input ends with one line on stderr and exit status 2 (`--debug` or
    `S2L_DEBUG=1` for the traceback); `cli` raises instead, for Python callers."""
    run_cli("s2l-train", cli)


if __name__ == "__main__":
    command()
