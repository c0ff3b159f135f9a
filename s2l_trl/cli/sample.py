"""`s2l-sample`: offline explorer rollouts for S2L-PO's `explorer_rollouts`, in the authors' JSONL schema.

    s2l-sample --model_path Qwen/Qwen3-0.6B --output_dir rollouts/dapo_qwen3-0.6b --num_generations 16
    s2l-sample --model_path <explorer> --backend server --server_base_url http://127.0.0.1:8000 \\
        --dataset data/train.jsonl --num_shards 4 --shard_index 0      # one of four workers

Default data set: BytedTsinghua-SIA/DAPO-Math-17k (see s2l_trl/sampling/rollouts.py for its prompt format).
Re-running the same command resumes: prompts with all G samples are skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..explorers.base import SamplingSettings
from ..explorers.factory import SAMPLING_BACKENDS as BACKENDS
from ..sampling.rollouts import DEFAULT_DATASET, DEFAULT_SAMPLING, sample_rollouts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s2l-sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model_path", required=True, help="explorer model id or path")
    p.add_argument("--output_dir", required=True, help="folder of rollouts.jsonl (and the shard files)")
    p.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help=f"Hub id or local JSONL/parquet/save_to_disk path (default: {DEFAULT_DATASET})",
    )
    p.add_argument("--dataset_config", default=None)
    p.add_argument("--split", default="train")
    p.add_argument("--prompt_column", default="prompt")
    p.add_argument(
        "--answer_column",
        default=None,
        help="gold answer column, dotted for nested fields (default: solution / answer / ground_truth "
        "/ reward_model.ground_truth)",
    )
    p.add_argument("--data_source", default=None, help="data_source for rows without one (default: the data set)")
    p.add_argument("--max_prompts", type=int, default=None)
    p.add_argument("--no_dedupe", action="store_true", help="keep repeated prompts (data sets without prompt_id)")
    p.add_argument("--num_generations", type=int, default=16, help="G, samples per prompt (default: 16)")
    p.add_argument("--backend", choices=(*BACKENDS, "transformers"), default="vllm")
    p.add_argument("--server_base_url", default=None)
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--tensor_parallel_size", type=int, default=1)
    p.add_argument("--dtype", default="auto", help="vLLM weight dtype (float32 for the tiny CPU models)")
    p.add_argument("--max_model_len", type=int, default=None)
    p.add_argument("--gpu_memory_utilization", type=float, default=0.9)
    p.add_argument("--enforce_eager", action="store_true", help="skip CUDA graphs (required on CPU)")
    p.add_argument("--temperature", type=float, default=DEFAULT_SAMPLING.temperature)
    p.add_argument("--top_p", type=float, default=DEFAULT_SAMPLING.top_p)
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--max_tokens", type=int, default=DEFAULT_SAMPLING.max_tokens)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_shards", type=int, default=1)
    p.add_argument("--shard_index", type=int, default=0)
    p.add_argument("--batch_prompts", type=int, default=8, help="prompts per generation request")
    p.add_argument("--batch_size", type=int, default=64, help="rows per generate call (transformers backend)")
    return p


def main(argv: list[str] | None = None):
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sampling = SamplingSettings(
        temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, max_tokens=a.max_tokens, seed=a.seed
    )
    vllm_kwargs = {
        "dtype": a.dtype,
        "max_model_len": a.max_model_len,
        "gpu_memory_utilization": a.gpu_memory_utilization,
        "enforce_eager": a.enforce_eager,
    }
    path = sample_rollouts(
        a.dataset,
        a.output_dir,
        a.model_path,
        backend=a.backend,
        tokenizer_path=a.tokenizer_path,
        num_generations=a.num_generations,
        sampling=sampling,
        server_base_url=a.server_base_url,
        tensor_parallel_size=a.tensor_parallel_size,
        vllm_kwargs=vllm_kwargs,
        split=a.split,
        dataset_config=a.dataset_config,
        prompt_column=a.prompt_column,
        answer_column=a.answer_column,
        data_source=a.data_source,
        max_prompts=a.max_prompts,
        num_shards=a.num_shards,
        shard_index=a.shard_index,
        batch_prompts=a.batch_prompts,
        batch_size=a.batch_size,
        dedupe=not a.no_dedupe,
    )
    print(f"rollouts: {path}")
    return path


def cli() -> None:
    main()


if __name__ == "__main__":
    cli()
