"""What checking explorer log-probs where they enter costs (issue 26), against the work already done there.

Log-probs entering from outside (a server's answers, a rollout file, a custom explorer's lists) are checked to be
log-probabilities: finite, <= 0 (1e-3 above 0 allowed for rounding), one per token. At paper scale a round holds
~67M explorer tokens (1,024 prompts x 16 x up to 4,096), ~8.4M per training process. This script times, on synthetic
data of that shape (completion lengths log-normal around ``--mean_tokens``, capped at 4,096):

* server answers: decoding the `/v1/completions` JSON of one request (16 completions) with the explorer's decoder,
  and the added check of its log-probs (``logprob_problem(logprob_values(...))``);
* a custom explorer's `ExplorerOutput` (Python lists): the check ``generate_checked`` adds (length match + values);
* offline conversion: the vectorised check of an Arrow batch, against building that batch from parsed rows.

Each figure is CPU time of this process (``time.process_time``: robust to other load on the machine), the median
of ``--repeats`` runs, per million tokens, and the check's cost as a share of the work it sits beside.

    python scripts/benchmark_logprob_checks.py                 # 64 requests x 16 completions, ~2k tokens each
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="answers of 16 completions each")
    parser.add_argument("--mean_tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import pyarrow as pa

    from s2l_trl.explorers.base import ExplorerOutput, check_output_logprobs, logprob_problem, logprob_values
    from s2l_trl.explorers.rollout_store.conversion import _list_array, _logprob_problems
    from s2l_trl.explorers.server.completions import _decode_choices, _sampled_logprobs

    rng = np.random.default_rng(args.seed)
    n = 16
    bodies, rows_ids, rows_lps = [], [], []
    for r in range(args.requests):
        lengths = np.minimum(4096, np.maximum(1, rng.lognormal(np.log(args.mean_tokens) - 0.125, 0.5, n))).astype(int)
        choices = []
        for k, length in enumerate(lengths):
            ids = rng.integers(3, 150_000, length).tolist()
            lps = (-rng.exponential(0.6, length)).astype(np.float32).astype(float).tolist()
            rows_ids.append(ids)
            rows_lps.append(lps)
            names = [f"token_id:{t}" for t in ids]
            choices.append(  # shaped like vLLM's answer to the explorer's request (logprobs=0)
                {
                    "index": k,
                    "text": "tok " * length,
                    "logprobs": {
                        "text_offset": list(range(0, 4 * length, 4)),
                        "token_logprobs": lps,
                        "tokens": names,
                        "top_logprobs": [{name: lp} for name, lp in zip(names, lps)],
                    },
                    "token_ids": ids,
                    "prompt_token_ids": [1, 2, 3],
                    "finish_reason": "stop",
                }
            )
        bodies.append(json.dumps({"id": f"cmpl-{r}", "choices": choices}).encode())
    tokens = sum(map(len, rows_ids))
    per_m = 1e6 / tokens

    decoded = [_sampled_logprobs(_decode_choices(b)) for b in bodies]
    decode_s = _timed(lambda: [_sampled_logprobs(_decode_choices(b)) for b in bodies], args.repeats)
    check_s = _timed(lambda: [logprob_problem(logprob_values(lps)) for lps in decoded], args.repeats)
    assert all(logprob_problem(logprob_values(lps)) is None for lps in decoded)

    output = ExplorerOutput(completion_ids=rows_ids, logprobs=rows_lps)
    custom_s = _timed(lambda: check_output_logprobs(output, "bench"), args.repeats)

    def build_batch():
        return pa.RecordBatch.from_arrays(
            [_list_array([np.array(v, dtype=np.float64) for v in rows_lps], np.float32, pa.float32())],
            names=["small_model_log_probs"],
        )

    batch = build_batch()
    build_s = _timed(build_batch, args.repeats)
    offline_s = _timed(lambda: _logprob_problems(batch), args.repeats)

    print(f"{args.requests} answers x {n} completions, {tokens:,} tokens (mean {tokens / len(rows_ids):.0f})")
    print(f"{'where':<34} {'check, s / M tokens':>20} {'beside, s / M tokens':>21} {'share':>7}")
    for name, check, beside in [
        ("server answer (vs JSON decoding)", check_s, decode_s),
        ("custom ExplorerOutput (lists)", custom_s, None),
        ("offline batch (vs building it)", offline_s, build_s),
    ]:
        share = f"{check / beside:.1%}" if beside else "-"
        beside_text = f"{beside * per_m:.3f}" if beside else "-"
        print(f"{name:<34} {check * per_m:>20.3f} {beside_text:>21} {share:>7}")
    paper_m = 67.1 / 8  # million tokens per process and round at paper scale
    print(
        f"at paper scale per process and round ({paper_m:.1f}M tokens): server check "
        f"{check_s * per_m * paper_m:.2f} s of CPU in the explorer thread, custom-explorer check "
        f"{custom_s * per_m * paper_m:.2f} s"
    )


if __name__ == "__main__":
    main()
