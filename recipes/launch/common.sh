# shellcheck shell=bash
# Shared by the launch scripts of recipes/launch/ (sourced, never run): error helpers, recipe lookups, starting
# servers in their own process group, stopping exactly those by PID on every exit path, and bounded health waits.
#
# A script sets `log_prefix` (the tag of its messages) and then sources this file:
#   log_prefix="s2l_po"; source "$here/common.sh"

log_prefix="${log_prefix:-launch}"
# Python with pyyaml (a dependency of s2l-trl) that reads the recipes; override with S2L_PYTHON.
s2l_python="${S2L_PYTHON:-python3}"

die() { echo "[$log_prefix] error: $*" >&2; exit 2; }
# `need "$@"` in an option loop: the option in $1 must be followed by a value.
need() { [ "$#" -ge 2 ] || die "$1 needs a value"; }
# Print the comment block at the top of a script (from line 2 to the first line that is not a comment) as help.
usage_of() { sed -n '2,/^[^#]/p' "$1" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# recipe_value_of RECIPE KEY: one top-level key of a recipe YAML, empty when absent; booleans as true/false, mappings
# and lists as JSON (what the CLIs' dict arguments, e.g. --chat_template_kwargs, read).
recipe_value_of() {
    "$s2l_python" - "$1" "$2" <<'PY'
import json, sys, yaml
value = (yaml.safe_load(open(sys.argv[1])) or {}).get(sys.argv[2])
if value is None:
    print("")
elif isinstance(value, bool):
    print(str(value).lower())
elif isinstance(value, (dict, list)):
    print(json.dumps(value))
else:
    print(value)
PY
}

# recipe_flags RECIPE KEY...: `--KEY VALUE` for each KEY the recipe sets (one word per line, values as in
# recipe_value); keys the recipe leaves out are not passed, so the receiving CLI's own defaults apply.
recipe_flags() {
    "$s2l_python" - "$@" <<'PY'
import json, sys, yaml
recipe = yaml.safe_load(open(sys.argv[1])) or {}
for key in sys.argv[2:]:
    value = recipe.get(key)
    if value is None:
        continue
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, (dict, list)):
        value = json.dumps(value)
    # NUL-separated: values may hold newlines (templates, system prompts).
    sys.stdout.write(f"--{key}\0{value}\0")
PY
}

# serve_cmd KIND MODEL TP DP HOST PORT GPU_MEMORY_UTILIZATION [MAX_MODEL_LEN]: the words of a command serving MODEL,
# one per line. KIND `vllm`: `vllm serve` itself, returning the log-probs of the distribution it samples from
# (--logprobs-mode processed_logprobs; vLLM's default is the raw, untempered ones, wrong for explorer importance
# sampling), what a frozen explorer needs. KIND `trl`: `trl vllm-serve` (passes that flag itself, plus vLLM's dev mode
# and NCCL weight transfer: what a learner server needs; deprecated, removed in TRL 2.0).
serve_cmd() {
    local kind="$1" model="$2" tp="$3" dp="$4" host="$5" port="$6" util="$7" max_len="${8:-}"
    case "$kind" in
        vllm)
            printf '%s\n' vllm serve "$model" --tensor-parallel-size "$tp" --data-parallel-size "$dp" --host "$host" \
                --port "$port" --gpu-memory-utilization "$util"
            [ -z "$max_len" ] || printf '%s\n' --max-model-len "$max_len"
            printf '%s\n' --logprobs-mode processed_logprobs ;;
        trl)
            printf '%s\n' trl vllm-serve --model "$model" --tensor_parallel_size "$tp" --data_parallel_size "$dp" \
                --host "$host" --port "$port" --gpu_memory_utilization "$util"
            [ -z "$max_len" ] || printf '%s\n' --max_model_len "$max_len" ;;
        *) die "unknown server kind $kind (trl or vllm)" ;;
    esac
}

# url_port URL DEFAULT: the port of URL, or DEFAULT when it names none.
url_port() { local p="${1##*:}"; p="${p%%/*}"; case "$p" in ''|*[!0-9]*) echo "$2" ;; *) echo "$p" ;; esac; }
# shellcheck disable=SC2086  # word splitting on commas is the point
count_gpus() { local IFS=,; set -- $1; echo "$#"; }

# ------------------------------------------------------------------ processes this script starts, and only those
started_pids=()

# start_in_group LOG ENV_ASSIGNMENT... -- CMD...: run CMD in the background as the leader of its own process group
# (setsid), output to LOG, with the given VAR=value environment; its PID is recorded for stop_started.
# The PID is left in $last_pid.
start_in_group() {
    local log="$1"; shift
    local envs=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" setsid "$@" >"$log" 2>&1 &
    last_pid=$!
    started_pids+=("$last_pid")
}

# stop_started: SIGTERM the process group of every recorded PID (the server and its workers), wait up to 30 s
# each, then SIGKILL what is left of that group. Nothing else is signalled.
stop_started() {
    local pid
    for pid in "${started_pids[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${started_pids[@]}"; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    started_pids=()
}

# install_cleanup: stop what was started on every exit path (normal end, error, Ctrl-C, scheduler SIGTERM),
# keeping the exit status.
_cleanup_on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    stop_started
    exit "$rc"
}
install_cleanup() {
    trap _cleanup_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# healthy URL: whether URL/health answers 200 within 5 s.
healthy() {
    if command -v curl >/dev/null 2>&1; then
        curl -sf -o /dev/null --max-time 5 "$1/health"
    else
        "$s2l_python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=5)' \
            "$1" 2>/dev/null
    fi
}

# wait_healthy URL PID LOG TIMEOUT [INTERVAL] [NOTE_EVERY]: poll URL/health every INTERVAL (5) seconds until it
# answers, saying every NOTE_EVERY (30) seconds that it is still waiting (a large model loads for minutes); fail with
# the tail of LOG when the server PID (may be empty: not ours) exits first or after TIMEOUT seconds.
wait_healthy() {
    local url="$1" pid="$2" log="$3" timeout="$4" interval="${5:-5}" note_every="${6:-30}" start=$SECONDS
    local next_note=$(( SECONDS + note_every ))
    until healthy "$url"; do
        if [ "$SECONDS" -ge "$next_note" ]; then
            echo "[$log_prefix] waiting for $url/health: $(( SECONDS - start )) s of ${timeout} s (log: $log)"
            next_note=$(( next_note + note_every ))
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "[$log_prefix] server for $url exited before it became healthy; last lines of $log:" >&2
            tail -n 30 "$log" >&2 || true
            exit 1
        fi
        if [ $(( SECONDS - start )) -ge "$timeout" ]; then
            echo "[$log_prefix] $url did not answer /health within ${timeout} s" >&2
            [ -z "$log" ] || tail -n 30 "$log" >&2 || true
            exit 1
        fi
        sleep "$interval"
    done
    echo "[$log_prefix] $url healthy after $(( SECONDS - start )) s"
}
