"""The scale lab: what S2L-PO's own round machinery costs one training process at the paper's counts (issue 15).

The paper's round: 1,024 prompts x G = 16 completions of up to 4,096 tokens, over 8 training processes, so 2,048
rows per process. This script runs the real `S2LTrainer` code of one process for one generation round at 1/8, 1/4,
1/2 and 1x those per-process counts, on this CPU, by simulation:

* the explorer is a fake OpenAI-compatible vLLM server in its own process (`s2l_trl.devtools.fake_server`), which
  answers at once with synthetic completions of realistic lengths, so what is timed is S2L's client side (HTTP, JSON
  decoding of the token ids and log-probs, chunking) -- or the offline Arrow store on a synthetic rollout file;
* the learner's generation is stubbed (TRL's `_generate_single_turn` returns fixed-length rows at once), and no
  learner forward runs where it is not S2L's: the learner log-probs an importance-sampling step needs are given;
* the learner is a tiny Qwen3 (its size does not enter any S2L stage), with room for 4,096-token completions.

Stages timed per round (wall time, and the peak growth of the process's anonymous memory while the stage runs):

  request     plan the round and build this process's explorer request (placement, prompts in explorer tokens)
  explorer    the explorer call (server: HTTP + JSON decoding; offline: store lookup), in its background thread
  to_learner  explorer completions -> learner tokens (EOS cut, length cap, range check)
  merge       learner and explorer rows merged into TRL's row order
  finish      per-source metrics, explorer log-prob tensor, importance weights (`token_truncate`), gathers
  (trl_pad    TRL's own padding of the round's lists into tensors: not S2L's, shown for scale)

It prints a table per backend, the growth exponent of each stage between sizes (time vs rows x tokens; 1 is
linear), the round's peak memory, and S2L's share of a round's learner generation at paper scale estimated from a
published throughput figure: 12,500 output tokens/s for Llama-3.1-8B (BF16) with vLLM on one H100 80GB (the
"vLLM Benchmarks" table of morphllm.com, 2026, collecting third-party measurements), on the paper's 2 learner
vLLM GPUs. `--reference_tokens_per_s` and `--learner_gpus` change the assumption.

    python scripts/benchmark_scale.py                        # server + offline at 1/8 .. 1x, ~10 min on 2 cores
    python scripts/benchmark_scale.py --fractions 0.01 0.02 --backends server   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAPER_PROMPTS, GROUP, PROCESSES, MAX_TOKENS = 1024, 16, 8, 4096
STAGES = ("request", "explorer", "to_learner", "merge", "finish")


# ------------------------------------------------------------------------------------------------ memory readings
def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Peak anonymous resident memory above the level at entry, sampled every 5 ms while the block runs."""

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = _rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_anon())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())

    @property
    def growth(self) -> int:
        return self.peak - self.base


# ------------------------------------------------------------------------------------------------ one measurement
def _setup(workdir: Path) -> dict[str, Path]:
    """Tiny tokenizer and a tiny learner with room for 4,096-token completions (built once, reused)."""
    from s2l_trl.devtools.tiny import build_model, build_tiny_setup

    tiny = build_tiny_setup(workdir / "tiny")
    learner = workdir / "learner_8k"
    if not (learner / "config.json").exists():
        build_model(learner, tiny["tokenizer"], hidden_size=64, num_layers=1, seed=0, max_position_embeddings=8192)
    return {"tokenizer": tiny["tokenizer"], "learner": learner}


def _prompts(count: int) -> list[dict]:
    """`count` distinct training problems of ~100 prompt tokens."""
    rows = []
    for i in range(count):
        terms = " + ".join(str(10 + (i * 7 + k * 13) % 89) for k in range(20))
        rows.append({"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"Add {terms}."}], "solution": "1"})
    return rows


def _write_rollouts(path: Path, rows: list[dict], tokenizer, group: int, mean_tokens: int, seed: int) -> None:
    """Synthetic offline rollouts in the authors' schema: `group` samples per prompt, lengths around the mean."""
    import random

    rng = random.Random(seed)
    vocab = [t for t in range(len(tokenizer)) if t not in tokenizer.all_special_ids]
    with path.open("w") as f:
        for row in rows:
            for _ in range(group):
                length = max(1, min(MAX_TOKENS, int(rng.lognormvariate(math.log(mean_tokens), 0.5))))
                ids = [rng.choice(vocab) for _ in range(length)]
                record = {
                    "prompt_id": row["prompt_id"],
                    "prompt": row["prompt"],
                    "prompt_ids": [],
                    "response": "",
                    "response_ids": ids,
                    "small_model_log_probs": [round(-rng.random() * 3, 4) for _ in ids],
                    "reward": 0.0,
                    "is_correct": False,
                    "data_source": "synthetic",
                    "ground_truth": "1",
                }
                f.write(json.dumps(record) + "\n")


def measure(backend: str, rows: int, mean_tokens: int, alpha: float, workdir: Path, seed: int) -> dict:
    """One round of S2L-PO's machinery on one process holding `rows` rows (runs in its own interpreter)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer
    from trl.trainer.utils import pad

    from s2l_trl import S2LConfig, S2LTrainer, mixing, split_group
    from s2l_trl.devtools.fake_server import FakeServerProcess
    from s2l_trl.devtools.tiny import tiny_training_kwargs
    from s2l_trl.explorers.token_bridge import TokenBridge
    from s2l_trl.trainer import MixedRound

    torch.set_num_threads(1)
    paths = _setup(workdir)
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    prompts = _prompts(rows // GROUP)
    dataset = Dataset.from_list(prompts)
    explorer_args: dict = {}
    server = None
    if backend == "server":
        server = FakeServerProcess(
            paths["tokenizer"],
            mean_tokens=mean_tokens,
            length_spread=0.5,
            seed=seed,
            logprobs_mode="processed_logprobs",
        ).start()
        explorer_args = {"explorer_mode": "server", "explorer_server_base_url": server.base_url}
    else:
        rollouts = workdir / f"rollouts_{rows}_{mean_tokens}.jsonl"
        if not rollouts.exists():
            _write_rollouts(rollouts, prompts, tokenizer, GROUP, mean_tokens, seed)
        explorer_args = {"explorer_mode": "offline", "explorer_rollouts": str(rollouts)}
    try:
        args = S2LConfig(
            explorer_importance_sampling="token_truncate",
            explorer_prefetch=False,
            **explorer_args,
            **tiny_training_kwargs(
                output_dir=str(workdir / "out"),
                num_generations=GROUP,
                per_device_train_batch_size=rows,
                max_completion_length=MAX_TOKENS,
                seed=seed,
            ),
        )
        trainer = S2LTrainer(
            str(paths["learner"]),
            [lambda completions, **kw: [0.0] * len(completions)],
            args=args,
            train_dataset=dataset,
        )
        learner_row = [5] * mean_tokens  # the stubbed learner: fixed-length rows at once
        GRPOTrainer._generate_single_turn = lambda self, prompt_ids, *a, **k: ([learner_row] * len(prompt_ids), None)

        # Time each stage where the trainer calls it.
        times = dict.fromkeys(STAGES, 0.0)
        memory = dict.fromkeys(STAGES, 0)

        def timed(stage, fn):
            def wrapper(*a, **k):
                start = time.perf_counter()
                with PeakMemory() as mem:
                    out = fn(*a, **k)
                times[stage] += time.perf_counter() - start
                memory[stage] = max(memory[stage], mem.growth)
                return out

            return wrapper

        trainer._explorer_request = timed("request", trainer._explorer_request)
        bridge_to_learner = TokenBridge.to_learner
        TokenBridge.to_learner = timed("to_learner", bridge_to_learner)
        mixing.merge_rows = timed("merge", mixing.merge_rows)
        trainer._finish_round = timed("finish", trainer._finish_round)
        collect = timed("explorer", trainer.explorer_rounds.collect)  # its time is the explorer's latency, below
        trainer.explorer_rounds.collect = collect

        inputs = [dict(prompts[i // GROUP]) for i in range(rows)]
        prompt_ids = trainer._tokenize_prompts([x["prompt"] for x in inputs])[0]
        g_w, g_s = split_group(alpha, GROUP)
        placement = mixing.place_rows(0, rows, GROUP, g_w)
        trainer.model.train()
        with PeakMemory() as round_memory:
            round_start = time.perf_counter()
            trainer._round = rnd = MixedRound(0, 1, alpha, g_w, g_s, placement, inputs)
            completion_ids, _ = trainer._generate_single_turn(prompt_ids, None, {}, GROUP)
            times["explorer"] = rnd.explorer.latency_s if rnd.explorer is not None else 0.0
            # What TRL builds from the lists (its cost, shown for scale), then S2L's scoring-side work.
            start = time.perf_counter()
            ids = pad([torch.tensor(c) for c in completion_ids], padding_value=0, padding_side="right")
            mask = pad(
                [torch.ones(len(c), dtype=torch.long) for c in completion_ids], padding_value=0, padding_side="right"
            )
            trl_pad = time.perf_counter() - start
            output = {
                "completion_ids": ids,
                "completion_mask": mask,
                "advantages": torch.randn(rows),
                "old_per_token_logps": -torch.rand(ids.shape),
            }
            rnd.rewards_per_func = torch.rand(rows, 1)
            trainer._finish_round(output, rnd)
            round_s = time.perf_counter() - round_start
            trainer._round = None
        tokens = sum(len(c) for c in completion_ids)
        explorer_tokens = sum(len(completion_ids[i]) for i in placement.explorer_rows)
        return {
            "backend": backend,
            "rows": rows,
            "alpha": alpha,
            "tokens": tokens,
            "explorer_tokens": explorer_tokens,
            "times": times,
            "memory": memory,
            "trl_pad_s": trl_pad,
            "round_s": round_s,
            "round_peak_memory": round_memory.growth,
        }
    finally:
        if server is not None:
            server.stop()


# ------------------------------------------------------------------------------------------------ driver
def _exponent(a: float, b: float, size_a: float, size_b: float) -> float:
    if a <= 0 or b <= 0 or size_a == size_b:
        return float("nan")
    return math.log(b / a) / math.log(size_b / size_a)


def run(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--backends", nargs="+", default=["server", "offline"], choices=["server", "offline"])
    parser.add_argument("--alpha", type=float, default=1.0, help="explorer share (1.0: the most S2L work)")
    parser.add_argument("--mean_tokens", type=int, default=2048, help="mean completion length (capped at 4,096)")
    parser.add_argument("--processes", type=int, default=PROCESSES)
    parser.add_argument("--reference_tokens_per_s", type=float, default=12_500.0)
    parser.add_argument("--learner_gpus", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_measure", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "s2l_scale_lab")
    workdir.mkdir(parents=True, exist_ok=True)
    if args._measure is not None:  # the child: one measurement, JSON on stdout's last line
        backend, rows, mean = args._measure
        print(json.dumps(measure(backend, int(rows), int(mean), args.alpha, workdir, args.seed)))
        return []
    per_process = PAPER_PROMPTS * GROUP // args.processes
    results = []
    for backend in args.backends:
        for fraction in args.fractions:
            rows = max(GROUP, int(round(per_process * fraction / GROUP)) * GROUP)
            cmd = [sys.executable, __file__, "--_measure", backend, str(rows), str(args.mean_tokens)]
            cmd += ["--alpha", str(args.alpha), "--workdir", str(workdir), "--seed", str(args.seed)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
            if done.returncode != 0:
                raise SystemExit(f"measurement {backend} x {rows} rows failed:\n{done.stderr[-4000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["fraction"] = fraction
            results.append(result)
            print(f"[scale] {backend:7s} {rows:5d} rows: round {result['round_s']:.2f} s", flush=True)
    report(results, args)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    return results


def report(results: list[dict], args) -> None:
    mib = 2**20
    for backend in dict.fromkeys(r["backend"] for r in results):
        rs = [r for r in results if r["backend"] == backend]
        print(
            f"\n### {backend} explorer, alpha = {args.alpha} (one process; times in s, memory = peak growth in MiB)\n"
        )
        head = "| fraction | rows | tokens (M) | " + " | ".join(STAGES) + " | S2L total | trl_pad | round peak MiB |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for r in rs:
            t = r["times"]
            total = sum(t.values())
            cells = " | ".join(f"{t[s]:.3f} ({r['memory'][s] / mib:.0f})" for s in STAGES)
            print(
                f"| {r['fraction']:g} | {r['rows']} | {r['tokens'] / 1e6:.2f} | {cells} | {total:.3f} | "
                f"{r['trl_pad_s']:.3f} | {r['round_peak_memory'] / mib:.0f} |"
            )
        if len(rs) > 1:
            print("\ngrowth exponent (time vs rows x tokens), per step between sizes:")
            for s in [*STAGES, "total"]:
                get = (lambda r: sum(r["times"].values())) if s == "total" else (lambda r, s=s: r["times"][s])
                steps = [_exponent(get(a), get(b), a["tokens"], b["tokens"]) for a, b in zip(rs, rs[1:])]
                print(f"  {s:10s} " + "  ".join(f"{e:.2f}" for e in steps))
        full = rs[-1]
        scale = 1.0 / full["fraction"]
        how = "measured" if full["fraction"] == 1 else f"extrapolated linearly from {full['fraction']:g}x"
        s2l = sum(full["times"].values()) * scale
        round_tokens = PAPER_PROMPTS * GROUP * args.mean_tokens
        learner_s = round_tokens / (args.reference_tokens_per_s * args.learner_gpus)
        print(
            f"\nAt paper scale ({PAPER_PROMPTS} prompts x {GROUP} x ~{args.mean_tokens} tokens, {args.processes} "
            f"processes): S2L's own work per process per round ~{s2l:.1f} s "
            f"({how})"
            f"; a GRPO round's learner generation ~{learner_s:.0f} s ({round_tokens / 1e6:.1f}M tokens at "
            f"{args.reference_tokens_per_s:,.0f} tokens/s x {args.learner_gpus} GPUs): {100 * s2l / learner_s:.2f}%; "
            f"peak memory of the round on this process ~{full['round_peak_memory'] * scale / mib:.0f} MiB."
        )


if __name__ == "__main__":
    run()
