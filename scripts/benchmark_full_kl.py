"""Peak memory and time of CoDistill's exact KL term (`kd_mode="full_kl"`) with a Qwen-sized vocabulary, against
the direct computation from both models' full logits, as the number of small-model positions grows.

    python scripts/benchmark_full_kl.py [--vocab 151936] [--positions 512 2048 8192 16384] [--direct_up_to 2048]

Each measurement runs in a fresh process (forward and backward of the KL, the gradient reaching the small model's
hidden states and LM head): its peak resident memory above the process's baseline after the inputs exist, and its
time. The chunked kernel (TRL's, the one `kd_mode="full_kl"` uses) projects float32 tiles of 4,096 positions x
32,768 vocabulary entries, so its memory stops growing at 4,096 positions; the direct computation holds several
`(positions, vocabulary)` float32 tensors, so it grows linearly. Hidden sizes are small (64 / 128) so that the
projections finish on a CPU; the tile and logit memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(method: str, positions: int, vocab: int, small_hidden: int, large_hidden: int) -> dict:
    """One forward + backward of the KL in this process: peak RSS above the baseline (MiB) and seconds."""
    import torch

    from s2l_trl.codistill.objectives import LMHead, reverse_kl_per_token

    torch.manual_seed(0)
    h_s = torch.randn(positions, small_hidden, requires_grad=True)
    w_s = (torch.randn(vocab, small_hidden) * 0.05).requires_grad_()
    h_l = torch.randn(positions, large_hidden)
    w_l = torch.randn(vocab, large_hidden) * 0.05
    baseline = _rss_mib()
    start = time.perf_counter()
    if method == "chunked":
        kl = reverse_kl_per_token(h_s, LMHead(w_s), h_l, LMHead(w_l))
    else:
        small = torch.log_softmax(h_s @ w_s.T, dim=-1)
        large = torch.log_softmax(h_l @ w_l.T, dim=-1)
        kl = (small.exp() * (small - large)).sum(-1)
    kl.mean().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"method": method, "positions": positions, "extra_peak_mib": peak - baseline, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151936, help="vocabulary rows (Qwen2.5 / Qwen3: 151,936)")
    parser.add_argument("--positions", type=int, nargs="+", default=[512, 2048, 8192, 16384])
    parser.add_argument("--direct_up_to", type=int, default=2048, help="largest position count for the direct way")
    parser.add_argument("--small_hidden", type=int, default=64)
    parser.add_argument("--large_hidden", type=int, default=128)
    parser.add_argument("--output", help="JSON file for the measurements")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "POSITIONS"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        method, positions = a.worker[0], int(a.worker[1])
        print(json.dumps(measure(method, positions, a.vocab, a.small_hidden, a.large_hidden)))
        return
    from s2l_trl.miniature.numerics import environment_record

    rows = []
    print(f"vocabulary {a.vocab}, hidden sizes {a.small_hidden} / {a.large_hidden}, forward + backward of the KL")
    print("| positions | chunked: extra peak (MiB) | chunked (s) | direct: extra peak (MiB) | direct (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for positions in a.positions:
        found = {}
        for method in ("chunked", "direct"):
            if method == "direct" and positions > a.direct_up_to:
                continue
            argv = [sys.executable, __file__, "--worker", method, str(positions), "--vocab", str(a.vocab)]
            argv += ["--small_hidden", str(a.small_hidden), "--large_hidden", str(a.large_hidden)]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            found[method] = json.loads(out.strip().splitlines()[-1])
            rows.append(found[method])
        c, d = found["chunked"], found.get("direct")
        direct = f"{d['extra_peak_mib']:.0f} | {d['seconds']:.2f}" if d else "- | -"
        ratio = f"{d['extra_peak_mib'] / c['extra_peak_mib']:.1f}" if d else "-"
        print(f"| {positions} | {c['extra_peak_mib']:.0f} | {c['seconds']:.2f} | {direct} | {ratio} |", flush=True)
    if a.output:
        with open(a.output, "w") as f:
            json.dump({"environment": environment_record(), "vocab": a.vocab, "runs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
