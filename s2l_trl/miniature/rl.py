"""Experiments 2-4: GRPO vs S2L-PO vs GRPO at a higher temperature (and ablations) from the same learner weights,
over seeds, with held-out accuracy against steps, rollout compute, wall-time split and rollout diversity per source.

Every run writes ``<out>/runs/<method>-seed<k>/``: ``run.json`` (evaluations, per-step compute, initial-weights
checksum), ``trainer_state.json`` (TRL's ``log_history``, for ``python -m s2l_trl.miniature curves``) and
``rollouts.jsonl`` (every rollout group's texts by source, appended and flushed). A run whose ``run.json`` exists is
skipped, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..explorers.base import ExplorerOutput, SamplingSettings
from ..explorers.factory import build_explorer
from ..schedule import mix_alpha, split_group
from . import diversity, task
from .family import Family, heldout_rows
from .passk_exp import write_json

# name -> S2LConfig overrides; "explorer": whether rows come from the small sibling.
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {"explorer": False},
    "grpo_high_temp": {"explorer": False, "high_temperature": True},
    "s2l_po": {"explorer": True},
    "s2l_po_per_source": {"explorer": True, "advantage_grouping": "per_source"},
    "s2l_po_token_truncate": {"explorer": True, "explorer_importance_sampling": "token_truncate"},
    "s2l_po_constant_mix": {"explorer": True, "mix_schedule": "constant", "mix_alpha_start": 0.5},
}
MAIN_METHODS = ["grpo", "grpo_high_temp", "s2l_po"]
ABLATIONS = ["s2l_po_per_source", "s2l_po_token_truncate", "s2l_po_constant_mix"]


@dataclass
class RLSettings:
    """One experiment's settings (recorded in every run.json)."""

    learner: str = "L"
    learner_sft_step: int | None = None
    explorer: str = "M"
    steps: int = 120
    num_generations: int = 8
    prompts_per_step: int = 4
    learning_rate: float = 5e-5
    temperature: float = 1.0
    high_temperature: float = 1.5
    explorer_temperature: float = 1.0
    mix_steps: int = 60
    max_completion_length: int = 40
    eval_every: int = 20
    eval_problems: int = 128
    eval_samples: int = 4
    threshold_gain: float = 0.10  # share of the headroom (1 - start accuracy) defining the threshold
    # "local": the explorer in-process (experiments); "server": a `trl vllm-serve` of it at explorer_server_base_url
    # (the README's main job).
    explorer_backend: str = "local"
    explorer_server_base_url: str = "http://127.0.0.1:8001"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


class RecordingExplorer:
    """Wraps an explorer: times each call, counts its tokens and records its groups for the diversity analysis.

    It runs where the wrapped explorer runs (``runs_in_background`` is the inner one's): forcing a thread onto an
    in-process explorer that samples with torch's global generator made it race the learner for that generator, and
    the same seed gave different runs.
    """

    def __init__(self, inner, recorder: RolloutRecorder):
        self.inner = inner
        self.recorder = recorder
        self.seconds = 0.0
        self.tokens = 0

    def generate(self, prompt_ids, n, inputs=None) -> ExplorerOutput:
        start = time.perf_counter()
        out = self.inner.generate(prompt_ids, n, inputs=inputs)
        self.seconds += time.perf_counter() - start
        self.tokens += sum(len(c) for c in out.completion_ids)
        for i, ids in enumerate(prompt_ids):
            self.recorder.add("explorer", ids, out.completion_ids[i * n : (i + 1) * n])
        return out

    @property
    def runs_in_background(self) -> bool:
        # The trainer's own default (True) for an explorer that does not say.
        return getattr(self.inner, "runs_in_background", True)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class RolloutRecorder:
    """Collects the rows of the current step per (source, prompt) and appends them to a JSONL file at step end."""

    def __init__(self, path: Path, tokenizer):
        self.path = path
        self.tokenizer = tokenizer
        self.pending: dict[tuple[str, tuple[int, ...]], list[list[int]]] = {}

    def add(self, source: str, prompt_ids, completions) -> None:
        self.pending.setdefault((source, tuple(prompt_ids)), []).extend(list(c) for c in completions)

    def flush(self, step: int) -> None:
        with self.path.open("a") as f:
            for (source, prompt), rows in self.pending.items():
                texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
                prompt_text = self.tokenizer.decode(list(prompt), skip_special_tokens=True)
                f.write(json.dumps({"step": step, "source": source, "prompt": prompt_text, "texts": texts}) + "\n")
            f.flush()
        self.pending = {}


def _trainer_class():
    """Built lazily (TRL import is slow): S2LTrainer with timing around learner generation (the GRPOTrainer call S2L
    makes for the learner's own rows only), the whole generation and the scoring."""
    from trl import GRPOTrainer

    from ..trainer import S2LTrainer

    class _LearnerGeneration(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            start = time.perf_counter()
            ids, logps = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            stats = self.mini_stats
            stats["learner_gen_s"] += time.perf_counter() - start
            stats["learner_tokens"] += sum(len(c) for c in ids)
            stats["learner_rows"] += len(ids)
            for p, c in zip(prompt_ids, ids):
                self.mini_recorder.add(self.mini_learner_source, p, [c])
            return ids, logps

    class MiniatureTrainer(S2LTrainer, _LearnerGeneration):
        mini_stats: dict[str, float]
        mini_recorder: RolloutRecorder
        mini_learner_source: str

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            start = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            self.mini_stats["generation_s"] += time.perf_counter() - start
            return out

        def _calculate_rewards(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._calculate_rewards(*args, **kwargs)
            self.mini_stats["scoring_s"] += time.perf_counter() - start
            return out

    return MiniatureTrainer


def weights_checksum(model) -> str:
    """SHA-256 of every parameter's bytes, in name order: equal checksums mean identical starting weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def evaluate(model, tokenizer, rows: list[dict], samples: int, seed: int) -> dict[str, float]:
    """Held-out greedy accuracy and pass@1 (mean over ``samples`` samples at temperature 1) of ``model``."""
    import torch

    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    enc = tokenizer.apply_chat_template(
        [r["prompt"] for r in rows],
        add_generation_prompt=True,
        tokenize=True,
        padding=True,
        return_dict=True,
        return_tensors="pt",
    )
    golds = [r["solution"] for r in rows]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        # fork_rng: evaluating must not move the training run's random stream.
        torch.manual_seed(seed)
        greedy = model.generate(**enc, max_new_tokens=40, do_sample=False)
        sampled = model.generate(
            **enc, max_new_tokens=40, do_sample=True, temperature=1.0, top_p=1.0, num_return_sequences=samples
        )
    width = enc["input_ids"].shape[1]
    g_texts = tokenizer.batch_decode(greedy[:, width:], skip_special_tokens=True)
    s_texts = tokenizer.batch_decode(sampled[:, width:], skip_special_tokens=True)
    if was_training:
        model.train()
    return {
        "greedy_accuracy": sum(task.is_correct(t, g) for t, g in zip(g_texts, golds)) / len(rows),
        "pass@1": sum(task.is_correct(t, golds[i // samples]) for i, t in enumerate(s_texts)) / len(s_texts),
        "greedy_coherent": sum(task.is_coherent(t, r["operands"]) for t, r in zip(g_texts, rows)) / len(rows),
    }


def train_rows_for_rl(family: Family, settings: RLSettings) -> list[dict]:
    exclude = {tuple(sorted(r["operands"])) for r in heldout_rows(family.spec, settings.eval_problems)}
    n = settings.steps * settings.prompts_per_step
    return task.make_rows(n, seed=777, num_operands=family.spec.num_operands, exclude=exclude)


def trainer_kwargs(
    run_dir: Path,
    seed: int,
    *,
    learning_rate: float,
    num_generations: int,
    prompts_per_step: int,
    max_completion_length: int,
    steps: int,
    temperature: float,
) -> dict[str, Any]:
    """The GRPOConfig fields every miniature run shares (one optimizer step per generation round, constant LR, no KL,
    CPU, a log entry per step, no checkpoints)."""
    return {
        "output_dir": str(run_dir / "trainer"),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "learning_rate": learning_rate,
        "lr_scheduler_type": "constant",
        "beta": 0.0,
        "num_generations": num_generations,
        "per_device_train_batch_size": num_generations * prompts_per_step,
        "gradient_accumulation_steps": 1,
        "max_completion_length": max_completion_length,
        "max_steps": steps,
        "temperature": temperature,
        "top_p": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": seed,
        "data_seed": seed,
        "disable_tqdm": True,
        "use_vllm": False,
        "gradient_checkpointing": False,
    }


class StepClock:
    """Wall and process-CPU seconds of one optimizer step. CPU time is the figure to compare across runs on a shared
    machine: other jobs stretch a step's wall time but not the CPU time this process spends on it."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_one(
    family: Family,
    settings: RLSettings,
    method: str,
    seed: int,
    out_dir: Path,
    echo: bool = False,
    name: str | None = None,
) -> dict:
    """One training run; returns (and writes) its run.json. Skipped when run.json exists. ``echo``: print each
    held-out evaluation as it happens (the README's main job). ``name``: the run folder's name instead of ``method``
    (``runs/<name>-seed<k>``)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from ..config import S2LConfig

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}.")
    run_dir = Path(out_dir) / "runs" / f"{name or method}-seed{seed}"
    if (run_dir / "run.json").exists():
        return json.loads((run_dir / "run.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = METHODS[method]
    learner_path = family.path(settings.learner, settings.learner_sft_step)
    tokenizer = AutoTokenizer.from_pretrained(learner_path)
    eval_rows = heldout_rows(family.spec, settings.eval_problems)
    rows = train_rows_for_rl(family, settings)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "solution": r["solution"]} for r in rows])
    G = settings.num_generations
    s2l = {k: v for k, v in spec.items() if k not in ("explorer", "high_temperature")}
    if spec["explorer"]:
        s2l = {"mix_schedule": "linear", "mix_steps": settings.mix_steps, **s2l}
    else:  # alpha = 0 throughout: S2LTrainer is then exactly GRPOTrainer (no explorer is built)
        s2l = {"mix_schedule": "constant", "mix_alpha_start": 0.0, "mix_steps": 1}
    temperature = settings.high_temperature if spec.get("high_temperature") else settings.temperature
    args = S2LConfig(
        **trainer_kwargs(
            run_dir,
            seed,
            learning_rate=settings.learning_rate,
            num_generations=G,
            prompts_per_step=settings.prompts_per_step,
            max_completion_length=settings.max_completion_length,
            steps=settings.steps,
            temperature=temperature,
        ),
        explorer_mode="local",
        explorer_model=str(family.path(settings.explorer)),
        explorer_temperature=settings.explorer_temperature,
        explorer_top_p=1.0,
        explorer_max_tokens=settings.max_completion_length,
        explorer_prefetch=False,  # keeps the wall-time split readable: no explorer work hidden under training
        **s2l,
    )
    recorder = RolloutRecorder(run_dir / "rollouts.jsonl", tokenizer)
    (run_dir / "rollouts.jsonl").write_text("")
    explorer = None
    if spec["explorer"]:
        if settings.explorer_backend not in ("local", "server"):
            raise ValueError(f"explorer_backend must be 'local' or 'server', got {settings.explorer_backend!r}.")
        inner = build_explorer(
            settings.explorer_backend,
            model=str(family.path(settings.explorer)),
            server_base_url=settings.explorer_server_base_url,
            sampling=SamplingSettings(
                temperature=settings.explorer_temperature, top_p=1.0, max_tokens=settings.max_completion_length
            ),
            tokenizer=tokenizer,
            batch_size=256,
        )
        explorer = RecordingExplorer(inner, recorder)
    model = AutoModelForCausalLM.from_pretrained(learner_path, dtype="float32")
    checksum = weights_checksum(model)
    trainer_cls = _trainer_class()
    trainer = trainer_cls(model, [task.accuracy_reward], args=args, train_dataset=dataset, explorer=explorer)
    trainer.mini_recorder = recorder
    trainer.mini_learner_source = "learner_high_temp" if spec.get("high_temperature") else "learner"
    per_step: list[dict] = []
    evals: list[dict] = []

    def fresh_stats() -> dict[str, float]:
        return dict.fromkeys(["learner_gen_s", "learner_tokens", "learner_rows", "generation_s", "scoring_s"], 0.0)

    trainer.mini_stats = fresh_stats()

    class Probe(TrainerCallback):
        """Per-step compute accounting and held-out evaluation (its time is excluded from the step's wall)."""

        def __init__(self):
            self.clock = StepClock()
            self.explorer_s = 0.0
            self.explorer_tokens = 0

        def on_train_begin(self, args_, state, control, **kwargs):
            evals.append({"step": 0, **evaluate(trainer.model, tokenizer, eval_rows, settings.eval_samples, seed)})

        def on_step_begin(self, args_, state, control, **kwargs):
            self.clock.start()

        def on_step_end(self, args_, state, control, **kwargs):
            wall, cpu = self.clock.stop()
            stats = trainer.mini_stats
            e_s = explorer.seconds - self.explorer_s if explorer else 0.0
            e_tok = explorer.tokens - self.explorer_tokens if explorer else 0
            if explorer:
                self.explorer_s, self.explorer_tokens = explorer.seconds, explorer.tokens
            step = state.global_step
            per_step.append(
                {
                    "step": step,
                    "learner_tokens": int(stats["learner_tokens"]),
                    "learner_rows": int(stats["learner_rows"]),
                    "explorer_tokens": int(e_tok),
                    "explorer_gen_s": round(e_s, 4),
                    "learner_gen_s": round(stats["learner_gen_s"], 4),
                    "scoring_s": round(stats["scoring_s"], 4),
                    # Explorer and learner generation run concurrently (S2L overlaps them); "other generation" is
                    # the generation wall not covered by the learner's own generation (waiting for the explorer).
                    "generation_wall_s": round(stats["generation_s"], 4),
                    "training_s": round(max(0.0, wall - stats["generation_s"] - stats["scoring_s"]), 4),
                    "step_wall_s": round(wall, 4),
                    "step_cpu_s": round(cpu, 4),
                }
            )
            trainer.mini_stats = fresh_stats()
            recorder.flush(step)
            if step % settings.eval_every == 0 or step == settings.steps:
                evals.append(
                    {"step": step, **evaluate(trainer.model, tokenizer, eval_rows, settings.eval_samples, seed)}
                )
                if echo:
                    alpha = _alpha(args, step)
                    print(
                        f"[{method}] step {step:4d} | alpha {alpha:.2f} | explorer rows/group "
                        f"{split_group(alpha, G)[0]} | held-out greedy {100 * evals[-1]['greedy_accuracy']:5.1f}% "
                        f"| pass@1 {100 * evals[-1]['pass@1']:5.1f}%",
                        flush=True,
                    )

    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the per-step dicts would drown the progress bar; they are in log_history
    trainer.add_callback(Probe())
    start = time.perf_counter()
    trainer.train()
    result = {
        "method": method,
        "seed": seed,
        "settings": asdict(settings),
        "learner": str(learner_path),
        "explorer": str(family.path(settings.explorer)) if spec["explorer"] else None,
        "temperature": temperature,
        "initial_weights_sha256": checksum,
        "evals": evals,
        "per_step": per_step,
        "schedule_learner_rows": [
            settings.prompts_per_step * split_group(_alpha(args, s), G)[1] for s in range(1, settings.steps + 1)
        ],
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(run_dir / "trainer_state.json", {"log_history": trainer.state.log_history})
    write_json(run_dir / "run.json", result)
    return result


def _alpha(args, step: int) -> float:
    return mix_alpha(step, args.mix_schedule, args.mix_steps, args.mix_alpha_start, args.mix_alpha_end)


def steps_to(evals: list[dict], key: str, threshold: float) -> int | None:
    """First evaluated step whose ``key`` reaches ``threshold`` (None: never within the run)."""
    for e in evals:
        if e[key] >= threshold:
            return e["step"]
    return None


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_runs(runs: list[dict], threshold: float) -> dict:
    """Per method: accuracy curves (mean, sd over seeds), steps to threshold, final values, compute, diversity."""
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    out = {}
    for method, rs in by_method.items():
        steps = [e["step"] for e in rs[0]["evals"]]
        curve = {}
        for key in ("greedy_accuracy", "pass@1", "greedy_coherent"):
            per_step = [[r["evals"][i][key] for r in rs] for i in range(len(steps))]
            curve[key] = {"mean": [_mean_sd(v)[0] for v in per_step], "sd": [_mean_sd(v)[1] for v in per_step]}
        reach = [steps_to(r["evals"], "greedy_accuracy", threshold) for r in rs]
        finals = [r["evals"][-1]["greedy_accuracy"] for r in rs]
        final_p1 = [r["evals"][-1]["pass@1"] for r in rs]
        bests = [max(e["greedy_accuracy"] for e in r["evals"]) for r in rs]
        compute = {
            key: _mean_sd([sum(s[key] for s in r["per_step"]) for r in rs])[0]
            for key in (
                "learner_tokens",
                "explorer_tokens",
                "learner_rows",
                "explorer_gen_s",
                "learner_gen_s",
                "scoring_s",
                "training_s",
                "generation_wall_s",
                "step_wall_s",
            )
        }
        out[method] = {
            "seeds": [r["seed"] for r in rs],
            "steps": steps,
            "curve": curve,
            "steps_to_threshold": reach,
            "final_greedy_accuracy": _mean_sd(finals),
            "final_pass@1": _mean_sd(final_p1),
            "best_greedy_accuracy": _mean_sd(bests),
            "compute_totals_mean": compute,
            "initial_weights_sha256": sorted({r["initial_weights_sha256"] for r in rs}),
        }
    return out


def rollout_diversity(run_dirs: list[Path], size: int, max_step: int | None = None) -> dict[str, dict[str, float]]:
    """Mean group diversity per source over the rollouts of ``run_dirs`` (groups truncated to ``size`` rows, so
    sources are compared at equal group size; groups smaller than ``size`` are skipped)."""
    groups: dict[str, list[list[str]]] = {}
    for d in run_dirs:
        for line in (d / "rollouts.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if max_step is not None and rec["step"] > max_step:
                continue
            groups.setdefault(rec["source"], []).append(rec["texts"])
    return {src: diversity.mean_diversity(g, size=size) for src, g in sorted(groups.items())}


def plot_curves(summary: dict, output: Path, threshold: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("greedy_accuracy", "pass@1")):
        for method, s in summary.items():
            mean, sd = s["curve"][key]["mean"], s["curve"][key]["sd"]
            ax.plot(s["steps"], [100 * m for m in mean], marker="o", ms=3, label=f"{method} (n={len(s['seeds'])})")
            ax.fill_between(
                s["steps"],
                [100 * (m - d) for m, d in zip(mean, sd)],
                [100 * (m + d) for m, d in zip(mean, sd)],
                alpha=0.15,
            )
        if key == "greedy_accuracy":
            ax.axhline(100 * threshold, color="grey", ls="--", lw=0.8, label="threshold")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"held-out {key} (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def _fmt(pair: tuple[float, float], scale: float = 100.0) -> str:
    m, s = pair
    return "-" if math.isnan(m) else f"{scale * m:.1f} ± {scale * s:.1f}"


def run_experiment(
    family: Family, settings: RLSettings, out_dir: str | Path, methods: list[str], ablation_seeds: list[int]
) -> dict:
    """Runs every (method, seed), then writes ``rl.json``, ``rl.md`` and ``rl.png`` under ``out_dir``."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    jobs = [(m, s) for m in methods for s in (settings.seeds if m in MAIN_METHODS else ablation_seeds)]
    runs = []
    for method, seed in tqdm(jobs, desc="runs"):
        runs.append(run_one(family, settings, method, seed, out_dir))
    start_acc = runs[0]["evals"][0]["greedy_accuracy"]
    # A fixed share of the headroom above the common start, set before any run: an absolute gain would be unreachable
    # for a learner that starts near 100%.
    threshold = round(start_acc + settings.threshold_gain * (1.0 - start_acc), 4)
    summary = summarize_runs(runs, threshold)
    size = settings.num_generations // 2  # every source has >= G/2 rows in a group for half of the mixing phase
    div_methods = {"s2l_po": "explorer and learner rows of S2L-PO", "grpo": "GRPO", "grpo_high_temp": "high-T GRPO"}
    div = {}
    for m in div_methods:
        dirs = [
            out_dir / "runs" / f"{m}-seed{s}" for s in settings.seeds if (out_dir / "runs" / f"{m}-seed{s}").exists()
        ]
        if dirs:
            div[m] = rollout_diversity(dirs, size=size, max_step=settings.mix_steps)
    report = {
        "settings": asdict(settings),
        "threshold_greedy_accuracy": threshold,
        "start_greedy_accuracy": start_acc,
        "methods": summary,
        "diversity_group_size": size,
        "diversity_steps": f"1..{settings.mix_steps}",
        "diversity": div,
        "device": "CPU only (2 cores); no GPU was lent to this task",
    }
    write_json(out_dir / "rl.json", report)
    plot_curves(summary, out_dir / "rl.png", threshold)
    (out_dir / "rl.md").write_text(render_markdown(report))
    return report


def demo(family: Family, settings: RLSettings, out_dir: str | Path) -> str:
    """The README's main job: one S2L-PO run and one GRPO run from the same learner weights, a table of held-out
    greedy accuracy against steps, and a curves PNG. Previous demo runs in ``out_dir`` are replaced (a demo trains)."""
    import shutil

    from .curves import plot_run_curves

    out_dir = Path(out_dir)
    if (out_dir / "runs").exists():
        shutil.rmtree(out_dir / "runs")
    seed = settings.seeds[0]
    runs = {m: run_one(family, settings, m, seed, out_dir, echo=True) for m in ("s2l_po", "grpo")}
    if runs["s2l_po"]["initial_weights_sha256"] != runs["grpo"]["initial_weights_sha256"]:
        raise RuntimeError("the two demo runs did not start from the same weights.")
    G = settings.num_generations
    rows = [
        "| step | alpha | explorer rows / group | GRPO greedy acc (%) | S2L-PO greedy acc (%) | GRPO pass@1 (%) "
        "| S2L-PO pass@1 (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for g, s in zip(runs["grpo"]["evals"], runs["s2l_po"]["evals"]):
        step = g["step"]
        alpha = mix_alpha(max(step, 1), "linear", settings.mix_steps)
        mix = f"{alpha:.2f} | {split_group(alpha, G)[0]}" if step else "- (start) | -"
        rows.append(
            f"| {step} | {mix} | {100 * g['greedy_accuracy']:.1f} | "
            f"{100 * s['greedy_accuracy']:.1f} | {100 * g['pass@1']:.1f} | {100 * s['pass@1']:.1f} |"
        )
    learner_tokens = {m: sum(x["learner_tokens"] for x in r["per_step"]) for m, r in runs.items()}
    rows += [
        "",
        f"learner-generated tokens: GRPO {learner_tokens['grpo']}, S2L-PO {learner_tokens['s2l_po']} "
        f"(+ {sum(x['explorer_tokens'] for x in runs['s2l_po']['per_step'])} explorer tokens)",
    ]
    png = plot_run_curves(
        [out_dir / "runs" / f"{m}-seed{seed}" for m in ("grpo", "s2l_po")], out_dir / "curves.png", ["GRPO", "S2L-PO"]
    )
    rows.append(f"curves: {png}")
    text = "\n".join(rows) + "\n"
    (out_dir / "demo.md").write_text(text)
    return text


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"Learner {s['learner']} (SFT step {s['learner_sft_step'] or 'final'}), explorer {s['explorer']}, "
        f"{s['steps']} steps, G = {s['num_generations']}, {s['prompts_per_step']} prompts/step, lr "
        f"{s['learning_rate']}, T_mix = {s['mix_steps']}, temperature {s['temperature']} (high: "
        f"{s['high_temperature']}). Held-out greedy accuracy at step 0: {100 * report['start_greedy_accuracy']:.1f}%; "
        f"threshold {100 * report['threshold_greedy_accuracy']:.1f}%. Mean ± sd over seeds.",
        "",
        "| method | seeds | steps to threshold (per seed) | final greedy acc (%) | best greedy acc (%) "
        "| final pass@1 (%) | learner tokens | explorer tokens "
        "| learner gen s | explorer gen s | scoring s | training s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in report["methods"].items():
        c = r["compute_totals_mean"]
        reach = ", ".join("never" if x is None else str(x) for x in r["steps_to_threshold"])
        lines.append(
            f"| {m} | {len(r['seeds'])} | {reach} | {_fmt(r['final_greedy_accuracy'])} | "
            f"{_fmt(r['best_greedy_accuracy'])} | {_fmt(r['final_pass@1'])} | {c['learner_tokens']:.0f} | "
            f"{c['explorer_tokens']:.0f} | {c['learner_gen_s']:.1f} | {c['explorer_gen_s']:.1f} | "
            f"{c['scoring_s']:.1f} | {c['training_s']:.1f} |"
        )
    lines += [
        "",
        f"Rollout diversity per source (groups of {report['diversity_group_size']} rows, steps "
        f"{report['diversity_steps']}, mean over groups):",
        "",
        "| run | source | groups | distinct answers | distinct paths | mean pairwise edit distance |",
        "|---|---|---|---|---|---|",
    ]
    for m, per in report["diversity"].items():
        for src, d in per.items():
            if d.get("groups", 0) == 0:
                continue
            lines.append(
                f"| {m} | {src} | {d['groups']:.0f} | {d['distinct_answers']:.2f} | {d['distinct_paths']:.2f} | "
                f"{d['mean_pairwise_edit']:.3f} |"
            )
    return "\n".join(lines) + "\n"


__all__ = [
    "METHODS",
    "RLSettings",
    "StepClock",
    "run_experiment",
    "run_one",
    "steps_to",
    "summarize_runs",
    "trainer_kwargs",
    "weights_checksum",
]
