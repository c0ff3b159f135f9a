#!/usr/bin/env bash
# Launch one CoDistill-GRPO run (a large and a small model trained together) on one or more GPU nodes.
#
#   recipes/launch/codistill.sh --recipe recipes/Qwen2.5-Math-7B/codistill/config_small_1.5b.yaml [options] [-- ARGS]
#
# What it does: CUDA_VISIBLE_DEVICES=<train GPUs> accelerate launch --config_file <accelerate config>
#   --num_processes N ... -m s2l_trl.cli.codistill --config <recipe> [ARGS]
# No server is started: the small model samples the rollouts (the large model samples nothing at the default
# alpha = 1), every process its own rows, with the colocated vLLM engine the GPU recipes turn on (`small_use_vllm:
# true`, weights pushed after each of the small model's optimizer steps) or in-process with transformers; every GPU
# trains. Both models are one module with one optimizer, so the accelerate config's engine (DDP, DeepSpeed ZeRO-2/3,
# FSDP2) shards both (docs/codistill.md).
#
# Options (defaults in brackets):
#   --recipe PATH               recipe YAML (required)
#   --accelerate-config PATH    [recipes/accelerate_configs/zero3.yaml] ddp.yaml fits models up to a few B with LoRA;
#                               zero2.yaml, fsdp.yaml (FSDP2) also work
#   --train-gpus LIST           [0,1,2,3,4,5,6,7] GPUs of the training processes on this node
#   --dry-run                   print the exact command and exit without starting anything
#   -- ARGS                     passed to the trainer, e.g. -- --max_steps 10 --report_to none
#
# Multi-node: run once per node; topology from NUM_MACHINES (or SLURM_NNODES) [1], MACHINE_RANK (or NODE_RANK,
# SLURM_NODEID) [0], MASTER_ADDR [127.0.0.1], MASTER_PORT [29500].
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
log_prefix="codistill"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

recipe=""
accelerate_config="recipes/accelerate_configs/zero3.yaml"
train_gpus="0,1,2,3,4,5,6,7"
dry_run=0
trainer_args=()

while [ "$#" -gt 0 ]; do
    case "$1" in
        --recipe) need "$@"; recipe="$2"; shift 2 ;;
        --accelerate-config) need "$@"; accelerate_config="$2"; shift 2 ;;
        --train-gpus) need "$@"; train_gpus="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage_of "${BASH_SOURCE[0]}"; exit 0 ;;
        --) shift; trainer_args=("$@"); break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[ -n "$recipe" ] || die "--recipe is required (see --help)"
[ -f "$recipe" ] || die "recipe $recipe not found"
[ -f "$accelerate_config" ] || die "accelerate config $accelerate_config not found"
[ -n "$(recipe_value_of "$recipe" small_model)" ] || die "recipe $recipe has no small_model"

num_machines="${NUM_MACHINES:-${SLURM_NNODES:-1}}"
machine_rank="${MACHINE_RANK:-${NODE_RANK:-${SLURM_NODEID:-0}}}"
main_ip="${MASTER_ADDR:-127.0.0.1}"
main_port="${MASTER_PORT:-29500}"
num_processes=$(( $(count_gpus "$train_gpus") * num_machines ))

train=(accelerate launch --config_file "$accelerate_config" --num_processes "$num_processes"
       --num_machines "$num_machines" --machine_rank "$machine_rank"
       --main_process_ip "$main_ip" --main_process_port "$main_port"
       -m s2l_trl.cli.codistill --config "$recipe")
train+=("${trainer_args[@]}")
train_cmd="$(printf '%q ' "${train[@]}")"

if [ "$dry_run" = 1 ]; then
    echo "# codistill.sh dry run: machine rank $machine_rank of $num_machines"
    echo "CUDA_VISIBLE_DEVICES=$train_gpus $train_cmd"
    exit 0
fi
echo "[codistill] training: $train_cmd"
CUDA_VISIBLE_DEVICES="$train_gpus" "${train[@]}"
