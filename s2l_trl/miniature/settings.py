"""What the miniature experiments compare and with which settings: the methods (one small frozen dataclass each) and
one settings dataclass per experiment, recorded in every run.json and turned into command-line flags one per field
(``python -m s2l_trl.miniature <experiment> --help``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .family import Family, FamilySpec


@dataclass(frozen=True)
class Method:
    """One trained method.

    Args:
        name: run folders are ``runs/<name>-seed<k>``; the command line's ``--methods`` take names.
        label: how tables and plots name it.
        explorer: whether its groups mix in rows of the smaller sibling (S2L-PO) or not (GRPO: alpha = 0 throughout,
            where S2LTrainer is exactly GRPOTrainer and builds no explorer).
        high_temperature: whether the learner samples at ``RLSettings.high_temperature`` instead of ``temperature``.
        overrides: trainer-config fields of this method, as ``(field, value)`` pairs (immutable), applied last.
    """

    name: str
    label: str
    explorer: bool = False
    high_temperature: bool = False
    overrides: tuple[tuple[str, Any], ...] = ()

    def mix_config(self, mix_steps: int) -> dict[str, Any]:
        """The S2LConfig schedule fields of this method (then its overrides)."""
        if not self.explorer:
            return {"mix_schedule": "constant", "mix_alpha_start": 0.0, "mix_steps": 1, **dict(self.overrides)}
        return {"mix_schedule": "linear", "mix_steps": mix_steps, **dict(self.overrides)}

    def temperature(self, settings: RLSettings) -> float:
        return settings.high_temperature if self.high_temperature else settings.temperature

    @property
    def learner_source(self) -> str:
        """The name of this method's learner rows in ``rollouts.jsonl`` (high-temperature rows apart)."""
        return "learner_high_temp" if self.high_temperature else "learner"


GRPO = Method("grpo", "GRPO")
GRPO_HIGH_TEMP = Method("grpo_high_temp", "GRPO, high temperature", high_temperature=True)
S2L_PO = Method("s2l_po", "S2L-PO", explorer=True)
S2L_PO_PER_SOURCE = Method(
    "s2l_po_per_source",
    "S2L-PO, per-source advantages",
    explorer=True,
    overrides=(("advantage_grouping", "per_source"),),
)
S2L_PO_TOKEN_TRUNCATE = Method(
    "s2l_po_token_truncate",
    "S2L-PO, token-truncated IS",
    explorer=True,
    overrides=(("explorer_importance_sampling", "token_truncate"),),
)
S2L_PO_CONSTANT_MIX = Method(
    "s2l_po_constant_mix",
    "S2L-PO, constant alpha 0.5",
    explorer=True,
    overrides=(("mix_schedule", "constant"), ("mix_alpha_start", 0.5)),
)
MAIN_METHODS: tuple[Method, ...] = (GRPO, GRPO_HIGH_TEMP, S2L_PO)
ABLATIONS: tuple[Method, ...] = (S2L_PO_PER_SOURCE, S2L_PO_TOKEN_TRUNCATE, S2L_PO_CONSTANT_MIX)
METHODS: dict[str, Method] = {m.name: m for m in MAIN_METHODS + ABLATIONS}


def method(name: str) -> Method:
    """The method called ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}.")
    return METHODS[name]


@dataclass
class RLSettings:
    """One RL experiment's settings (recorded in every run.json)."""

    learner: str = "L"
    learner_sft_step: int | None = None
    # The learner's start picked by measured held-out accuracy instead of an SFT step (``regime.Band``: "20,35" is the
    # first checkpoint of ``learner`` whose greedy accuracy lies in [20, 35]%); overrides learner_sft_step, so that the
    # run starts in the same regime on any machine and family build.
    learner_band: str = ""
    # A saved model to train instead of a family member (e.g. L after GRPO, the crossover family's learner); ``learner``
    # then only names it in tables.
    learner_path: str = ""
    explorer: str = "M"
    # The explorer picked by measured held-out accuracy too (``regime.Band``, e.g. "pass@1:50,100": the first
    # checkpoint of ``explorer`` that answers at least half of the held-out problems per sample); empty: its final
    # SFT checkpoint. A family build whose explorer never gets there cannot hold the regime and is refused.
    explorer_band: str = ""
    steps: int = 120
    num_generations: int = 8
    prompts_per_step: int = 4
    # The training prompts' draw (every method and seed sees the same prompts in the same order); another value gives
    # prompts a learner already trained by this harness (e.g. the crossover family's L after GRPO) has not seen.
    train_prompts_seed: int = 777
    learning_rate: float = 5e-5
    temperature: float = 1.0
    high_temperature: float = 1.5
    explorer_temperature: float = 1.0
    mix_steps: int = 60
    max_completion_length: int = 40
    eval_every: int = 20
    eval_problems: int = 128
    eval_samples: int = 4
    # pass@1 (the sampled half of an evaluation, most of its cost) at the start and the end only; the evaluations in
    # between measure greedy accuracy (what steps-to-threshold and the mean over evaluations read).
    pass_at_1_at_ends_only: bool = False
    threshold_gain: float = 0.10  # share of the headroom (1 - start accuracy) defining the threshold
    # pass@k of the trained learner on the held-out problems, n samples each at ``temperature`` (0: not measured), and
    # of the starting learner and the explorer on the same problems for reference.
    final_passk_n: int = 0
    # "local": the explorer in-process (experiments); "server": a `trl vllm-serve` of it at explorer_server_base_url
    # (the README's main job).
    explorer_backend: str = "local"
    explorer_server_base_url: str = "http://127.0.0.1:8001"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def __post_init__(self) -> None:
        # Checked here, before any run starts: a bad value would otherwise fail after the first run has trained.
        from .regime import Band

        if self.explorer_band:
            Band.parse(self.explorer_band, "explorer_band")
        if self.learner_band:
            Band.parse(self.learner_band, "learner_band")
            if self.learner_path:
                raise ValueError(
                    "learner_band picks a family checkpoint and learner_path names a saved model: give one of them."
                )
        if self.final_passk_n < 0:
            raise ValueError(f"final_passk_n must be >= 0 (0: no pass@k after training), got {self.final_passk_n}.")
        if self.learner_path and not (Path(self.learner_path) / "config.json").is_file():
            raise ValueError(
                f"learner_path={self.learner_path!r} is not a saved model (no config.json there); give the folder of "
                "a save_pretrained model, or leave it empty to train the family member named by learner."
            )

    def learner_model(self, family: Family) -> Path:
        """The folder of the learner's starting weights (a band's pick: :func:`regime.select`)."""
        if self.learner_path:
            return Path(self.learner_path)
        if self.learner_band:
            from .regime import Band, select

            return Path(select(family, self.learner, Band.parse(self.learner_band, "learner_band")).path)
        return family.path(self.learner, self.learner_sft_step)

    def explorer_model(self, family: Family) -> Path:
        """The folder of the explorer's weights (a band's pick, else the final SFT checkpoint)."""
        if self.explorer_band:
            from .regime import Band, select

            return Path(select(family, self.explorer, Band.parse(self.explorer_band, "explorer_band")).path)
        return family.path(self.explorer)


# CoDistill-GRPO's runs: the two KD rewards it is run with, and plain GRPO on each of its two models.
CODISTILL_METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("codistill", "CoDistill-GRPO (token-level KD)", overrides=(("kd_mode", "token"),)),
        Method("codistill_sequence", "CoDistill-GRPO (sequence-level KD)", overrides=(("kd_mode", "sequence"),)),
        # The kd_coef sweep (the token-level KD reward with its mean baseline, CoDistill's default update).
        Method("codistill_kd0.3", "CoDistill-GRPO, kd_coef 0.3", overrides=(("kd_mode", "token"), ("kd_coef", 0.3))),
        Method("codistill_kd1", "CoDistill-GRPO, kd_coef 1.0", overrides=(("kd_mode", "token"), ("kd_coef", 1.0))),
        # The large model learns only from the small model's tokens whose weight pi_large / pi_small is at most 2
        # (the others are masked, not truncated to 2): kept from learning hard on tokens the small model rarely picks.
        Method(
            "codistill_mask_kd0.3",
            "CoDistill-GRPO, kd_coef 0.3, IS token_mask <= 2",
            overrides=(
                ("kd_mode", "token"),
                ("kd_coef", 0.3),
                ("explorer_importance_sampling", "token_mask"),
                ("explorer_importance_sampling_clip_max", 2.0),
            ),
        ),
        # The large model learns only from rows it finds plausible: geometric-mean weight pi_large / pi_small >= 0.5.
        Method(
            "codistill_rows_kd0.3",
            "CoDistill-GRPO, kd_coef 0.3, large model on rows with weight >= 0.5",
            overrides=(("kd_mode", "token"), ("kd_coef", 0.3), ("large_row_weight_bounds", [0.5, float("inf")])),
        ),
        # The exact reverse KL over the vocabulary as the small model's KD term, instead of the sampled-token reward.
        Method("codistill_full_kl", "CoDistill-GRPO, exact KL term", overrides=(("kd_mode", "full_kl"),)),
        Method(
            "codistill_full_kl1",
            "CoDistill-GRPO, exact KL term, kd_coef 1.0",
            overrides=(("kd_mode", "full_kl"), ("kd_coef", 1.0)),
        ),
        # No large-model optimizer step (momentum and weight decay included) when its gradient is exactly zero.
        Method(
            "codistill_skip_zero",
            "CoDistill-GRPO, no large-model step at zero gradient",
            overrides=(("kd_mode", "token"), ("large_skip_zero_gradient", True)),
        ),
    )
}
GRPO_RUNS = ("grpo_small", "grpo_large")
CODISTILL_RUNS = GRPO_RUNS + tuple(CODISTILL_METHODS)


@dataclass
class CoDistillSettings:
    """One CoDistill experiment's settings (recorded in every run.json). Sizes and SFT steps name members of the
    family."""

    small: str = "M"
    small_sft_step: int | None = 500
    large: str = "L"
    large_sft_step: int | None = 1000
    # Each model's start picked by measured held-out accuracy (``regime.Band`` syntax, e.g. "40,60"); a band overrides
    # the role's SFT step.
    small_band: str = ""
    large_band: str = ""
    steps: int = 120
    num_generations: int = 8
    prompts_per_step: int = 4
    learning_rate: float = 5e-5  # the large model's, and GRPO's on either model
    small_learning_rate: float = 5e-5
    kd_coef: float = 0.1
    temperature: float = 1.0
    max_completion_length: int = 40
    eval_every: int = 20
    eval_problems: int = 128
    eval_samples: int = 4
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def grpo(self, role: str) -> RLSettings:
        """The RLSettings of plain GRPO on the ``role`` ("small" / "large") model, with the same budget."""
        shared = {f.name: getattr(self, f.name) for f in fields(RLSettings) if hasattr(self, f.name)}
        shared["learning_rate"] = self.small_learning_rate if role == "small" else self.learning_rate
        return RLSettings(
            **shared,
            learner=getattr(self, role),
            learner_sft_step=getattr(self, f"{role}_sft_step"),
            learner_band=getattr(self, f"{role}_band"),
        )

    def model_path(self, family: Family, role: str) -> Path:
        """The folder of the ``role`` ("small" / "large") model's starting weights (a band's pick, else the step)."""
        return self.grpo(role).learner_model(family)

    def __post_init__(self) -> None:
        from .regime import Band

        for role in ("small", "large"):
            if getattr(self, f"{role}_band"):
                Band.parse(getattr(self, f"{role}_band"), f"{role}_band")


@dataclass
class PasskSettings:
    """One pass@k experiment's settings: how many held-out problems, samples per problem and at which temperature."""

    n: int = 256
    num_problems: int = 64
    temperature: float = 1.0
    max_tokens: int = 40
    seed: int = 0


@dataclass
class CrossoverSettings:
    """The crossover constructions' settings: pass@k sampling (as :class:`PasskSettings`, with room for the longer
    solutions of out-of-distribution problems), the GRPO run of construction (c), how much longer L-long is trained in
    construction (a), and where built families and trained models are cached."""

    n: int = 256
    num_problems: int = 64
    temperature: float = 1.0
    max_tokens: int = 64
    seed: int = 0
    rl_steps: int = 400
    rl_learning_rate: float = 5e-5
    long_factor: int = 3
    cache_dir: str = ".tiny/miniature"
    # Comma-separated problem sets to evaluate on (empty: each construction's own list), e.g. "natural" to look at
    # one set with more problems.
    sets: str = ""
    # The families' SFT (FamilySpec's defaults: the standard family is the one of the other experiments).
    sft_steps: int = 1500
    train_problems: int = 20000
    batch_size: int = 48
    numerics: str = "pinned_avx2"

    def family_spec(self, **changes) -> FamilySpec:
        from .family import FamilySpec

        checkpoints = [c for c in FamilySpec().checkpoints if c < self.sft_steps]
        base = FamilySpec(
            sft_steps=self.sft_steps,
            train_problems=self.train_problems,
            batch_size=self.batch_size,
            checkpoints=checkpoints,
            numerics=self.numerics,
        )
        return replace(base, **changes)


__all__ = [
    "CrossoverSettings",
    "ABLATIONS",
    "CODISTILL_METHODS",
    "CODISTILL_RUNS",
    "GRPO_RUNS",
    "MAIN_METHODS",
    "METHODS",
    "CoDistillSettings",
    "Method",
    "PasskSettings",
    "RLSettings",
    "method",
]
