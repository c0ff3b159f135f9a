#!/usr/bin/env bash
# S2L-PO with offline explorer rollouts, the authors' own set-up: sample the explorer once with `s2l-sample`, then
# train against the stored rollouts (explorer_mode: offline), with every GPU free for the learner during training.
#
#   recipes/launch/s2l_po_offline.sh --recipe recipes/Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml \
#       [--rollouts data/rollouts/<explorer>/rollouts.jsonl] [options] [-- TRAINER ARGS]
#
#   1. CUDA_VISIBLE_DEVICES=<sample GPUs> s2l-sample --model_path <explorer> --output_dir <dir of rollouts>
#        <every data field the recipe sets, under s2l-train's own names: dataset_name, dataset_config,
#         dataset_train_split, dataset_prompt_column, dataset_solution_column, dataset_prompt_id_column,
#         dataset_prompt_template, system_prompt, chat_template_kwargs>
#        --num_generations <G> --temperature <explorer_temperature> --top_p <explorer_top_p>
#        [--top_k <explorer_top_k>] --max_tokens <explorer_max_tokens or max_completion_length>
#        [--max_model_len <vllm_max_model_length>] [--seed <seed>] --tensor_parallel_size T
#      s2l-sample reads and tokenizes the prompts exactly as s2l-train does, so every stored row carries the
#      problem's prompt_id and the prompt token ids the trainer uses. Skipped when the rollouts file exists (or with
#      --skip-sampling): sampling is the expensive, reusable part.
#   2. recipes/launch/s2l_po.sh --no-explorer --recipe <recipe> ... -- --explorer_mode offline
#        --explorer_rollouts <rollouts> [TRAINER ARGS]
#      (learner vLLM server and accelerate launch exactly as in s2l_po.sh; see its --help).
#
# Options: --rollouts PATH [data/rollouts/<explorer basename>/rollouts.jsonl]; --sample-gpus LIST [0];
#   --sample-tp N [1]; --num-samples N [recipe num_generations]; --skip-sampling;
#   --learner-gpus LIST [0,1,2,3]; --train-gpus LIST [4,5,6,7]; --accelerate-config PATH; --learner-tp N;
#   --learner-dp N; --health-timeout SECONDS; --log-dir DIR; --dry-run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
log_prefix="s2l_po_offline"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

# The data arguments s2l-train and s2l-sample share (s2l_trl.data.PromptDataArguments) and the trainer's
# chat_template_kwargs: passed through under the same names whenever the recipe sets them.
data_keys=(dataset_name dataset_config dataset_train_split dataset_prompt_column dataset_solution_column
           dataset_prompt_id_column dataset_prompt_template system_prompt chat_template_kwargs)

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
        -h|--help) usage_of "${BASH_SOURCE[0]}"; exit 0 ;;
        --) shift; trainer_args=("$@"); break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if [ -z "$recipe" ] || [ ! -f "$recipe" ]; then die "--recipe PATH is required and must exist"; fi

recipe_value() { recipe_value_of "$recipe" "$1"; }
# recipe_or KEY DEFAULT: the recipe's value, else DEFAULT (the trainer config's own default).
recipe_or() { local v; v="$(recipe_value "$1")"; echo "${v:-$2}"; }

explorer_model="$(recipe_value explorer_model)"
[ -n "$explorer_model" ] || die "the recipe names no explorer_model"
[ -n "$(recipe_value dataset_name)" ] || die "the recipe names no dataset_name"
[ -n "$rollouts" ] || rollouts="data/rollouts/$(basename "$explorer_model")/rollouts.jsonl"
[ "$(basename "$rollouts")" = rollouts.jsonl ] || die "--rollouts must end in /rollouts.jsonl (s2l-sample writes <dir>/rollouts.jsonl)"
# Defaults below are S2LConfig's / GRPOConfig's, for recipes that leave the key out.
[ -n "$num_samples" ] || num_samples="$(recipe_or num_generations 8)"
max_tokens="$(recipe_value explorer_max_tokens)"
[ -n "$max_tokens" ] || max_tokens="$(recipe_or max_completion_length 512)"
top_k="$(recipe_value explorer_top_k)"; [ "$top_k" != "-1" ] || top_k=""
max_model_len="$(recipe_value vllm_max_model_length)"
seed="$(recipe_value seed)"

# s2l-sample writes <output_dir>/rollouts.jsonl (resumable shards inside <output_dir>).
sample=(s2l-sample --model_path "$explorer_model" --output_dir "$(dirname "$rollouts")")
mapfile -d '' -t data_flags < <(recipe_flags "$recipe" "${data_keys[@]}")
sample+=("${data_flags[@]}")
sample+=(--num_generations "$num_samples" --temperature "$(recipe_or explorer_temperature 0.7)"
         --top_p "$(recipe_or explorer_top_p 0.95)" --max_tokens "$max_tokens")
[ -z "$top_k" ] || sample+=(--top_k "$top_k")
[ -z "$max_model_len" ] || sample+=(--max_model_len "$max_model_len")
[ -z "$seed" ] || sample+=(--seed "$seed")
sample+=(--tensor_parallel_size "$sample_tp")
train=("$here/s2l_po.sh" --no-explorer --learner-gpus "0,1,2,3" --recipe "$recipe" "${pass[@]}")
[ "$dry_run" = 0 ] || train+=(--dry-run)
train+=(-- --explorer_mode offline --explorer_rollouts "$rollouts" "${trainer_args[@]}")

if [ "$skip_sampling" = 1 ] || [ -e "$rollouts" ]; then
    echo "# rollouts: using $rollouts (no sampling)"
elif [ "$dry_run" = 1 ]; then
    echo "CUDA_VISIBLE_DEVICES=$sample_gpus $(printf '%q ' "${sample[@]}")"
else
    mkdir -p "$(dirname "$rollouts")"
    echo "[$log_prefix] sampling the explorer: $(printf '%q ' "${sample[@]}")"
    CUDA_VISIBLE_DEVICES="$sample_gpus" "${sample[@]}"
fi
# s2l_po.sh owns the learner server and the trainer (and their clean-up); later --learner-gpus wins.
exec "${train[@]}"
