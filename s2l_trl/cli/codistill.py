"""`s2l-codistill --config recipe.yaml`: CoDistill-GRPO training (a large and a small model) driven by `TrlParser`.

Same shape as `s2l-train` (open-r1 style): script arguments (the data arguments shared with `s2l-train` and
`s2l-sample`, reward functions), [`CoDistillConfig`] and TRL's `ModelConfig` for the large model.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, get_peft_config

from ..checkpoints import output_dir_held
from ..codistill import CoDistillConfig
from ..data import PromptDataArguments
from ..preflight import InputError
from .errors import CliParser, run_cli
from .train import _config_flag_apart, prepare_run

logger = logging.getLogger(__name__)


@dataclass
class CoDistillScriptArguments(PromptDataArguments):
    r"""
    Script arguments of `s2l-codistill`: the data arguments shared with `s2l-train` and `s2l-sample`
    ([`~s2l_trl.data.PromptDataArguments`]) plus the two below. The large model is `ModelConfig.model_name_or_path`,
    the small one `CoDistillConfig.small_model`.

    Parameters:
        reward_funcs (`list[str]`, *optional*, defaults to `["accuracy", "format"]`):
            Reward functions by name, from `s2l_trl.rewards.REWARD_FUNCS`: the verifiable reward of both models.
        small_use_peft (`bool`, *optional*, defaults to `False`):
            Train the small model with LoRA too, with the `ModelConfig` LoRA settings (`lora_r`, `lora_alpha`, ...)
            that `use_peft` applies to the large model.
    """

    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": "Reward functions by name, from `s2l_trl.rewards.REWARD_FUNCS` (both models' reward)."},
    )
    small_use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train the small model with LoRA too, with the ModelConfig LoRA settings (lora_r, lora_alpha, "
            "...) that use_peft applies to the large model."
        },
    )


def main(script_args: CoDistillScriptArguments, training_args: CoDistillConfig, model_args: ModelConfig) -> None:
    if not training_args.small_model:
        raise InputError("s2l-codistill needs small_model (the small model's id or path) in the recipe.")
    # The only run writing output_dir (a second one is refused at once), from before anything is read or written.
    with output_dir_held(training_args.output_dir, owner=training_args.should_save):
        run_training(script_args, training_args, model_args)


def run_training(
    script_args: CoDistillScriptArguments, training_args: CoDistillConfig, model_args: ModelConfig
) -> None:
    reward_funcs, train_dataset, checkpoint, callbacks = prepare_run(script_args, training_args, model_args)
    peft_config = get_peft_config(model_args)
    small_peft_config = None
    if script_args.small_use_peft:
        from dataclasses import replace

        small_peft_config = get_peft_config(replace(model_args, use_peft=True))

    from ..codistill.trainer import CoDistillTrainer

    trainer = CoDistillTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        peft_config=peft_config,
        small_peft_config=small_peft_config,
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    # `large_model/` and `small_model/` under output_dir, each with its model card.
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


def make_parser() -> CliParser:
    return CliParser((CoDistillScriptArguments, CoDistillConfig, ModelConfig), prog="s2l-codistill")


def parse_args(argv: list[str] | None = None) -> tuple[CoDistillScriptArguments, CoDistillConfig, ModelConfig]:
    argv = _config_flag_apart(list(sys.argv[1:] if argv is None else argv))
    return make_parser().parse_args_and_config(args=argv)


def cli(argv: list[str] | None = None) -> None:
    main(*parse_args(argv))


def command() -> None:
    """The `s2l-codistill` console command: bad input ends with one line on stderr and exit status 2 (`--debug` or
    `S2L_DEBUG=1` for the traceback); `cli` raises instead, for Python callers."""
    run_cli("s2l-codistill", cli)


if __name__ == "__main__":
    command()
