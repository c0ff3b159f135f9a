"""The TRL seams S2LTrainer overrides or reads still look the way it expects (run on every supported TRL)."""

from __future__ import annotations

import inspect

import pytest
from packaging.version import Version
from trl import GRPOTrainer
from trl.generation.vllm_generation import VLLMGeneration

from s2l_trl import S2LTrainer
from s2l_trl.trl_compat import TESTED_TRL, is_tested_trl, trl_version

OVERRIDDEN = [
    name
    for name, value in vars(S2LTrainer).items()
    if callable(value) and hasattr(GRPOTrainer, name) and name not in ("__init__",)
]


def test_the_overridden_seams_are_the_documented_ones():
    assert sorted(OVERRIDDEN) == sorted(
        [
            "_prepare_inputs",
            "get_batch_samples",
            "_generate_and_score_completions",
            "_generate_single_turn",
            "_calculate_rewards",
            "_compute_loss",
            "_save_checkpoint",
            "train",
            "_load_optimizer_and_scheduler",
            "save_model",
            "create_model_card",
        ]
    )


@pytest.mark.parametrize("name", OVERRIDDEN)
def test_overridden_signature_matches_trl(name):
    ours = inspect.signature(getattr(S2LTrainer, name))
    theirs = inspect.signature(getattr(GRPOTrainer, name))
    assert list(ours.parameters) == list(theirs.parameters), f"GRPOTrainer.{name} changed: {theirs}"
    for param, other in zip(ours.parameters.values(), theirs.parameters.values()):
        assert param.kind == other.kind and param.default == other.default, f"{name}({param.name})"


def test_trl_attributes_read_by_the_trainer_exist():
    # What `_generate_learner_rows_vllm_server` and `_prepare_inputs` read from TRL's objects.
    init = inspect.signature(VLLMGeneration.__init__).parameters
    for attribute in (
        "repetition_penalty",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "max_completion_length",
        "logprobs",
        "structured_outputs_regex",
        "generation_kwargs",
    ):
        assert attribute in init, attribute
    assert callable(VLLMGeneration.sync_weights) and callable(VLLMGeneration.generate)
    source = inspect.getsource(GRPOTrainer._prepare_inputs)
    for name in ("self._step", "self._buffered_inputs", "steps_per_generation"):
        assert name in source, name
    assert "sampling_per_token_logps" in inspect.getsource(GRPOTrainer._compute_loss)
    # The completions table (`trl_compat.relog_advantages`, the `source` column): TRL logs the batch's advantages and
    # flushes the pending extra columns inside `_generate_and_score_completions`, and the table reads both.
    assert callable(GRPOTrainer._log_completion_extra)
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for name in ('self._logs["advantages"].extend(', "self._pending_extra_logs.clear()"):
        assert name in source, name
    assert '"advantage": self._logs["advantages"]' in inspect.getsource(GRPOTrainer.log)


def test_installed_trl_is_in_the_tested_range(caplog):
    assert is_tested_trl(), f"trl {trl_version()} is outside {TESTED_TRL}: extend the range after testing it"
    assert not is_tested_trl(Version("1.14.2")) and not is_tested_trl(Version("1.17.0"))
    import s2l_trl.trl_compat as compat

    compat._warned = False
    original = compat.is_tested_trl
    compat.is_tested_trl = lambda version=None: False
    try:
        with caplog.at_level("WARNING"):
            compat.warn_if_untested_trl()
    finally:
        compat.is_tested_trl = original
    assert "tested with trl" in caplog.text
