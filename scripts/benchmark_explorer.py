"""What the explorer costs a training step, on this CPU, with a real `trl vllm-serve` explorer (issue 8's figures).

    python scripts/benchmark_explorer.py [--steps 10] [--work DIR] [--output results.json]

One run of this script measures, with the tiny explorer (width 32, 1 layer) and a learner larger than it as in the
paper (default width 256, 4 layers, same tokenizer), G = 4, 4 groups per step:

1. GRPOTrainer vs S2LTrainer at alpha = 1 with offline rollouts (sampled from the same server first): the step-time
   saving next to the share of a GRPO step spent in the learner's generation (the two should match);
2. alpha = 0.5 against the server, prefetch off: the mixed step against
   max(explorer round, learner generation) + scoring + training;
3. alpha = 0.5 against the server, prefetch on: the explorer wait as a share of the step, and the online step
   against the same mix from offline rollouts;
4. a chunked round against two explorer servers (the real one, and a proxy to it that dies mid-round): the round
   completes with every row once.

With `--pin_cores` (the default on a machine with 2+ CPUs) the explorer server runs on CPU 0 and this process on CPU
1, one torch thread: the CPU analogue of an explorer on its own GPUs. Unpinned, the server's and the trainer's threads
fight for the same cores whenever a request is in flight, and every online figure measures that fight instead.

Times are medians over the steps after the first (warm-up). Generation, scoring and training are measured at TRL's
seams in this process: generation = `_generate_single_turn` (for S2L: learner rows plus any wait for the explorer),
scoring = the rest of `_generate_and_score_completions`, training = TRL's `step_time` minus both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer

from s2l_trl import S2LConfig, S2LTrainer
from s2l_trl.data import PromptDataArguments
from s2l_trl.devtools.tiny import build_model, build_tiny_setup, tiny_training_kwargs
from s2l_trl.devtools.vllm_server import VLLMServerProcess
from s2l_trl.explorers import SamplingSettings
from s2l_trl.sampling.rollouts import sample_rollouts

TIMES: dict[str, list[float]] = defaultdict(list)


def _time_seam(cls, name: str, key: str) -> None:
    original = getattr(cls, name)

    def timed(self, *args, **kwargs):
        if not self.model.training:
            return original(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            TIMES[key].append(time.perf_counter() - start)

    setattr(cls, name, timed)


def _time_seams() -> None:
    # Installed when the benchmark runs, not on import: `--help` (tests/test_docs.py runs it in-process) and an
    # importer must find TRL's classes untouched.
    _time_seam(GRPOTrainer, "_generate_single_turn", "learner_generation")
    _time_seam(S2LTrainer, "_generate_single_turn", "s2l_generation")
    _time_seam(GRPOTrainer, "_generate_and_score_completions", "generate_and_score")


def digit_reward(completions, **kwargs):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def _median(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def run(name: str, trainer) -> dict[str, float]:
    """Train, then the medians of the step's parts."""
    TIMES.clear()
    trainer.train()
    history = trainer.state.log_history

    def logged(key):
        return [h[key] for h in history if key in h]

    generation = TIMES["s2l_generation"] if isinstance(trainer, S2LTrainer) else TIMES["learner_generation"]
    # S2L's learner generation is the inner call: at most one per step (none at alpha = 1).
    row = {
        "step_s": _median(logged("step_time")),
        "generation_s": _median(generation),
        "learner_generation_s": _median(TIMES["learner_generation"]) if TIMES["learner_generation"] else 0.0,
        "generate_and_score_s": _median(TIMES["generate_and_score"]),
    }
    row["scoring_s"] = row["generate_and_score_s"] - row["generation_s"]
    row["training_s"] = row["step_s"] - row["generate_and_score_s"]
    for key in ("s2l/explorer_latency_s", "s2l/explorer_wait_s"):
        if logged(key):
            row[key.split("/")[1]] = _median(logged(key))
    print(f"[bench] {name:<28} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max_completion_length", type=int, default=48)
    parser.add_argument("--learner_width", type=int, default=256, help="hidden size of the learner")
    parser.add_argument("--learner_layers", type=int, default=4, help="layers of the learner")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    parser.add_argument(
        "--pin_cores",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=(os.cpu_count() or 1) >= 2,
        help="explorer server on CPU 0, trainer on CPU 1 (default: true with 2+ CPUs)",
    )
    args = parser.parse_args(argv)
    _time_seams()
    if args.steps < 3:
        raise SystemExit(f"--steps must be >= 3 (the first step is warm-up), got {args.steps}.")
    work = Path(args.work or tempfile.mkdtemp(prefix="s2l-bench-explorer-"))
    tiny = build_tiny_setup(work / "tiny")
    learner = work / f"learner-{args.learner_width}x{args.learner_layers}"
    if not learner.exists():
        build_model(learner, tiny["tokenizer"], hidden_size=args.learner_width, num_layers=args.learner_layers)
    dataset = load_dataset("json", data_files=str(tiny["dataset"]), split="train")
    length = args.max_completion_length
    common = tiny_training_kwargs(per_device_train_batch_size=16, max_completion_length=length, max_steps=args.steps)
    figures: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "steps": args.steps,
        "pinned": args.pin_cores,
        "learner": f"width {args.learner_width}, {args.learner_layers} layers",
    }
    if args.pin_cores:
        # The server's processes inherit this process's CPU set at start; the trainer moves to CPU 1 afterwards.
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0"
        os.sched_setaffinity(0, {0})
    server = VLLMServerProcess(tiny["explorer"], log_path=work / "explorer_server.log", startup_timeout=400).start()
    if args.pin_cores:
        import torch

        os.sched_setaffinity(0, {1})
        torch.set_num_threads(1)
    try:
        rollouts = sample_rollouts(
            output_dir=work / "rollouts",
            model_path=str(tiny["explorer"]),
            data_args=PromptDataArguments(dataset_name=str(tiny["dataset"])),
            backend="server",
            server_base_url=server.base_url,
            num_generations=4,
            sampling=SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=length),
        )

        def s2l(out: str, alpha: float, **explorer) -> S2LTrainer:
            config = S2LConfig(
                output_dir=str(work / out),
                mix_schedule="constant",
                mix_steps=args.steps,
                mix_alpha_start=alpha,
                explorer_model=str(tiny["explorer"]),
                **explorer,
                **common,
            )
            return S2LTrainer(str(learner), [digit_reward], args=config, train_dataset=dataset)

        offline = dict(explorer_mode="offline", explorer_rollouts=str(rollouts))
        online = dict(explorer_mode="server", explorer_server_base_url=server.base_url)
        grpo = run(
            "GRPO",
            GRPOTrainer(
                str(learner),
                [digit_reward],
                args=GRPOConfig(output_dir=str(work / "grpo"), **common),
                train_dataset=dataset,
            ),
        )
        s2l_alpha1 = run("S2L alpha=1 offline", s2l("a1_offline", 1.0, **offline))
        s2l_half_offline = run("S2L alpha=0.5 offline", s2l("a05_offline", 0.5, **offline))
        s2l_half_online = run("S2L alpha=0.5 online", s2l("a05_online", 0.5, explorer_prefetch=False, **online))
        s2l_half_prefetch = run("S2L alpha=0.5 online+prefetch", s2l("a05_prefetch", 0.5, **online))
        figures["4_two_servers_one_killed"] = _two_servers_one_killed(server, tiny, length)

    finally:
        server.stop()

    figures["runs"] = {
        "grpo": grpo,
        "s2l_alpha1_offline": s2l_alpha1,
        "s2l_alpha05_offline": s2l_half_offline,
        "s2l_alpha05_online": s2l_half_online,
        "s2l_alpha05_online_prefetch": s2l_half_prefetch,
    }
    # 1. alpha = 1 offline saves the learner's generation share of a GRPO step.
    figures["1_step_saving_alpha1"] = 1 - s2l_alpha1["step_s"] / grpo["step_s"]
    figures["1_grpo_generation_share"] = grpo["generation_s"] / grpo["step_s"]
    # 2. without prefetch, the explorer overlaps the learner's generation.
    bound = (
        max(s2l_half_online.get("explorer_latency_s", 0.0), s2l_half_online["learner_generation_s"])
        + s2l_half_online["scoring_s"]
        + s2l_half_online["training_s"]
    )
    figures["2_online_step_over_overlap_bound"] = s2l_half_online["step_s"] / bound
    # 3. with prefetch, the trainer barely waits and the online step costs what the offline one does.
    figures["3_prefetch_wait_share"] = s2l_half_prefetch.get("explorer_wait_s", 0.0) / s2l_half_prefetch["step_s"]
    figures["3_prefetch_online_over_offline"] = s2l_half_prefetch["step_s"] / s2l_half_offline["step_s"]

    print("\n[bench] figures")
    for key, value in figures.items():
        if key != "runs":
            print(f"  {key:<36} {value if not isinstance(value, float) else f'{value:.3f}'}")
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2))
    return figures


def _two_servers_one_killed(server: VLLMServerProcess, tiny, length: int) -> dict:
    """One explorer round of 64 prompts x 4 rows in chunks of 4 prompts, against two URLs of the same server: a
    healthy proxy and one that dies at its 3rd request. Every prompt must come back exactly once."""
    from transformers import AutoTokenizer

    from s2l_trl.devtools.fault_proxy import FaultProxy
    from s2l_trl.explorers import ServerExplorer

    tokenizer = AutoTokenizer.from_pretrained(tiny["explorer"])
    prompts = [tokenizer(f"What is {a} + {a + 7}?", add_special_tokens=False)["input_ids"] for a in range(64)]
    sampling = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=length)
    with FaultProxy(server.base_url) as healthy, FaultProxy(server.base_url, die_at=3) as dying:
        explorer = ServerExplorer(
            f"{healthy.base_url},{dying.base_url}", sampling, prompts_per_request=4, max_concurrent_requests=2
        )
        start = time.perf_counter()
        out = explorer.generate(prompts, 4)
        wall = time.perf_counter() - start
        delivered = [r for proxy in (healthy, dying) for r in proxy.records if r.delivered]
        served = sorted(prompts.index(p) for r in delivered for p in r.prompts)
        explorer.close()
    return {
        "rows_expected": len(prompts) * 4,
        "rows_returned": len(out.completion_ids),
        "prompts_lost": len(set(range(len(prompts))) - set(served)),
        "prompts_duplicated": len(served) - len(set(served)),
        "dying_server_dead": dying.dead,
        "requests_by_healthy": healthy.generation_requests,
        "requests_by_dying": dying.generation_requests,
        "failed_requests": out.stats.failed_requests if out.stats else None,
        "wall_s": wall,
    }


if __name__ == "__main__":
    main()
