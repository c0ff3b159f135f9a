#!/usr/bin/env bash
# Install the oldest TRL release s2l-trl supports (plus Triton, whose CPU interpreter that release needs) into a
# folder that goes in front of .venv on PYTHONPATH:
#   bash scripts/oldest_trl_env.sh DIR && TRITON_INTERPRET=1 PYTHONPATH=DIR .venv/bin/python -m pytest tests/test_trainer.py
# Idempotent: an existing folder with the right TRL is kept.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$(mkdir -p "${1:?usage: oldest_trl_env.sh DIR}" && cd "$1" && pwd)"
python="$here/.venv/bin/python"
oldest="$("$python" -c 'from s2l_trl.trl_compat import TESTED_TRL; print(TESTED_TRL[0])')"
if PYTHONPATH="$target" "$python" -c "import sys, trl; sys.exit(trl.__version__ != '$oldest' or not trl.__file__.startswith('$target'))" 2>/dev/null; then
    echo "[oldest-trl] trl $oldest already in $target"
    exit 0
fi
echo "[oldest-trl] installing trl==$oldest and triton into $target"
"$python" -m pip install -q --no-deps --target "$target" "trl==$oldest" "triton==3.9.0" 2> >(grep -v "WARNING: Location" >&2)
