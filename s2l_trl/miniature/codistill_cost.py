"""The large model's time and compute per optimizer step under CoDistill-GRPO vs plain GRPO on it, in a
rollout-dominated setting, and the FLOP model that predicts the paper's ~18% saving.

Two runs from the same weights and prompts, every completion forced to `completion_tokens` tokens
(`min_new_tokens`), so that generation is as long as it can be:

* ``grpo_large``: TRL's GRPO on the large model (it samples its own rollouts, on-policy: no old-log-prob forward);
* ``codistill``: CoDistill with the small model sampling every row (alpha = 1).

Each step is split into rollout (the model that samples), scoring (rewards, advantages; for CoDistill the no-grad
forwards of both models on the rows), update (forward and backward) and the optimizer step, in wall and process-CPU
seconds (medians over steps 2..N).

The FLOP model (``time_ratio``): per token of a row (prompt + completion), generating costs ``2N`` FLOPs, a no-grad
forward ``2N``, a training forward + backward ``6N`` (N = parameters; attention ignored). GRPO on the large model:
``2 N_L`` (sampling) + ``6 N_L`` (update). CoDistill: ``2 N_S`` + ``2 (N_L + N_S)`` (scoring both) + ``6 (N_L + N_S)``.
In FLOPs CoDistill always costs more (ratio ``(8 + 10 rho) / 8`` with ``rho = N_S / N_L``); it saves time only
because generation runs at a fraction ``eta`` of the training throughput per FLOP (decoding is memory-bound):
``ratio(eta) = (2 rho / eta + 8 (1 + rho)) / (2 / eta + 6)``. ``eta_for_saving`` inverts it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..jsonl import write_json_atomic
from . import task
from .family import Family
from .runs import StepClock, train_rows_for_rl, trainer_kwargs

# Qwen2.5-Math-7B / -1.5B: the paper's pair; its recipe lengths (docs/codistill.md).
PAPER = {"large_params": 7.62e9, "small_params": 1.54e9, "prompt_tokens": 512, "completion_tokens": 3072}


@dataclass
class CostSettings:
    """The cost experiment's settings (recorded in cost.json)."""

    small: str = "M"
    small_sft_step: int | None = 250
    large: str = "L"
    large_sft_step: int | None = 1000
    completion_tokens: int = 160
    steps: int = 8
    num_generations: int = 8
    prompts_per_step: int = 4
    learning_rate: float = 5e-5
    seed: int = 0


def time_ratio(rho: float, eta: float) -> float:
    """CoDistill's step time over GRPO's on the large model, from FLOPs, when generating runs at ``eta`` times the
    training throughput per FLOP (scoring forwards at the training throughput)."""
    return (2 * rho / eta + 8 * (1 + rho)) / (2 / eta + 6)


def eta_for_saving(rho: float, saving: float) -> float:
    """The generation efficiency ``eta`` at which CoDistill's step is ``saving`` (e.g. 0.18) shorter than GRPO's."""
    keep = 1.0 - saving
    return (2 * rho - 2 * keep) / (6 * keep - 8 * (1 + rho))


def flops_per_step(n_large: float, n_small: float, rows: int, tokens_per_row: float) -> dict[str, dict[str, float]]:
    """Per-step FLOPs of each component (the model above; ``tokens_per_row`` = prompt + completion)."""
    t = rows * tokens_per_row
    return {
        "grpo_large": {"rollout": 2 * n_large * t, "scoring": 0.0, "update": 6 * n_large * t},
        "codistill": {
            "rollout": 2 * n_small * t,
            "scoring": 2 * (n_large + n_small) * t,
            "update": 6 * (n_large + n_small) * t,
        },
    }


def _timed(base):
    """`base` with per-step time split: rollout (`_generate_single_turn`), the whole generation round and the
    micro-step, accumulated into ``self.cost`` in process-CPU seconds (torch runs one thread here, so CPU time is the
    work itself; wall time on a shared machine also counts the other jobs)."""

    class Timed(base):
        def _generate_single_turn(self, *args, **kwargs):
            start = time.process_time()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                self.cost["rollout_s"] += time.process_time() - start

        def _generate_and_score_completions(self, inputs):
            start = time.process_time()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                self.cost["round_s"] += time.process_time() - start

        def training_step(self, model, inputs, num_items_in_batch):
            start = time.process_time()
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                self.cost["micro_s"] += time.process_time() - start

    return Timed


def _run(family: Family, settings: CostSettings, name: str, out_dir: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ..codistill import CoDistillConfig, CoDistillTrainer
    from .settings import CoDistillSettings

    shape = CoDistillSettings(
        small=settings.small,
        small_sft_step=settings.small_sft_step,
        large=settings.large,
        large_sft_step=settings.large_sft_step,
        steps=settings.steps,
        num_generations=settings.num_generations,
        prompts_per_step=settings.prompts_per_step,
        max_completion_length=settings.completion_tokens,
    )
    rows = train_rows_for_rl(family, shape.grpo("large"))
    dataset = Dataset.from_list([{"prompt": r["prompt"], "solution": r["solution"]} for r in rows])
    common = trainer_kwargs(
        out_dir / "runs" / name,
        settings.seed,
        learning_rate=settings.learning_rate,
        num_generations=settings.num_generations,
        prompts_per_step=settings.prompts_per_step,
        max_completion_length=settings.completion_tokens,
        steps=settings.steps,
        temperature=1.0,
    )
    # Every completion runs to the length limit: the rollout-dominated regime of long reasoning traces.
    common["generation_kwargs"] = {"min_new_tokens": settings.completion_tokens}
    large = AutoModelForCausalLM.from_pretrained(family.path(settings.large, settings.large_sft_step), dtype="float32")
    if name == "grpo_large":
        trainer = _timed(GRPOTrainer)(large, [task.accuracy_reward], args=GRPOConfig(**common), train_dataset=dataset)
    else:
        small = AutoModelForCausalLM.from_pretrained(
            family.path(settings.small, settings.small_sft_step), dtype="float32"
        )
        args = CoDistillConfig(**common, small_model=str(family.path(settings.small, settings.small_sft_step)))
        trainer = _timed(CoDistillTrainer)(
            large, [task.accuracy_reward], args=args, train_dataset=dataset, small_model=small
        )
    trainer.cost = {"rollout_s": 0.0, "round_s": 0.0, "micro_s": 0.0}
    steps: list[dict] = []

    class Probe(TrainerCallback):
        def __init__(self):
            self.clock = StepClock()

        def on_step_begin(self, args_, state, control, **kwargs):
            trainer.cost.update(rollout_s=0.0, round_s=0.0, micro_s=0.0)
            self.clock.start()

        def on_step_end(self, args_, state, control, **kwargs):
            wall, cpu = self.clock.stop()
            c = trainer.cost
            steps.append(
                {
                    "step": state.global_step,
                    "step_wall_s": wall,
                    "step_cpu_s": cpu,
                    "rollout_s": c["rollout_s"],
                    "scoring_s": c["round_s"] - c["rollout_s"],
                    "update_s": c["micro_s"] - c["round_s"],
                    "optimizer_s": cpu - c["micro_s"],
                }
            )

    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Probe())
    trainer.train()
    history = trainer.state.log_history
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    per_step_tokens = tokens[-1] / len(tokens) if tokens else None
    return {"run": name, "steps": steps, "tokens_per_step": per_step_tokens, "log_history": history}


def summarize(runs: dict[str, dict], n_large: int, n_small: int, settings: CostSettings) -> dict:
    """Medians of each component (steps 2..N), FLOPs per step, measured throughputs and the model's predictions."""
    rows = settings.num_generations * settings.prompts_per_step
    out: dict = {"settings": asdict(settings), "params": {"large": n_large, "small": n_small}, "runs": {}}
    for name, r in runs.items():
        keep = r["steps"][1:]  # step 1 pays one-off costs
        out["runs"][name] = {k: statistics.median(s[k] for s in keep) for k in keep[0] if k != "step"}
        out["runs"][name]["tokens_per_step"] = r["tokens_per_step"]
    tokens_per_row = out["runs"]["grpo_large"]["tokens_per_step"] / rows
    flops = flops_per_step(n_large, n_small, rows, tokens_per_row)
    out["flops_per_step"] = flops
    g, c = out["runs"]["grpo_large"], out["runs"]["codistill"]
    rho = n_small / n_large
    # Measured on this machine: generation's FLOP throughput relative to training's, for the large model (GRPO).
    eta_here = (flops["grpo_large"]["rollout"] / g["rollout_s"]) / (flops["grpo_large"]["update"] / g["update_s"])
    out["measured"] = {
        "step_wall_ratio": c["step_wall_s"] / g["step_wall_s"],
        "step_cpu_ratio": c["step_cpu_s"] / g["step_cpu_s"],
        "flop_ratio": sum(flops["codistill"].values()) / sum(flops["grpo_large"].values()),
        "grpo_rollout_share": g["rollout_s"] / g["step_cpu_s"],
        "rollout_ratio_small_over_large": c["rollout_s"] / g["rollout_s"],
        "eta": eta_here,
    }
    out["model_here"] = {"rho": rho, "predicted_ratio_at_measured_eta": time_ratio(rho, eta_here)}
    paper_rho = PAPER["small_params"] / PAPER["large_params"]
    out["model_paper"] = {
        "rho": paper_rho,
        "eta_for_18pct": eta_for_saving(paper_rho, 0.18),
        "grpo_rollout_share_at_that_eta": (2 / eta_for_saving(paper_rho, 0.18))
        / (2 / eta_for_saving(paper_rho, 0.18) + 6),
        "ratio_by_eta": {str(eta): time_ratio(paper_rho, eta) for eta in (0.05, 0.1, 0.2, 0.27, 0.4, 0.6, 1.0)},
    }
    return out


def render_markdown(s: dict) -> str:
    st, g, c, m = s["settings"], s["runs"]["grpo_large"], s["runs"]["codistill"], s["measured"]
    ms = lambda v: f"{1000 * v:.0f}"  # noqa: E731
    lines = [
        f"Large {st['large']} (SFT step {st['large_sft_step'] or 'final'}, {s['params']['large']:,} parameters), small "
        f"{st['small']} (SFT step {st['small_sft_step'] or 'final'}, {s['params']['small']:,}); "
        f"{st['num_generations'] * st['prompts_per_step']} rows per step, every completion {st['completion_tokens']} "
        f"tokens; medians of steps 2..{st['steps']} (ms; components in process-CPU time, torch with one thread).",
        "",
        "| run | step (wall) | step (CPU) | rollout | scoring | update | optimizer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("GRPO on the large model", g), ("CoDistill (small model samples)", c)):
        lines.append(
            f"| {name} | {ms(r['step_wall_s'])} | {ms(r['step_cpu_s'])} | {ms(r['rollout_s'])} | "
            f"{ms(r['scoring_s'])} | {ms(r['update_s'])} | {ms(r['optimizer_s'])} |"
        )
    lines += [
        "",
        f"- CoDistill / GRPO step time: {m['step_wall_ratio']:.2f} (wall), {m['step_cpu_ratio']:.2f} (CPU); FLOPs "
        f"per step: {m['flop_ratio']:.2f}.",
        f"- Rollout share of a GRPO step: {m['grpo_rollout_share']:.2f}; the small model's rollout over the large "
        f"model's: {m['rollout_ratio_small_over_large']:.2f} (parameters: {s['model_here']['rho']:.2f}).",
        f"- Generation's FLOP throughput relative to training's here (eta): {m['eta']:.3f}; the FLOP model then "
        f"predicts a ratio of {s['model_here']['predicted_ratio_at_measured_eta']:.2f}.",
        f"- Paper shape (rho = {s['model_paper']['rho']:.3f}): an 18% shorter step needs eta = "
        f"{s['model_paper']['eta_for_18pct']:.3f} (rollouts = {s['model_paper']['grpo_rollout_share_at_that_eta']:.0%}"
        " of a GRPO step). Ratio by eta: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in s["model_paper"]["ratio_by_eta"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def run_cost_experiment(family: Family, settings: CostSettings, out_dir: str | Path) -> dict:
    """Both runs, then ``cost.json`` and ``cost.md`` under ``out_dir``."""
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = {name: _run(family, settings, name, out_dir) for name in ("grpo_large", "codistill")}

    def count(size, step):
        return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(family.path(size, step)).parameters())

    summary = summarize(
        runs, count(settings.large, settings.large_sft_step), count(settings.small, settings.small_sft_step), settings
    )
    summary["per_step"] = {name: r["steps"] for name, r in runs.items()}
    summary["device"] = "CPU only (2 cores, torch with 1 thread); no GPU was lent to this task"
    write_json_atomic(out_dir / "cost.json", summary)
    (out_dir / "cost.md").write_text(render_markdown(summary))
    return summary
