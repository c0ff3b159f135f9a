#!/usr/bin/env bash
# Launch one S2L-PO (or baseline GRPO) run on a GPU node: explorer server, learner vLLM server, then training.
#
#   recipes/launch/s2l_po.sh --recipe recipes/Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml [options] [-- ARGS]
#
# What it does, in order:
#   1. explorer:  CUDA_VISIBLE_DEVICES=<explorer GPUs> vllm serve <explorer> --port 8001 ...
#        --logprobs-mode processed_logprobs
#      The explorer is frozen, so it is a plain vLLM server: no weight sync. --logprobs-mode processed_logprobs makes
#      it return the log-probs of the distribution it samples from (temperature 0.7, top-p 0.95), which explorer
#      importance sampling needs (the trainer checks it at start-up); vLLM's default returns raw, untempered ones.
#      --explorer-server trl starts it with `trl vllm-serve` instead, as before (deprecated, gone in TRL 2.0; it
#      passes the same flag itself). Give it several GPUs with
#      --explorer-dp (data parallel: independent replicas, best for a 1.7B/4B model that fits on one GPU) or
#      --explorer-tp (tensor parallel: one model split over GPUs, for explorers too big for one GPU);
#      the explorer GPU count must equal tp x dp. With --explorer-servers N the explorer GPUs are split into N
#      groups, one independent server each (ports P, P+1, ...), and the trainer gets all their URLs
#      (explorer_server_base_url=url1,url2,...): its requests go to the least loaded server, and a server that dies
#      is dropped while the others carry on.
#   2. learner vLLM server (if --learner-gpus is not empty and the recipe has use_vllm: true, vllm_mode: server):
#      CUDA_VISIBLE_DEVICES=<learner GPUs> trl vllm-serve --model <learner> --port 8000 ...
#      TRL pushes the learner's weights to it after every optimizer step (NCCL, vllm_group_port 51216).
#   3. waits until every started server answers GET /health (bounded by --health-timeout; fails early, with the
#      log tail, if a server dies), then
#   4. CUDA_VISIBLE_DEVICES=<train GPUs> accelerate launch --config_file <accelerate config> --num_processes N ...
#        -m s2l_trl.cli.train --config <recipe> [ARGS]
#   5. on exit (normal end, error, Ctrl-C, SIGTERM from the scheduler) stops the servers it started, by the process
#      group of the PID it recorded, and nothing else.
#
# Options (defaults in brackets; models, ports and max_model_len default to the recipe's own values):
#   --recipe PATH               recipe YAML (required)
#   --accelerate-config PATH    [recipes/accelerate_configs/zero3.yaml]
#   --explorer-model ID         [recipe explorer_model]
#   --explorer-gpus LIST        [0,1]            --explorer-tp N [1]   --explorer-dp N [#GPUs / tp]
#   --explorer-port N           [port of recipe explorer_server_base_url, else 8001]; server k listens on N + k
#   --explorer-servers N        [1] independent explorer servers, each on #explorer GPUs / N GPUs (tp x dp each)
#   --explorer-server KIND      [vllm] `vllm serve` (vllm) or `trl vllm-serve` (trl) for the explorer
#   --no-explorer               start no explorer (GRPO baselines)
#   --learner-model ID          [recipe model_name_or_path]
#   --learner-gpus LIST         [2,3]; '' = no learner server (use_vllm: false or vllm_mode: colocate)
#   --learner-tp N [1]          --learner-dp N [#GPUs / tp]
#   --learner-port N            [port of recipe vllm_server_base_url, else 8000]
#   --max-model-len N           [recipe vllm_max_model_length]
#   --gpu-memory-utilization F  [0.9] for both servers
#   --train-gpus LIST           [4,5,6,7] GPUs of the training processes on this node
#   --health-timeout SECONDS    [1200]
#   --log-dir DIR               [logs] server logs: DIR/explorer_server.log, DIR/learner_server.log
#   --dry-run                   print the exact commands and exit without starting anything
#   -- ARGS                     passed to the trainer, e.g. -- --max_steps 10 --report_to none
#
# Multi-node (N nodes, run this script once per node, e.g. from srun): the servers run on machine rank 0 only and
# bind 0.0.0.0; every node's trainer reaches them at $MASTER_ADDR (the script passes --explorer_server_base_url /
# --vllm_server_base_url accordingly). Topology comes from the launcher environment:
#   NUM_MACHINES (or SLURM_NNODES) [1], MACHINE_RANK (or NODE_RANK, SLURM_NODEID) [0],
#   MASTER_ADDR [127.0.0.1], MASTER_PORT [29500]
# and --num_processes is (#train GPUs per node) x NUM_MACHINES. Non-zero ranks still use --train-gpus locally.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
log_prefix="s2l_po"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

recipe=""
accelerate_config="recipes/accelerate_configs/zero3.yaml"
explorer_model=""
explorer_gpus="0,1"
explorer_tp=1
explorer_dp=""
explorer_port=""
use_explorer=1
explorer_servers=1
explorer_server="vllm"
learner_model=""
learner_gpus="2,3"
learner_tp=1
learner_dp=""
learner_port=""
max_model_len=""
gpu_memory_utilization="0.9"
train_gpus="4,5,6,7"
health_timeout=1200
log_dir="logs"
dry_run=0
trainer_args=()

while [ "$#" -gt 0 ]; do
    case "$1" in
        --recipe) need "$@"; recipe="$2"; shift 2 ;;
        --accelerate-config) need "$@"; accelerate_config="$2"; shift 2 ;;
        --explorer-model) need "$@"; explorer_model="$2"; shift 2 ;;
        --explorer-gpus) need "$@"; explorer_gpus="$2"; shift 2 ;;
        --explorer-tp) need "$@"; explorer_tp="$2"; shift 2 ;;
        --explorer-dp) need "$@"; explorer_dp="$2"; shift 2 ;;
        --explorer-port) need "$@"; explorer_port="$2"; shift 2 ;;
        --explorer-servers) need "$@"; explorer_servers="$2"; shift 2 ;;
        --explorer-server) need "$@"; explorer_server="$2"; shift 2 ;;
        --no-explorer) use_explorer=0; shift ;;
        --learner-model) need "$@"; learner_model="$2"; shift 2 ;;
        --learner-gpus) need "$@"; learner_gpus="$2"; shift 2 ;;
        --learner-tp) need "$@"; learner_tp="$2"; shift 2 ;;
        --learner-dp) need "$@"; learner_dp="$2"; shift 2 ;;
        --learner-port) need "$@"; learner_port="$2"; shift 2 ;;
        --max-model-len) need "$@"; max_model_len="$2"; shift 2 ;;
        --gpu-memory-utilization) need "$@"; gpu_memory_utilization="$2"; shift 2 ;;
        --train-gpus) need "$@"; train_gpus="$2"; shift 2 ;;
        --health-timeout) need "$@"; health_timeout="$2"; shift 2 ;;
        --log-dir) need "$@"; log_dir="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage_of "${BASH_SOURCE[0]}"; exit 0 ;;
        --) shift; trainer_args=("$@"); break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[ -n "$recipe" ] || die "--recipe is required (see --help)"
[ -f "$recipe" ] || die "recipe $recipe not found"
[ -f "$accelerate_config" ] || die "accelerate config $accelerate_config not found"

recipe_value() { recipe_value_of "$recipe" "$1"; }

num_machines="${NUM_MACHINES:-${SLURM_NNODES:-1}}"
machine_rank="${MACHINE_RANK:-${NODE_RANK:-${SLURM_NODEID:-0}}}"
main_ip="${MASTER_ADDR:-127.0.0.1}"
main_port="${MASTER_PORT:-29500}"
if [ "$num_machines" -gt 1 ]; then bind_host="0.0.0.0"; server_host="$main_ip"; else bind_host="127.0.0.1"; server_host="127.0.0.1"; fi

[ -n "$max_model_len" ] || max_model_len="$(recipe_value vllm_max_model_length)"
if [ "$use_explorer" = 1 ]; then
    [ -n "$explorer_model" ] || explorer_model="$(recipe_value explorer_model)"
    [ -n "$explorer_model" ] || die "no explorer model: set explorer_model in the recipe or pass --explorer-model"
    [ -n "$explorer_port" ] || explorer_port="$(url_port "$(recipe_value explorer_server_base_url)" 8001)"
    [[ "$explorer_servers" =~ ^[1-9][0-9]*$ ]] || die "--explorer-servers must be a positive integer, got $explorer_servers"
    case "$explorer_server" in
        trl|vllm) ;;
        *) die "--explorer-server must be vllm (vllm serve) or trl (trl vllm-serve), got '$explorer_server'" ;;
    esac
    n_explorer_gpus="$(count_gpus "$explorer_gpus")"
    [ $(( n_explorer_gpus % explorer_servers )) -eq 0 ] \
        || die "explorer GPUs ($explorer_gpus) must split evenly over --explorer-servers $explorer_servers"
    gpus_per_explorer=$(( n_explorer_gpus / explorer_servers ))
    [ -n "$explorer_dp" ] || explorer_dp=$(( gpus_per_explorer / explorer_tp ))
    [ $(( explorer_tp * explorer_dp )) -eq "$gpus_per_explorer" ] \
        || die "each explorer server's GPUs ($gpus_per_explorer) must number tp x dp = $explorer_tp x $explorer_dp"
fi
use_learner_server=0
if [ -n "$learner_gpus" ] && [ "$(recipe_value use_vllm)" = "true" ] && [ "$(recipe_value vllm_mode)" = "server" ]; then
    use_learner_server=1
    [ -n "$learner_model" ] || learner_model="$(recipe_value model_name_or_path)"
    [ -n "$learner_port" ] || learner_port="$(url_port "$(recipe_value vllm_server_base_url)" 8000)"
    n_learner_gpus="$(count_gpus "$learner_gpus")"
    [ -n "$learner_dp" ] || learner_dp=$(( n_learner_gpus / learner_tp ))
    [ $(( learner_tp * learner_dp )) -eq "$n_learner_gpus" ] \
        || die "learner GPUs ($learner_gpus) must number tp x dp = $learner_tp x $learner_dp"
fi
num_processes=$(( $(count_gpus "$train_gpus") * num_machines ))
# One log per explorer server: explorer_server.log for a single one (as before), explorer_server_<k>.log otherwise.
explorer_log() { if [ "$explorer_servers" = 1 ]; then echo explorer_server.log; else echo "explorer_server_$1.log"; fi; }

# server_args KIND MODEL TP DP PORT: the words of one server command (see serve_cmd in common.sh), one per line.
server_args() { serve_cmd "$1" "$2" "$3" "$4" "$bind_host" "$5" "$gpu_memory_utilization" "$max_model_len"; }
learner=(); explorer_cmds=(); explorer_gpu_groups=(); explorer_urls=(); learner_cmd=""
if [ "$use_explorer" = 1 ]; then
    IFS=, read -r -a all_explorer_gpus <<<"$explorer_gpus"
    for (( k = 0; k < explorer_servers; k++ )); do
        group="$(IFS=,; echo "${all_explorer_gpus[*]:$(( k * gpus_per_explorer )):$gpus_per_explorer}")"
        mapfile -t explorer < <(server_args "$explorer_server" "$explorer_model" "$explorer_tp" "$explorer_dp" \
            $(( explorer_port + k )))
        explorer_cmds+=("$(printf '%q ' "${explorer[@]}")")
        explorer_gpu_groups+=("$group")
        explorer_urls+=("http://$server_host:$(( explorer_port + k ))")
    done
fi
if [ "$use_learner_server" = 1 ]; then
    # The learner's server takes TRL's weight pushes after every optimizer step: `trl vllm-serve`.
    mapfile -t learner < <(server_args trl "$learner_model" "$learner_tp" "$learner_dp" "$learner_port")
    learner_cmd="$(printf '%q ' "${learner[@]}")"
fi

train=(accelerate launch --config_file "$accelerate_config" --num_processes "$num_processes"
       --num_machines "$num_machines" --machine_rank "$machine_rank"
       --main_process_ip "$main_ip" --main_process_port "$main_port"
       -m s2l_trl.cli.train --config "$recipe")
# Servers always live on rank 0; point every node's trainer at them (the recipes say 127.0.0.1).
[ "$use_explorer" = 0 ] || train+=(--explorer_server_base_url "$(IFS=,; echo "${explorer_urls[*]}")")
[ "$use_learner_server" = 0 ] || train+=(--vllm_server_base_url "http://$server_host:$learner_port")
train+=("${trainer_args[@]}")
train_cmd="$(printf '%q ' "${train[@]}")"

start_servers=0; [ "$machine_rank" = 0 ] && start_servers=1

if [ "$dry_run" = 1 ]; then
    echo "# s2l_po.sh dry run: machine rank $machine_rank of $num_machines; commands in launch order"
    if [ "$start_servers" = 1 ]; then
        for k in "${!explorer_cmds[@]}"; do
            echo "CUDA_VISIBLE_DEVICES=${explorer_gpu_groups[$k]} ${explorer_cmds[$k]}> $log_dir/$(explorer_log "$k") 2>&1 &"
        done
        [ -z "$learner_cmd" ] || echo "CUDA_VISIBLE_DEVICES=$learner_gpus $learner_cmd> $log_dir/learner_server.log 2>&1 &"
    fi
    for url in "${explorer_urls[@]}"; do echo "# wait for $url/health (<= ${health_timeout} s)"; done
    [ -z "$learner_cmd" ] || echo "# wait for http://$server_host:$learner_port/health (<= ${health_timeout} s)"
    echo "CUDA_VISIBLE_DEVICES=$train_gpus $train_cmd"
    exit 0
fi

install_cleanup
mkdir -p "$log_dir"
explorer_pids=(); learner_pid=""
for k in "${!explorer_cmds[@]}"; do
    [ "$start_servers" = 1 ] || break
    echo "[s2l_po] starting explorer $k: ${explorer_cmds[$k]}"
    mapfile -t explorer < <(server_args "$explorer_server" "$explorer_model" "$explorer_tp" "$explorer_dp" \
        $(( explorer_port + k )))
    start_in_group "$log_dir/$(explorer_log "$k")" CUDA_VISIBLE_DEVICES="${explorer_gpu_groups[$k]}" -- \
        "${explorer[@]}"
    explorer_pids+=("$last_pid")
done
if [ "$start_servers" = 1 ] && [ -n "$learner_cmd" ]; then
    echo "[s2l_po] starting learner vLLM server: $learner_cmd"
    start_in_group "$log_dir/learner_server.log" CUDA_VISIBLE_DEVICES="$learner_gpus" -- "${learner[@]}"
    learner_pid=$last_pid
fi
for k in "${!explorer_urls[@]}"; do
    wait_healthy "${explorer_urls[$k]}" "${explorer_pids[$k]:-}" "$log_dir/$(explorer_log "$k")" "$health_timeout"
done
[ -z "$learner_cmd" ] || wait_healthy "http://$server_host:$learner_port" "$learner_pid" \
    "$log_dir/learner_server.log" "$health_timeout"

echo "[s2l_po] training: $train_cmd"
CUDA_VISIBLE_DEVICES="$train_gpus" "${train[@]}"
