#!/usr/bin/env bash
# S2L-PO with offline explorer rollouts, the authors' own set-up: sample the explorer once with `s2l-sample`, then
# train against the stored rollouts (explorer_mode: offline), with every GPU free for the learner during training.
#
#   recipes/launch/s2l_po_offline.sh --recipe recipes/Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml \
#       [--rollouts data/rollouts/<explorer>.jsonl] [options] [-- TRAINER ARGS]
#
#   1. CUDA_VISIBLE_DEVICES=<sample GPUs> s2l-sample --model_path <explorer> --output_dir <dir of rollouts>
#        <the recipe's data set and columns> --num_generations <G> --temperature <explorer_temperature>
#        --top_p <explorer_top_p> --max_tokens <max_completion_length> --tensor_parallel_size T
#      skipped when the rollouts file exists (or with --skip-sampling): sampling is the expensive, reusable part.
#   2. recipes/launch/s2l_po.sh --no-explorer --recipe <recipe> ... -- --explorer_mode offline
#        --explorer_rollouts <rollouts> [TRAINER ARGS]
#      (learner vLLM server and accelerate launch exactly as in s2l_po.sh; see its --help).
#
# Options: --rollouts PATH [data/rollouts/<explorer basename>/rollouts.jsonl]; --sample-gpus LIST [0];
#   --sample-tp N [1]; --num-samples N [recipe num_generations]; --skip-sampling;
#   --learner-gpus LIST [0,1,2,3]; --train-gpus LIST [4,5,6,7]; --accelerate-config PATH; --dry-run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."

die() { echo "[s2l_po_offline] error: $*" >&2; exit 2; }
need() { [ "$#" -ge 2 ] || die "$1 needs a value"; }
recipe=""; rollouts=""; sample_gpus="0"; sample_tp=1; num_samples=""
skip_sampling=0; dry_run=0; pass=(); trainer_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --recipe) need "$@"; recipe="$2"; shift 2 ;;
        --rollouts) need "$@"; rollouts="$2"; shift 2 ;;
        --sample-gpus) need "$@"; sample_gpus="$2"; shift 2 ;;
        --sample-tp) need "$@"; sample_tp="$2"; shift 2 ;;
        --num-samples) need "$@"; num_samples="$2"; shift 2 ;;
        --skip-sampling) skip_sampling=1; shift ;;
        --learner-gpus|--train-gpus|--accelerate-config|--learner-tp|--learner-dp|--health-timeout|--log-dir)
            need "$@"; pass+=("$1" "$2"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; trainer_args=("$@"); break ;;
        *) die "unknown option $1" ;;
    esac
done
if [ -z "$recipe" ] || [ ! -f "$recipe" ]; then die "--recipe PATH is required and must exist"; fi

r_explorer_model=""; r_dataset_name=""; r_dataset_config=""; r_dataset_train_split=""; r_dataset_prompt_column=""
r_dataset_solution_column=""; r_num_generations=""; r_explorer_temperature=""; r_explorer_top_p=""
r_max_completion_length=""
# All recipe values in one python call, as shell-quoted assignments (pyyaml is a dependency of s2l-trl).
eval "$(python3 - "$recipe" <<'PY'
import shlex, sys, yaml
r = yaml.safe_load(open(sys.argv[1])) or {}
keys = {"explorer_model": None, "dataset_name": None, "dataset_config": None, "dataset_train_split": "train",
        "dataset_prompt_column": "prompt", "dataset_solution_column": "solution", "num_generations": 8,
        "explorer_temperature": 0.7, "explorer_top_p": 0.95, "max_completion_length": 512}
for key, default in keys.items():
    value = r.get(key, default)
    print(f"r_{key}={shlex.quote('' if value is None else str(value))}")
PY
)"
[ -n "$r_explorer_model" ] || die "the recipe names no explorer_model"
[ -n "$rollouts" ] || rollouts="data/rollouts/$(basename "$r_explorer_model")/rollouts.jsonl"
[ "$(basename "$rollouts")" = rollouts.jsonl ] || die "--rollouts must end in /rollouts.jsonl (s2l-sample writes <dir>/rollouts.jsonl)"
[ -n "$num_samples" ] || num_samples="$r_num_generations"

# s2l-sample writes <output_dir>/rollouts.jsonl (resumable shards inside <output_dir>).
sample=(s2l-sample --model_path "$r_explorer_model" --output_dir "$(dirname "$rollouts")" --dataset "$r_dataset_name")
[ -z "$r_dataset_config" ] || sample+=(--dataset_config "$r_dataset_config")
sample+=(--split "$r_dataset_train_split" --prompt_column "$r_dataset_prompt_column"
         --answer_column "$r_dataset_solution_column" --num_generations "$num_samples"
         --temperature "$r_explorer_temperature" --top_p "$r_explorer_top_p" --max_tokens "$r_max_completion_length"
         --tensor_parallel_size "$sample_tp")
train=("$here/s2l_po.sh" --no-explorer --learner-gpus "0,1,2,3" --recipe "$recipe" "${pass[@]}")
[ "$dry_run" = 0 ] || train+=(--dry-run)
train+=(-- --explorer_mode offline --explorer_rollouts "$rollouts" "${trainer_args[@]}")

if [ "$skip_sampling" = 1 ] || [ -e "$rollouts" ]; then
    echo "# rollouts: using $rollouts (no sampling)"
elif [ "$dry_run" = 1 ]; then
    echo "CUDA_VISIBLE_DEVICES=$sample_gpus $(printf '%q ' "${sample[@]}")"
else
    mkdir -p "$(dirname "$rollouts")"
    echo "[s2l_po_offline] sampling the explorer: $(printf '%q ' "${sample[@]}")"
    CUDA_VISIBLE_DEVICES="$sample_gpus" "${sample[@]}"
fi
# s2l_po.sh owns the learner server and the trainer (and their clean-up); later --learner-gpus wins.
exec "${train[@]}"
