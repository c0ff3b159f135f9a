"""Where the miniature's float results come from: the processor, its instruction sets, the library versions and the
CPU-kernel settings that decide which code paths torch, MKL and oneDNN take, recorded beside every result, and the
pinned settings a reproducible family build runs under.

Why: CPU kernels pick code paths per processor (torch's vectorised ATen kernels by ``ATEN_CPU_CAPABILITY``, MKL's
GEMM by its dispatcher or ``MKL_CBWR``, oneDNN by ``ONEDNN_MAX_CPU_ISA``), so the same seed, torch version and
thread count give other floats on another machine, and a model trained from them can land in another regime.
``python -m s2l_trl.miniature numerics`` measures which of these settings change a short SFT's weights here and what
pinning them costs (results/miniature/numerics/).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# The settings every kernel library reads once, at its first use in a process.
KERNEL_SETTINGS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
)

# Kernel code paths every x86-64 processor with AVX2 (Intel since 2013, AMD since 2015) runs identically: ATen's AVX2
# kernels, MKL's conditional numerical reproducibility at the AVX2 level (Intel's documented guarantee: the same
# results on every Intel and Intel-compatible processor that supports it, at a fixed thread count) and oneDNN capped
# at AVX2.
PINNED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NUMERICS_MODES = ("native", "pinned_avx2")


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa_flags() -> list[str]:
    """The vector instruction sets the processor reports (AVX, AVX2, AVX-512 variants, AMX, FMA)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    return []


def environment_record() -> dict:
    """What decides a result's floats on this machine: processor, ISA, the capability torch dispatches to, thread
    count, kernel settings and package versions (recorded in ``family.json`` and every ``run.json``)."""
    import importlib.metadata as metadata

    import torch

    versions = {}
    for package in ("torch", "transformers", "trl", "accelerate", "peft", "vllm", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    mkl = None
    if hasattr(torch.backends, "mkl") and torch.backends.mkl.is_available():
        mkl = torch.__config__.show().split("Math Kernel Library Version")[-1].split("for")[0].strip() or "yes"
    return {
        "processor": cpu_model(),
        "machine": platform.machine(),
        "isa_flags": cpu_isa_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "kernel_settings": {name: os.environ.get(name) for name in KERNEL_SETTINGS},
        "numerics": numerics_mode(),
        "mkl": mkl,
        "python": sys.version.split()[0],
        "versions": versions,
    }


def numerics_mode() -> str:
    """``pinned_avx2`` when this process runs under :data:`PINNED_AVX2`, else ``native``."""
    return "pinned_avx2" if all(os.environ.get(k) == v for k, v in PINNED_AVX2.items()) else "native"


def check_mode(mode: str) -> None:
    """Refuse a numerics mode this machine cannot run, before anything is built."""
    if mode not in NUMERICS_MODES:
        raise ValueError(f"numerics must be one of {NUMERICS_MODES}, got {mode!r}.")
    if mode == "pinned_avx2" and "avx2" not in cpu_isa_flags():
        raise ValueError(
            f"numerics='pinned_avx2' needs an x86-64 processor with AVX2; this one ({cpu_model()}, "
            f"{platform.machine()}) has none. Use numerics='native' (--numerics native): its builds are not "
            "comparable with pinned ones, build and compare families under one setting."
        )


def environment_for(mode: str) -> dict[str, str]:
    """The kernel settings a process must start with to run in ``mode`` (``native``: none)."""
    check_mode(mode)
    return dict(PINNED_AVX2) if mode == "pinned_avx2" else {}


def reexec_with(mode: str) -> None:
    """Restart this command in a fresh interpreter with ``mode``'s kernel settings when it does not run under them
    yet: the libraries read them once, at their first use, so they cannot be changed inside a running process."""
    if numerics_mode() == mode:
        return
    env = {k: v for k, v in os.environ.items() if k not in PINNED_AVX2} | environment_for(mode)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


# Kernel settings compared by the probe: this processor as it is, each library capped on its own, another processor
# emulated (every library capped at AVX2, as on an AVX2-only machine), and the two pins, on this processor and on the
# emulated one.
EMULATED_AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PINNED_BASELINE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
PROBE_VARIANTS: dict[str, dict[str, str]] = {
    "native": {},
    "native, again": {},
    "ATen capped at AVX2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "MKL CNR at AVX2": {"MKL_CBWR": "AVX2"},
    "MKL CNR at AVX2, strict": {"MKL_CBWR": "AVX2,STRICT"},
    "oneDNN capped at AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "emulated AVX2 processor": EMULATED_AVX2,
    "pinned_avx2": PINNED_AVX2,
    "pinned_avx2 on the emulated AVX2 processor": {**EMULATED_AVX2, **PINNED_AVX2},
    "pinned_avx2 without STRICT": {**PINNED_AVX2, "MKL_CBWR": "AVX2"},
    "pinned_avx2 without STRICT on the emulated AVX2 processor": {**EMULATED_AVX2, **PINNED_AVX2, "MKL_CBWR": "AVX2"},
    "pinned to the baseline ISA": PINNED_BASELINE,
    "pinned to the baseline ISA on the emulated AVX2 processor": {**EMULATED_AVX2, **PINNED_BASELINE},
}


def sft_fingerprint(
    size: str, steps: int, schedule_steps: int | None = None, train_problems: int | None = None
) -> dict:
    """The family recipe's SFT of ``size`` (original build, one thread) stopped after ``steps`` of a
    ``schedule_steps``-step schedule (default: the family's), on the family's corpus or its first ``train_problems``
    problems: its weight checksum and CPU seconds."""
    import tempfile
    import time

    import torch
    from transformers import AutoTokenizer

    from . import task
    from .family import SIZES, FamilySpec, build_tokenizer, init_model, train_rows
    from .runs import weights_checksum

    torch.set_num_threads(1)
    spec = FamilySpec(train_problems=train_problems or FamilySpec.train_problems)
    with tempfile.TemporaryDirectory(prefix="s2l-numerics-") as tmp:
        build_tokenizer(Path(tmp) / "tok", seed=spec.seed)
        tokenizer = AutoTokenizer.from_pretrained(Path(tmp) / "tok")
    corpus = task.corpus_pairs(train_rows(spec), seed=spec.seed + 2, shortcut=False)
    model = init_model(tokenizer, SIZES[size], seed=spec.build_seed)
    start = time.process_time()
    _sft_until(model, tokenizer, corpus, spec, steps, schedule_steps or spec.sft_steps)
    return {
        "size": size,
        "steps": steps,
        "schedule_steps": schedule_steps or spec.sft_steps,
        "train_problems": spec.train_problems,
        "weights_sha256": weights_checksum(model),
        "cpu_seconds": round(time.process_time() - start, 2),
        "environment": environment_record(),
    }


class _Stop(Exception):
    pass


def _sft_until(model, tokenizer, corpus, spec, steps: int, schedule_steps: int) -> None:
    """The family's SFT with a ``schedule_steps`` learning-rate schedule, stopped after ``steps``."""
    import tempfile

    from .family import sft

    def stop(step: int, _model) -> None:
        raise _Stop

    with tempfile.TemporaryDirectory(prefix="s2l-numerics-") as tmp:
        try:
            sft(
                model,
                tokenizer,
                corpus,
                schedule_steps,
                spec.batch_size,
                spec.lr,
                spec.build_seed,
                {steps: Path(tmp) / "stop"} if steps < schedule_steps else None,
                "numerics",
                on_checkpoint=stop,
            )
        except _Stop:
            pass


def probe(
    size: str, steps: int, variants: dict[str, dict[str, str]] | None = None, train_problems: int | None = None
) -> dict:
    """:func:`sft_fingerprint` under every kernel setting of ``variants`` (default :data:`PROBE_VARIANTS`), each in
    a fresh interpreter (the libraries read their settings once per process)."""
    import json
    import subprocess

    results = {}
    for name, settings in (variants or PROBE_VARIANTS).items():
        env = {k: v for k, v in os.environ.items() if k not in KERNEL_SETTINGS[:4]} | settings
        code = (
            "import json; from s2l_trl.miniature.numerics import sft_fingerprint; "
            f"print(json.dumps(sft_fingerprint({size!r}, {steps}, train_problems={train_problems!r})))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        results[name] = {"settings": settings, **json.loads(out.stdout.strip().splitlines()[-1])}
    return results


def render_probe(results: dict) -> str:
    """The probe's table: each kernel setting, its checksum class (same letter: bit-identical weights) and CPU time."""
    classes: dict[str, str] = {}
    for r in results.values():
        classes.setdefault(r["weights_sha256"], "ABCDEFGHIJ"[len(classes)])
    first = next(iter(results.values()))
    env = first["environment"]
    widest = "AVX-512" if any(f.startswith("avx512") for f in env["isa_flags"]) else "AVX2 at most"
    lines = [
        f"SFT of {first['size']} for {first['steps']} steps of the family's {first['schedule_steps']}-step recipe, one "
        f"thread, on {env['processor']} ({widest}), torch {env['versions']['torch']}. Same letter: bit-identical "
        "weights.",
        "",
        "| kernel settings | variables | weights | class | CPU s |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        settings = " ".join(f"{k}={v}" for k, v in r["settings"].items()) or "(none)"
        lines.append(
            f"| {name} | `{settings}` | `{r['weights_sha256']}` | {classes[r['weights_sha256']]} | {r['cpu_seconds']} |"
        )
    return "\n".join(lines) + "\n"
