"""The pass@k crossover, built on purpose: families in which the larger model should win pass@1 while the smaller
one wins pass@k at large k, by a mechanism like the paper's (the larger model commits to wrong solutions on some
problems, the smaller one keeps alternatives). Every construction is reported with its pass@k curves, whether the
crossover appears or not (results/miniature/README.md, "The pass@k crossover").

Constructions (``CONSTRUCTIONS``):

* ``shortcut`` (a): a corpus in which a tempting shortcut is right on every training problem and wrong on a held-out
  class. Every solution in the corpus is written in an operand order whose *last step does not carry* from the units
  into the tens (problems with no such order are left out), while earlier steps carry as usual; the held-out class is
  the problems whose last step carries in every order. M and L are SFT'd on it for the usual budget, and a second L
  three times longer ("L-long", to lower loss); evaluated on the held-out class, on held-out problems of the training
  distribution (control) and on held-out problems drawn from all problems (the class at its natural rate).
* ``ood`` (b): the standard family (``same_corpus``) evaluated just outside its training distribution: four 2-digit
  operands instead of three, three 3-digit operands, and (the mildest shift) one 1-digit operand among three.
* ``rl_sharpened`` (c): L after GRPO (which sharpens its distribution) against its SFT sibling M and its own SFT
  checkpoint, in distribution and on four operands.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from ..jsonl import write_json_atomic
from . import task
from .family import Family, build_family, heldout_rows
from .passk_experiment import passk_of_models
from .rl_experiment import run_one
from .settings import CrossoverSettings, PasskSettings, RLSettings

# Evaluation problem sets beyond a family's own held-out problems: name -> make_rows arguments.
OOD_SETS = {
    "four_operands": {"num_operands": 4},
    "three_digit_operands": {"low": 100, "high": 999},
    # The mildest shift: one operand shorter than any in training (1-9), the others as in training.
    "one_digit_operand": {"low": 1, "high": 99, "accept": lambda ops: sum(x < 10 for x in ops) == 1},
}


def eval_rows(family: Family, name: str, n: int) -> list[dict]:
    """The ``name`` problem set for ``family``: ``heldout`` (its own held-out problems), ``last_step_carry`` (the
    shortcut construction's held-out class), ``natural`` (held-out problems drawn from all problems, whatever the
    family's corpus kept: a shortcut family meets its held-out class at its natural rate, ~19%) or one of
    ``OOD_SETS``. None shares its operands with a training problem."""
    if name == "heldout":
        return heldout_rows(family.spec, n)
    if name == "natural":
        return heldout_rows(family.spec, n, accept=lambda ops: True)
    if name == "last_step_carry":
        return heldout_rows(family.spec, n, accept=task.always_last_carry)
    if name in OOD_SETS:
        return task.make_rows(n, seed=54321, **OOD_SETS[name])
    raise ValueError(f"unknown problem set {name!r}; known: heldout, last_step_carry, {sorted(OOD_SETS)}.")


def _passk_settings(settings: CrossoverSettings) -> PasskSettings:
    return PasskSettings(
        n=settings.n,
        num_problems=settings.num_problems,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        seed=settings.seed,
    )


PROBLEM_SETS = ("heldout", "last_step_carry", "natural", *OOD_SETS)


def _chosen_sets(settings: CrossoverSettings) -> list[str]:
    return [s.strip() for s in settings.sets.split(",") if s.strip()]


def _evaluate(
    models: dict[str, Path], family: Family, sets: list[str], settings: CrossoverSettings, out_dir: Path, title: str
) -> dict:
    if settings.sets:
        own, sets = sets, [s for s in sets if s in _chosen_sets(settings)]
        if not sets:
            raise ValueError(f"sets={settings.sets!r} names none of this construction's problem sets {own}.")
    summaries = {}
    for name in sets:
        rows = eval_rows(family, name, settings.num_problems)
        summaries[name] = passk_of_models(
            models, rows, _passk_settings(settings), out_dir / name, title=f"{title}; problems: {name}"
        )
    return summaries


def shortcut(settings: CrossoverSettings, out_dir: Path) -> dict:
    """(a): M and L SFT'd on the shortcut corpus, and L trained ``long_factor`` times longer."""
    spec = settings.family_spec(sizes=["M", "L"], construction="shortcut", checkpoints=[], checkpoint_every=0)
    family = build_family(Path(settings.cache_dir) / "family-shortcut", spec)
    long_spec = replace(spec, sizes=["L"], sft_steps=spec.sft_steps * settings.long_factor)
    long_family = build_family(Path(settings.cache_dir) / f"family-shortcut-x{settings.long_factor}", long_spec)
    models = {"M": family.path("M"), "L": family.path("L"), "L-long": long_family.path("L")}
    losses = {
        "M": family.manifest["models"]["M"]["sft_losses_every_50"][-1],
        "L": family.manifest["models"]["L"]["sft_losses_every_50"][-1],
        "L-long": long_family.manifest["models"]["L"]["sft_losses_every_50"][-1],
    }
    title = f"shortcut corpus (L-long: {long_spec.sft_steps} SFT steps, others {spec.sft_steps})"
    return {
        "families": [str(family.root), str(long_family.root)],
        "final_sft_loss": losses,
        "sets": _evaluate(models, family, ["last_step_carry", "heldout", "natural"], settings, out_dir, title),
    }


def ood(settings: CrossoverSettings, out_dir: Path) -> dict:
    """(b): the standard family on problems just outside its training distribution."""
    family = build_family(Path(settings.cache_dir) / "family-same_corpus", settings.family_spec())
    models = {s: family.path(s) for s in family.spec.sizes}
    return {
        "families": [str(family.root)],
        "sets": _evaluate(models, family, list(OOD_SETS), settings, out_dir, "family `same_corpus`, final SFT"),
    }


def rl_sharpened(settings: CrossoverSettings, out_dir: Path) -> dict:
    """(c): L after ``rl_steps`` of GRPO from its final SFT weights, against M and L after SFT only.

    The RL run trains under the cache folder (its model is needed for sampling and is not committed); its run.json
    and trainer_state.json are copied next to the pass@k results. A machine without the cache retrains it (GRPO
    runs are reproducible: the copied run.json records the saved model's checksum to compare)."""
    family = build_family(Path(settings.cache_dir) / "family-same_corpus", settings.family_spec())
    rl = RLSettings(
        learner="L",
        steps=settings.rl_steps,
        learning_rate=settings.rl_learning_rate,
        eval_every=max(1, settings.rl_steps // 5),
        seeds=[settings.seed],
    )
    train_dir = Path(settings.cache_dir) / f"crossover-rl-L-{settings.rl_steps}steps-lr{settings.rl_learning_rate}"
    model_dir = train_dir / "model"
    if not (model_dir / "config.json").exists() and train_dir.exists():
        shutil.rmtree(train_dir)  # a run.json without its model: train again
    run = run_one(family, rl, "grpo", settings.seed, train_dir, save_model_to=model_dir)
    run_dir = train_dir / "runs" / f"grpo-seed{settings.seed}"
    (out_dir / "rl_run").mkdir(parents=True, exist_ok=True)
    for name in ("run.json", "trainer_state.json"):
        shutil.copy(run_dir / name, out_dir / "rl_run" / name)
    models = {"M": family.path("M"), "L": family.path("L"), "L-grpo": model_dir}
    title = f"L after {settings.rl_steps} GRPO steps (lr {settings.rl_learning_rate}) vs SFT"
    return {
        "families": [str(family.root)],
        "rl_run": {"evals": run["evals"], "saved_model": run.get("saved_model")},
        "sets": _evaluate(models, family, ["heldout", "four_operands"], settings, out_dir, title),
    }


CONSTRUCTIONS = {"shortcut": shortcut, "ood": ood, "rl_sharpened": rl_sharpened}


def run_crossover(settings: CrossoverSettings, constructions: list[str], out_dir: str | Path) -> dict:
    """Runs the chosen constructions; writes ``<out_dir>/<construction>/<problem set>/passk.*`` and
    ``<out_dir>/crossover.json`` / ``crossover.md`` (the constructions run so far)."""
    unknown = sorted(set(constructions) - set(CONSTRUCTIONS))
    if unknown:
        raise ValueError(f"unknown construction(s) {unknown}; known: {list(CONSTRUCTIONS)}.")
    unknown = sorted(set(_chosen_sets(settings)) - set(PROBLEM_SETS))
    if unknown:
        raise ValueError(f"sets: unknown problem set(s) {unknown}; known: {list(PROBLEM_SETS)} (comma-separated).")
    out_dir = Path(out_dir)
    path = out_dir / "crossover.json"
    report = json.loads(path.read_text()) if path.exists() else {"constructions": {}}
    for name in constructions:
        report["constructions"][name] = CONSTRUCTIONS[name](settings, out_dir / name)
        report["constructions"][name]["settings"] = asdict(settings)
        write_json_atomic(path, report)
    (out_dir / "crossover.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict) -> str:
    """One row per (construction, problem set, model): pass@1, pass@16, pass@n, coherent pass@n, crossovers."""
    lines = [
        "| construction | problems | model | parameters | pass@1 (%) | pass@16 (%) | pass@n (%) "
        "| coherent pass@n (%) | crossover (smaller<larger: k) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in report["constructions"].items():
        for problems, summary in c["sets"].items():
            sizes = summary["sizes"]
            cross = ", ".join(f"{pair}: {k or 'none'}" for pair, k in summary["crossover_k"].items())
            for i, (model, m) in enumerate(sorted(sizes.items(), key=lambda kv: kv[1]["parameters"])):
                top = str(max(int(k) for k in m["pass@k"]))
                lines.append(
                    f"| {name if i == 0 else ''} | {problems if i == 0 else ''} | {model} | {m['parameters']:,} | "
                    f"{100 * m['pass@k']['1']:.1f} | {100 * m['pass@k'].get('16', float('nan')):.1f} | "
                    f"{100 * m['pass@k'][top]:.1f} | {100 * m['coherent_pass@k'][top]:.1f} | "
                    f"{cross if i == 0 else ''} |"
                )
    return "\n".join(lines) + "\n"
