"""What offline rollouts cost the trainer's main process as the rollout file grows (issue 15, item 2).

Writes synthetic rollout files in the authors' schema (token ids, float log-probs, response text; response lengths
drawn around ~2k tokens, seeded) at fractions of paper scale (17.4k prompts x 16 samples x ~2k tokens ~ 557M stored
tokens) and measures, for each size, in fresh processes:

* heap growth per stored (response) token after the first load (conversion) and after a cached load: the growth of
  the process's anonymous resident memory (``RssAnon`` in /proc/self/status). Anonymous memory is everything the
  process allocated itself (Python objects, numpy and Arrow buffers, allocator slack), which is what competes with
  the trainer for RAM; tracemalloc would miss Arrow's allocator and slow Python down. Pages of the memory-mapped
  cache are page cache (``RssFile``: shared, evictable, not heap) and are reported apart;
* first load (conversion) time, cached load time (hot page cache, and cold: the cache file's pages evicted with
  ``posix_fadvise(DONTNEED)``, which touches no other file);
* time per round: ``generate`` for 1,024 prompts x 16 rows, and the heap a round's Python lists take while alive;
* the growth exponent between sizes (``log(cost ratio) / log(size ratio)``; 1 is linear, 0 flat);
* the old path (every row as Python objects, ``read_rollouts``) at the smallest size, for comparison.

Usage::

    python scripts/benchmark_offline_store.py                       # 1/8, 1/4, 1/2 of paper scale
    python scripts/benchmark_offline_store.py --fractions 0.01 0.02 --keep --workdir /tmp/b
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

PAPER_PROMPTS, SAMPLES, MEAN_TOKENS, VOCAB = 17_400, 16, 2_000, 151_936
LOADS: list[tuple[float, float]] = []  # 1-minute load average before / after each measured process


# ------------------------------------------------------------------------------------------------ memory readings
def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (RssAnon, RssFile, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakSampler:
    """Highest RssAnon seen while the block runs (sampled every 10 ms in a thread)."""

    def __enter__(self):
        self.peak, self._stop = _status("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _status("RssAnon"))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


# ------------------------------------------------------------------------------------------------ synthetic file
def write_rollouts(path: Path, prompts: int, seed: int) -> dict:
    """A JSONL file in the authors' schema; returns its row and token counts."""
    import numpy as np

    try:
        import orjson

        def dumps(obj) -> bytes:
            return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    except ImportError:  # pragma: no cover

        def dumps(obj) -> bytes:
            obj = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in obj.items()}
            return (json.dumps(obj) + "\n").encode()

    rng = np.random.default_rng(seed)
    words = "the of and to a in is it that for on with as this step so we have then sum answer".split()
    text = " ".join(rng.choice(words, 40_000))  # ~4 characters per token, sliced per response
    tokens = 0
    with path.open("wb") as f:
        for p in range(prompts):
            problem = f"Problem {p}: what is {int(rng.integers(1e6))} + {int(rng.integers(1e6))}? " * 4
            prompt = [{"role": "user", "content": problem}]
            prompt_ids = rng.integers(0, VOCAB, 150, dtype=np.int64)
            lengths = np.clip(rng.normal(MEAN_TOKENS, 600, SAMPLES), 16, 4_096).astype(int)
            for length in lengths:
                ids = rng.integers(0, VOCAB, length, dtype=np.int64)
                # vLLM hands out float32 log-probs as Python floats: the float64 repr of float32 values.
                lps = (-rng.exponential(0.4, length)).astype(np.float32).astype(np.float64)
                start = int(rng.integers(0, len(text) - 4 * length))
                f.write(
                    dumps(
                        {
                            "prompt_id": f"p{p:06d}",
                            "prompt": prompt,
                            "prompt_ids": prompt_ids,
                            "response": text[start : start + 4 * length],
                            "response_ids": ids,
                            "small_model_log_probs": lps,
                            "reward": 0.0,
                            "is_correct": False,
                            "data_source": "synthetic",
                            "ground_truth": "42",
                        }
                    )
                )
                tokens += int(length)
    return {"rows": prompts * SAMPLES, "tokens": tokens, "bytes": path.stat().st_size}


# ------------------------------------------------------------------------------------------------ phases (subprocess)
def phase_store(path: Path, cache_dir: Path, prompts: int, rounds: int, round_prompts: int, seed: int) -> dict:
    """Open the store (converting or from the cache), then run rounds; all figures of one process."""
    import random

    # Imported before the baseline: fixed import costs are not costs per stored token.
    import datasets  # noqa: F401
    import filelock  # noqa: F401
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401
    import pyarrow.ipc  # noqa: F401

    from s2l_trl.explorers import OfflineExplorer

    base_anon, base_file = _status("RssAnon"), _status("RssFile")
    with PeakSampler() as peak:
        started, cpu = time.perf_counter(), time.process_time()
        explorer = OfflineExplorer(path, seed=seed, vocab_size=VOCAB, cache_dir=cache_dir, cache=True)
        open_s, open_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    out = {
        "open_s": open_s,
        "open_cpu_s": open_cpu_s,
        "heap_after_open": _status("RssAnon") - base_anon,
        "heap_peak_open": peak.peak - base_anon,
        "arrow_allocated": pa.total_allocated_bytes(),
        "rss_file": _status("RssFile") - base_file,
        "cache_bytes": sum(f.stat().st_size for f in explorer.store.cache_path.iterdir()),
        "rows_read_by_open": explorer.store.rows_read,
    }
    # Coverage check as the trainer makes it at start-up (every prompt looked up once).
    started = time.perf_counter()
    examples = [{"prompt_id": f"p{p:06d}"} for p in range(prompts)]
    assert explorer.missing(examples, n=SAMPLES) == []
    out["missing_s"] = time.perf_counter() - started
    pick = random.Random(seed)
    round_s, round_cpu_s, round_heap = [], [], []
    for _ in range(rounds):
        inputs = [examples[i] for i in pick.sample(range(prompts), min(round_prompts, prompts))]
        before = _status("RssAnon")
        with PeakSampler() as peak:
            started, cpu = time.perf_counter(), time.process_time()
            result = explorer.generate([[0]] * len(inputs), SAMPLES, inputs=inputs)
            round_s.append(time.perf_counter() - started)
            round_cpu_s.append(time.process_time() - cpu)
        assert len(result.completion_ids) == len(inputs) * SAMPLES
        round_heap.append(peak.peak - before)
        del result
    out.update(
        round_s=round_s,
        round_cpu_s=round_cpu_s,
        round_heap_peak=max(round_heap) if round_heap else 0,
        heap_after_rounds=_status("RssAnon") - base_anon,
        rss_file_after_rounds=_status("RssFile") - base_file,
        rows_read=explorer.store.rows_read,
    )
    return out


def phase_old(path: Path, round_prompts: int) -> dict:
    """The old path: every row as Python objects (what OfflineExplorer held before the store), and one round drawn
    from them as the old explorer did (copies of the stored lists, log-probs converted element by element)."""
    import random

    from s2l_trl.explorers import read_rollouts

    base_anon = _status("RssAnon")
    with PeakSampler() as peak:
        started, cpu = time.perf_counter(), time.process_time()
        rows = read_rollouts(path, vocab_size=VOCAB)
        load_s, load_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    out = {
        "open_s": load_s,
        "open_cpu_s": load_cpu_s,
        "heap_after_open": _status("RssAnon") - base_anon,
        "heap_peak_open": peak.peak - base_anon,
    }
    by_id: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_id.setdefault(row["prompt_id"], []).append(i)
    pick = random.Random(0)
    started, cpu = time.perf_counter(), time.process_time()
    ids, lps = [], []
    for pid in pick.sample(sorted(by_id), min(round_prompts, len(by_id))):
        for i in pick.sample(by_id[pid], SAMPLES):
            ids.append(list(rows[i]["response_ids"]))
            lps.append([float("nan") if x is None else float(x) for x in rows[i]["small_model_log_probs"]])
    out["round_s"], out["round_cpu_s"] = time.perf_counter() - started, time.process_time() - cpu
    return out


def _evict(cache_dir: Path) -> None:
    """Drop the cache files' pages from the page cache (only these files), for a cold cached load."""
    for file in cache_dir.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _run_phase(args: list[str], timeout: float) -> dict:
    load = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, __file__, "--_phase", *args], capture_output=True, text=True, timeout=timeout
    )
    LOADS.append((load, os.getloadavg()[0]))
    if done.returncode != 0:
        raise RuntimeError(f"phase {args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _exponent(a: float, b: float, size_a: float, size_b: float) -> float:
    if a <= 0 or b <= 0:
        return float("nan")
    return math.log(b / a) / math.log(size_b / size_a)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/s2l_offline_store_bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round_prompts", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_old", action="store_true", help="skip the old (Python lists) path")
    parser.add_argument("--keep", action="store_true", help="keep the rollout files and caches")
    parser.add_argument("--_phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._phase:
        kind, *rest = args._phase
        if kind == "store":
            path, cache, prompts, rounds, round_prompts, seed = rest
            result = phase_store(Path(path), Path(cache), int(prompts), int(rounds), int(round_prompts), int(seed))
        else:
            result = phase_old(Path(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for fraction in sorted(args.fractions):
            results.append(measure(fraction, args))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    report(results)


def measure(fraction: float, args) -> dict:
    """Write the file of one size and run its phases, each in a fresh process."""
    prompts = max(1, round(PAPER_PROMPTS * fraction))
    path = args.workdir / f"rollouts_{fraction:g}.jsonl"
    cache = args.workdir / f"cache_{fraction:g}"
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    info = write_rollouts(path, prompts, args.seed)
    info.update(fraction=fraction, prompts=prompts, write_s=time.perf_counter() - started)
    tag = f"[{fraction:g}]"
    print(f"{tag} wrote {path}: {info['bytes'] / 1e9:.2f} GB, {info['tokens']:,} tokens, {info['write_s']:.0f} s")
    store = ["store", str(path), str(cache), str(prompts)]
    info["first"] = _run_phase([*store, "0", str(args.round_prompts), str(args.seed)], timeout=7200)
    print(f"{tag} converted in {info['first']['open_s']:.1f} s", flush=True)
    info["cached"] = _run_phase([*store, str(args.rounds), str(args.round_prompts), str(args.seed)], timeout=3600)
    _evict(cache)
    info["cold"] = _run_phase([*store, "0", "1", str(args.seed)], timeout=3600)
    hot, cold = info["cached"]["open_s"], info["cold"]["open_s"]
    print(f"{tag} cached load {hot:.2f} s (cold {cold:.2f} s), rounds {info['cached']['round_s']}", flush=True)
    if fraction == min(args.fractions) and not args.skip_old:
        need = int(info["tokens"] * 100)  # ~87-96 bytes per token, with slack
        if _mem_available() > 2 * need:
            info["old"] = _run_phase(["old", str(path), str(args.round_prompts)], timeout=7200)
        else:
            print(f"{tag} old path skipped: it needs ~{need / 1e9:.0f} GB, over half of the memory available")
    if not args.keep:
        path.unlink()
        shutil.rmtree(cache, ignore_errors=True)
    return info


def report(results: list[dict]) -> None:
    gb = 1e9
    columns = [
        "fraction of paper scale",
        "prompts x 16",
        "stored tokens",
        "JSONL",
        "cache on disk",
        "first load (conversion): wall (CPU)",
        "heap / token after first load (peak)",
        "cached load hot / cold",
        "heap / token after cached load",
        "file pages mapped after open / after rounds (RssFile growth)",
        "round (1,024 x 16 rows): wall (CPU)",
        "round's lists (transient heap)",
    ]
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in results:
        t, first, cached, cold = r["tokens"], r["first"], r["cached"], r["cold"]
        rounds = cached["round_s"]
        cells = [
            f"{r['fraction']:g}",
            f"{r['prompts']:,}",
            f"{t / 1e6:.0f}M",
            f"{r['bytes'] / gb:.2f} GB",
            f"{first['cache_bytes'] / gb:.2f} GB",
            f"{first['open_s']:.0f} s ({first['open_cpu_s']:.0f} s)",
            f"{first['heap_after_open'] / t:.2f} B ({first['heap_peak_open'] / t:.2f} B)",
            f"{cached['open_s']:.2f} s / {cold['open_s']:.2f} s",
            f"{cached['heap_after_open'] / t:.3f} B",
            f"{cached['rss_file'] / gb:.2f} / {cached['rss_file_after_rounds'] / gb:.2f} GB",
            f"{_mean(rounds):.2f} s ({_mean(cached['round_cpu_s']):.2f} s)",
            f"{cached['round_heap_peak'] / gb:.2f} GB",
        ]
        print("| " + " | ".join(cells) + " |")
    for r in results:
        if "old" in r:
            o = r["old"]
            print(
                f"\nOld path (every row as Python objects) at {r['fraction']:g}: "
                f"{o['heap_after_open'] / r['tokens']:.1f} bytes of heap per stored token "
                f"({o['heap_after_open'] / gb:.1f} GB, peak {o['heap_peak_open'] / gb:.1f} GB), "
                f"load {o['open_s']:.0f} s ({o['open_cpu_s']:.0f} s CPU), "
                f"one round {o['round_s']:.2f} s ({o['round_cpu_s']:.2f} s CPU)."
            )
    if len(results) > 1:
        print("\nGrowth exponents between consecutive sizes (1 = linear in the file, 0 = flat):")
        figures = {
            "conversion CPU time": lambda r: r["first"]["open_cpu_s"],
            "cached load": lambda r: r["cached"]["open_s"],
            "heap after cached load": lambda r: r["cached"]["heap_after_open"],
            "heap after first load": lambda r: r["first"]["heap_after_open"],
            "round CPU time": lambda r: _mean(r["cached"]["round_cpu_s"]),
        }
        for a, b in zip(results, results[1:]):
            parts = [
                f"{name} {_exponent(get(a), get(b), a['tokens'], b['tokens']):.2f}" for name, get in figures.items()
            ]
            print(f"  {a['fraction']:g} -> {b['fraction']:g}: " + ", ".join(parts))
    for r in results:
        first = r["first"]
        print(
            f"Conversion at {r['fraction']:g}: {r['bytes'] / first['open_s'] / 1e6:.0f} MB/s of JSONL, "
            f"{r['tokens'] / first['open_s'] / 1e6:.2f}M tokens/s, one process."
        )
    loads = [x for pair in LOADS for x in pair]
    print(
        f"Machine: {os.cpu_count()} cores; 1-minute load average around the measured processes "
        f"{min(loads):.1f} to {max(loads):.1f} (other work shares these cores: times are upper bounds)."
    )
    print("\nraw:", json.dumps(results))


if __name__ == "__main__":
    main()
