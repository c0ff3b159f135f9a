"""``python -m s2l_trl.miniature {family,passk,rl,demo,codistill,codistill_cost,race,curves}``: one command per
experiment (see results/miniature)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace

from .family import SIZES, FamilySpec, build_family, check_spec
from .numerics import NUMERICS_MODES, check_mode, reexec_with
from .regime import RegimeError
from .settings import (
    ABLATIONS,
    CODISTILL_RUNS,
    MAIN_METHODS,
    METHODS,
    CoDistillSettings,
    CrossoverSettings,
    PasskSettings,
    RLSettings,
)

FAMILIES = ".tiny/miniature"


def default_family_dir(construction: str, family_seed: int, numerics: str) -> str:
    """Where a family build is cached by default: one folder per construction, family seed and numerics."""
    name = f"family-{construction}"
    name += f"-fs{family_seed}" if family_seed else ""
    name += "" if numerics == FamilySpec.numerics else f"-{numerics}"
    return f"{FAMILIES}/{name}"


def _family_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--family_dir",
        default=None,
        help=f"where the family is built / cached (default: {FAMILIES}/family-<construction>[-fs<family_seed>])",
    )
    p.add_argument("--construction", default="same_corpus", choices=["same_corpus", "distilled"])
    p.add_argument("--sft_steps", type=int, default=FamilySpec.sft_steps)
    p.add_argument("--sizes", nargs="+", default=["S", "M", "L"])
    p.add_argument("--train_problems", type=int, default=FamilySpec.train_problems)
    p.add_argument("--checkpoints", type=int, nargs="*", default=[250, 500, 1000])
    p.add_argument(
        "--family_seed",
        type=int,
        default=FamilySpec.family_seed,
        help="which independent build of the family (initial weights and SFT batch order; 0: the original build)",
    )
    p.add_argument(
        "--checkpoint_every",
        type=int,
        default=FamilySpec.checkpoint_every,
        help="an SFT checkpoint (with its held-out accuracy) every that many steps; 0: only --checkpoints",
    )
    p.add_argument(
        "--numerics",
        default=FamilySpec.numerics,
        choices=list(NUMERICS_MODES),
        help="CPU-kernel settings of the build and the runs: pinned_avx2 (the same code paths, hence the same family, "
        "on every AVX2 processor; the command restarts itself under them) or native",
    )


def _family_spec(a: argparse.Namespace) -> FamilySpec:
    return FamilySpec(
        sizes=a.sizes,
        construction=a.construction,
        sft_steps=a.sft_steps,
        train_problems=a.train_problems,
        checkpoints=[c for c in a.checkpoints if c < a.sft_steps],
        family_seed=a.family_seed,
        checkpoint_every=a.checkpoint_every,
        numerics=a.numerics,
    )


def _family(a: argparse.Namespace, family_seed: int | None = None):
    spec = _family_spec(a)
    if family_seed is not None:
        spec = replace(spec, family_seed=family_seed)
    root = a.family_dir if family_seed is None and a.family_dir else None
    return build_family(root or default_family_dir(spec.construction, spec.family_seed, spec.numerics), spec)


def _sft_step(value: str) -> int | None:
    if value in ("final", "0", "none", "None"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an SFT step must be an integer or 'final', got {value!r}") from None


def _flag(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _settings_args(p: argparse.ArgumentParser, settings_cls, seeds: list[int] | None = None) -> None:
    """One flag per field of an experiment's settings dataclass (its defaults; SFT steps take an integer or 'final')."""
    for f in fields(settings_cls):
        if f.name == "seeds":
            p.add_argument("--seeds", type=int, nargs="+", default=seeds)
        elif f.name.endswith("_sft_step"):
            p.add_argument(f"--{f.name}", type=_sft_step, default=f.default)
        elif isinstance(f.default, bool):
            p.add_argument(f"--{f.name}", type=_flag, default=f.default, metavar="{true,false}")
        else:
            p.add_argument(f"--{f.name}", type=type(f.default), default=f.default)


class SettingsError(ValueError):
    """A settings dataclass refused a flag's value (its own message names the field, the value and the fix)."""


def _settings(a: argparse.Namespace, settings_cls):
    try:
        return settings_cls(**{f.name: getattr(a, f.name) for f in fields(settings_cls)})
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m s2l_trl.miniature", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("family", help="build (or reuse) the model family")
    _family_args(p)

    p = sub.add_parser("passk", help="experiment 1: pass@k curves of every size")
    _family_args(p)
    p.add_argument("--output_dir", default="results/miniature/passk")
    p.add_argument("--at_sft_step", type=int, default=None, help="evaluate an intermediate SFT checkpoint")
    _settings_args(p, PasskSettings)

    p = sub.add_parser("rl", help="experiments 2-4: GRPO vs S2L-PO vs high-temperature GRPO, ablations")
    _family_args(p)
    p.add_argument("--output_dir", default="results/miniature/rl")
    p.add_argument("--methods", nargs="+", default=[m.name for m in MAIN_METHODS + ABLATIONS], choices=sorted(METHODS))
    # Five seeds for every method: what the committed tables use (paired differences need them all).
    p.add_argument("--ablation_seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    _settings_args(p, RLSettings, seeds=[0, 1, 2, 3, 4])

    p = sub.add_parser("families", help="experiments 2-4 over several family builds, paired within each build")
    _family_args(p)
    p.add_argument("--family_seeds", type=int, nargs="+", default=[0, 1, 2], help="the family builds to run on")
    p.add_argument("--output_dir", default="results/miniature/families/early_learner")
    p.add_argument("--title", default="", help="heading of the report")
    p.add_argument("--methods", nargs="+", default=[m.name for m in MAIN_METHODS], choices=sorted(METHODS))
    _settings_args(p, RLSettings, seeds=[0, 1, 2, 3, 4])

    p = sub.add_parser("demo", help="README main job: a short S2L-PO run next to GRPO from the same start")
    _family_args(p)
    p.add_argument("--output_dir", default=".tiny/miniature/demo")
    p.add_argument(
        "--print_explorer",
        action="store_true",
        help="print the explorer checkpoint these settings pick (the folder a server must serve) and exit",
    )
    _settings_args(p, RLSettings, seeds=[0])

    p = sub.add_parser("codistill", help="CoDistill-GRPO vs GRPO on the small and on the large model, step time")
    _family_args(p)
    p.add_argument("--output_dir", default="results/miniature/codistill")
    p.add_argument("--runs", nargs="+", default=list(CODISTILL_RUNS), choices=list(CODISTILL_RUNS))
    _settings_args(p, CoDistillSettings, seeds=[0, 1, 2])

    from .codistill_cost import CostSettings

    p = sub.add_parser("codistill_cost", help="CoDistill vs GRPO: the large model's step time and FLOPs, long rollouts")
    _family_args(p)
    p.add_argument("--output_dir", default="results/miniature/codistill/cost")
    _settings_args(p, CostSettings)

    p = sub.add_parser("race", help="the explorer-thread race: kernel-level, run-level and outcome-level experiments")
    _family_args(p)
    p.add_argument("--output_dir", default="results/miniature/race")
    p.add_argument("--parts", nargs="+", default=["kernel", "run", "seeds"], choices=["kernel", "run", "seeds"])
    p.add_argument("--race_steps", type=int, default=24, help="steps of the instrumented run-level pair")
    _settings_args(p, RLSettings, seeds=list(range(10)))

    p = sub.add_parser("crossover", help="the pass@k crossover constructions (a) shortcut, (b) ood, (c) rl_sharpened")
    p.add_argument("--output_dir", default="results/miniature/crossover")
    p.add_argument("--constructions", nargs="+", default=["shortcut", "ood", "rl_sharpened"])
    _settings_args(p, CrossoverSettings)

    p = sub.add_parser("diversity", help="policy- vs token-level diversity per source of RL experiments' rollouts")
    p.add_argument("experiments", nargs="+", help="TITLE=FOLDER of RL experiments (their runs/*/rollouts.jsonl)")
    p.add_argument("--output_dir", default="results/miniature/diversity")
    p.add_argument("--group_size", type=int, default=4)
    p.add_argument("--max_step", type=int, default=60, help="rollouts of steps 1..max_step (the mixing phase)")

    p = sub.add_parser("numerics", help="which CPU-kernel settings change a short SFT's weights here, and their cost")
    p.add_argument("--size", default="L", choices=sorted(SIZES))
    p.add_argument("--steps", type=int, default=100, help="SFT steps of the family's recipe (schedule unchanged)")
    p.add_argument("--output_dir", default="results/miniature/numerics")

    p = sub.add_parser("curves", help="per-step curves (reward per source, alpha, held-out accuracy) to PNG")
    p.add_argument("runs", nargs="+", help="run folders or trainer_state.json files")
    p.add_argument("--output", required=True)
    p.add_argument("--labels", nargs="*", default=None)

    a = parser.parse_args(argv)
    if a.command not in ("diversity", "curves", "numerics"):  # the commands that build or train models
        try:  # bad family settings end here, before a restart or any build
            check_spec(_family_spec(a)) if hasattr(a, "family_seed") else check_mode(a.numerics)
        except ValueError as exc:
            parser.error(str(exc))
        if argv is None:  # a command-line run: restart under the numerics' kernel settings if needed
            reexec_with(a.numerics)
    try:
        _run(a, parser)
    except (RegimeError, SettingsError) as exc:  # bad settings, no checkpoint in band: one line, before any run
        parser.exit(2, f"error: {exc}\n")


def _run(a: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    import torch

    # One thread: these models are too small to gain from two, and on a shared 2-core machine a second thread
    # mostly waits on the first (measured: several times slower per step under load).
    torch.set_num_threads(1)
    if a.command == "crossover":
        from .crossover import run_crossover

        run_crossover(_settings(a, CrossoverSettings), a.constructions, a.output_dir)
        print(open(f"{a.output_dir}/crossover.md").read())
        return
    if a.command == "numerics":
        from pathlib import Path

        from ..jsonl import write_json_atomic
        from .numerics import probe, render_probe

        out = Path(a.output_dir)
        out.mkdir(parents=True, exist_ok=True)  # before minutes of probing, not after
        results = probe(a.size, a.steps)
        write_json_atomic(out / "numerics.json", results)
        (out / "numerics.md").write_text(render_probe(results))
        print(render_probe(results))
        return
    if a.command == "diversity":
        from .diversity_report import diversity_report

        pairs = [e.split("=", 1) for e in a.experiments]
        if any(len(p) != 2 for p in pairs):
            parser.error(f"experiments are TITLE=FOLDER, got {a.experiments}")
        diversity_report(dict(pairs), a.output_dir, a.group_size, a.max_step)
        print(open(f"{a.output_dir}/diversity.md").read())
        return
    if a.command == "curves":
        from .curves import plot_run_curves

        print(plot_run_curves(a.runs, a.output, a.labels))
        return
    family = _family(a)
    if a.command == "family":
        for size, m in family.manifest["models"].items():
            print(
                f"[family] {size}: {m['parameters']:,} parameters, final SFT loss {m['sft_losses_every_50'][-1]}, "
                f"built in {m['sft_seconds']} s ({family.path(size)})"
            )
    elif a.command == "passk":
        from .passk_experiment import run_passk

        summary = run_passk(family, a.output_dir, _settings(a, PasskSettings), step=a.at_sft_step)
        print(open(f"{a.output_dir}/passk.md").read())
        print(json.dumps(summary["crossover_k"]))
    elif a.command == "rl":
        from .rl_experiment import run_experiment

        settings = _settings(a, RLSettings)
        run_experiment(family, settings, a.output_dir, a.methods, a.ablation_seeds)
        print(open(f"{a.output_dir}/rl.md").read())
    elif a.command == "families":
        from .rl_experiment import run_over_families

        settings = _settings(a, RLSettings)
        print(run_over_families(lambda k: _family(a, k), a.family_seeds, settings, a.output_dir, a.methods, a.title))
    elif a.command == "codistill":
        from .codistill_experiment import run_codistill_experiment
        from .codistill_report import render_markdown

        settings = _settings(a, CoDistillSettings)
        print(render_markdown(run_codistill_experiment(family, settings, a.output_dir, a.runs)))
    elif a.command == "codistill_cost":
        from .codistill_cost import CostSettings, run_cost_experiment
        from .codistill_cost import render_markdown as render_cost

        print(render_cost(run_cost_experiment(family, _settings(a, CostSettings), a.output_dir)))
    elif a.command == "race":
        from . import race

        settings = _settings(a, RLSettings)
        if "kernel" in a.parts:
            report = race.kernel_race()
            print(json.dumps(report, indent=1))
            race.write_report(a.output_dir, "kernel", report)
        if "run" in a.parts:
            report = race.run_race(
                family, race.race_settings(settings, a.race_steps), settings.seeds[0], f"{a.output_dir}/run_level"
            )
            print(json.dumps(report["runs"], indent=1))
            race.write_report(a.output_dir, "run", report)
        if "seeds" in a.parts:
            report = race.seeds_by_mode(family, settings, settings.seeds, f"{a.output_dir}/seeds")
            print(json.dumps({k: report[k] for k in ("mean_sd", "thread_minus_foreground_welch")}, indent=1))
            race.write_report(a.output_dir, "seeds", report)
    elif a.command == "demo":
        from .rl_experiment import demo

        settings = _settings(a, RLSettings)
        if a.print_explorer:
            print(settings.explorer_model(family))
            return
        text, verdict = demo(family, settings, a.output_dir)
        print(text)
        if not verdict["ok"]:  # what the README promises did not hold: say so in the exit status too
            raise SystemExit(1)


if __name__ == "__main__":
    main()
