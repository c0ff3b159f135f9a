"""Bad input is refused before any work starts, with one message naming the option, the bad value and the fix, in
the Python API (`S2LTrainer`) and on the command line (one line, no traceback)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts

from s2l_trl import S2LTrainer
from s2l_trl.cli.errors import run_cli
from s2l_trl.explorers import ExplorerError, ExplorerOutput
from s2l_trl.preflight import (
    InputError,
    MissingPathError,
    check_alpha_fn,
    check_output_dir,
    check_prompt,
    no_space_error,
    removing_created_folder,
    schedule_probe_steps,
)
from s2l_trl.rewards import accuracy_reward

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def oracle(tiny, tmp_path):
    return write_oracle_rollouts(tiny, tmp_path / "oracle.jsonl")


def _trainer(tiny, args, dataset=None, **kwargs):
    return S2LTrainer(
        str(tiny["learner"]),
        [accuracy_reward],
        args=args,
        train_dataset=tiny_dataset(tiny) if dataset is None else dataset,
        **kwargs,
    )


# ---------------------------------------------------------------- data through the Python API
@pytest.mark.parametrize(
    "rows, msg",
    [
        ([], r"train_dataset has no rows"),
        ([{"question": "1+1", "solution": "2"}], r"no 'prompt' column \(columns: \['question', 'solution'\]\).*rename"),
        ([{"prompt": "1+1"}], r"no 'solution' column.*\['accuracy_reward'\]"),
        ([{"prompt": [{"role": "user", "content": ""}], "solution": "2"}], r"row 0.*'user' message with empty content"),
        ([{"prompt": "   ", "solution": "2"}], r"row 0: the prompt in column 'prompt' is empty"),
        ([{"prompt": "1+1", "solution": ""}], r"row 0: the solution is ''"),
    ],
)
def test_bad_training_data_through_the_api_is_refused_before_anything_is_written(tiny, tmp_path, oracle, rows, msg):
    args = s2l_args(tmp_path, oracle)
    dataset = Dataset.from_list(rows) if rows else Dataset.from_dict({})
    with pytest.raises(InputError, match=msg):
        _trainer(tiny, args, dataset)
    assert not Path(args.output_dir).exists()


def test_empty_chat_content_is_refused_on_the_command_line_too(tiny, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " "}]}\n')
    out = tmp_path / "out"
    argv = ["--config", str(REPO / "recipes/tiny/grpo/config_cpu.yaml"), "--dataset_name", str(data)]
    done = _command([*argv, "--model_name_or_path", str(tiny["learner"])], out)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "'user' message with empty content" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


# ---------------------------------------------------------------- paths and folders
def test_missing_model_paths_name_the_option(tiny, tmp_path, oracle):
    args = s2l_args(tmp_path, oracle)
    with pytest.raises(InputError, match=r"model '\./no/such/learner' looks like a local path but does not exist"):
        S2LTrainer("./no/such/learner", [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    local = s2l_args(tmp_path, explorer_mode="local", explorer_model=str(tmp_path / "gone"))
    with pytest.raises(InputError, match=r"explorer_model '.*gone' looks like a local path but does not exist"):
        _trainer(tiny, local)
    assert not (tmp_path / "out").exists()


def test_offline_hub_id_that_is_not_cached_is_refused(tiny, tmp_path, oracle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"model 'no-such-org/no-such-model' is neither a local folder nor .* cache"):
        S2LTrainer("no-such-org/no-such-model", [accuracy_reward], args=s2l_args(tmp_path, oracle))


def test_output_dir_that_is_a_file_or_read_only_is_refused(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(InputError, match=r"output_dir '.*a_file' is a file"):
        check_output_dir(file)
    with pytest.raises(InputError, match=r"output_dir '.*a_file/run' lies under the file"):
        check_output_dir(file / "run")
    check_output_dir(tmp_path / "new" / "deeper")  # created later, under a writable folder
    assert not (tmp_path / "new").exists()


@pytest.fixture()
def small_mount(tmp_path):
    """A 2 MiB tmpfs (read-write) and a read-only one, where this machine lets us mount (root in a sandbox)."""
    mounts = {"rw": tmp_path / "tiny_disk", "ro": tmp_path / "ro_disk"}
    for kind, path in mounts.items():
        path.mkdir()
        options = "size=2m" + (",ro" if kind == "ro" else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    yield mounts
    for path in mounts.values():
        # Lazy: a trainer's open log file must not keep the mount (and pytest's tmp dir) alive after the test.
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


def test_read_only_output_dir_is_refused_at_start_not_after_step_1(tiny, tmp_path, oracle, small_mount):
    args = s2l_args(tmp_path, oracle)
    args.output_dir = str(small_mount["ro"])
    with pytest.raises(InputError, match=r"output_dir '.*ro_disk' is not writable"):
        _trainer(tiny, args)


def test_a_full_disk_says_no_space_left_on_device(tiny, tmp_path, oracle, small_mount):
    """A 2 MiB disk takes the first checkpoint's small files but not the model and optimizer: torch's writer says
    `basic_ios::clear: iostream error` or `file write failed`; the trainer says what happened."""
    args = s2l_args(tmp_path, oracle, max_steps=2, save_strategy="steps", save_steps=1)
    args.output_dir = str(small_mount["rw"] / "run")
    trainer = _trainer(tiny, args)
    with pytest.raises(OSError, match=r"No space left on device while writing to .*tiny_disk") as err:
        trainer.train()
    assert err.value.errno == errno.ENOSPC


def test_no_space_error_recognises_torch_and_python_messages(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 1024))
    torch_error = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert no_space_error(torch_error, tmp_path).errno == errno.ENOSPC
    assert no_space_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path).errno == errno.ENOSPC
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 0, 10**12))
    assert no_space_error(torch_error, tmp_path) is None  # room on the disk: another problem, left as it is
    assert no_space_error(OSError(errno.ENOSPC, "quota"), tmp_path).errno == errno.ENOSPC


def test_an_init_error_leaves_no_empty_output_dir(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), removing_created_folder(out):
        (out / "completions").mkdir(parents=True)
        raise RuntimeError("failed after TRL created output_dir")
    assert not out.exists()
    kept = tmp_path / "kept"
    with pytest.raises(RuntimeError), removing_created_folder(kept):
        kept.mkdir()
        (kept / "log.txt").write_text("something worth keeping")
        raise RuntimeError("x")
    assert (kept / "log.txt").exists()


def test_a_trainer_error_after_trl_built_output_dir_removes_it(tiny, tmp_path, oracle):
    # The tokenizer check runs after TRL's __init__ (which creates output_dir): IS without a matching tokenizer.
    from s2l_trl.devtools.tiny import build_model, build_tokenizer

    build_tokenizer(tmp_path / "tok", vocab_size=400, seed=7)
    build_model(tmp_path / "foreign", tmp_path / "tok", hidden_size=32, num_layers=1, seed=3)
    args = s2l_args(
        tmp_path,
        explorer_mode="local",
        explorer_model=str(tmp_path / "foreign"),
        explorer_importance_sampling="token_truncate",
    )
    with pytest.raises(ValueError, match="explorer_importance_sampling"):
        _trainer(tiny, args)
    assert not Path(args.output_dir).exists()


# ---------------------------------------------------------------- prompts that do not fit
def test_prompts_longer_than_the_learners_context_are_refused(tiny, tmp_path, oracle):
    text = "What is " + " + ".join(["12"] * 2000) + "?"
    long = [{"prompt_id": "long-1", "prompt": [{"role": "user", "content": text}], "solution": "1"}]
    short = [dict(r) for r in tiny_dataset(tiny)]
    with pytest.raises(InputError, match=r"2 training prompt\(s\) do not fit the learner's context of 512 tokens") as e:
        args = s2l_args(tmp_path, explorer_mode="local", explorer_model=str(tiny["explorer"]))
        _trainer(tiny, args, Dataset.from_list(short + long * 2))
    assert f"row {len(short)} (prompt_id 'long-1')" in str(e.value) and "max_completion_length=16" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_prompts_longer_than_the_explorers_context_are_refused(tiny, tmp_path):
    from s2l_trl.devtools.tiny import build_model

    short = tmp_path / "short_explorer"
    build_model(short, Path(tiny["explorer"]), hidden_size=32, num_layers=1, seed=3, max_position_embeddings=40)
    args = s2l_args(tmp_path, explorer_mode="local", explorer_model=str(short))
    with pytest.raises(InputError, match=r"explorer's context of 40 tokens.*max_position_embeddings"):
        _trainer(tiny, args)


def test_prompts_longer_than_the_context_of_an_explorer_with_another_tokenizer_are_refused(tiny, tmp_path):
    """Another tokenizer: the explorer's prompts are its own rendering, counted in its own tokens."""
    from s2l_trl.devtools.tiny import build_model, build_tokenizer

    build_tokenizer(tmp_path / "tok", vocab_size=400, seed=7)
    build_model(
        tmp_path / "foreign", tmp_path / "tok", hidden_size=32, num_layers=1, seed=3, max_position_embeddings=40
    )
    args = s2l_args(tmp_path, explorer_mode="local", explorer_model=str(tmp_path / "foreign"))
    with pytest.raises(InputError, match=r"explorer's context of 40 tokens.*max_position_embeddings"):
        _trainer(tiny, args)
    assert not (tmp_path / "out").exists()


def test_prompts_longer_than_the_explorer_servers_context_are_refused_at_start(tiny, tmp_path):
    """vLLM's /v1/models says the served context; a prompt that does not fit it would fail the round with HTTP 400."""
    from s2l_trl.devtools.fake_server import FakeServer

    with FakeServer(tiny["tokenizer"], mean_tokens=12, server_info=True, max_model_len=40) as server:
        args = s2l_args(tmp_path, explorer_mode="server", explorer_server_base_url=server.base_url)
        with pytest.raises(InputError, match=r"explorer's context of 40 tokens \(the explorer server's --max-model"):
            _trainer(tiny, args)
        assert server.generation_requests == 0
    assert not (tmp_path / "out").exists()


def test_explorer_rollouts_that_cannot_be_read_are_refused_by_the_config(tmp_path):
    """Before TRL loads the learner or creates output_dir (the rows themselves are validated when they load)."""
    from s2l_trl import S2LConfig

    base = {"output_dir": str(tmp_path / "out"), "report_to": [], "use_cpu": True, "bf16": False}
    base["explorer_mode"] = "offline"
    with pytest.raises(MissingPathError, match=r"explorer_rollouts '.*missing\.jsonl' does not exist; expected"):
        S2LConfig(**base, explorer_rollouts=str(tmp_path / "missing.jsonl"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "rollouts.jsonl").touch()
    with pytest.raises(ExplorerError, match=r"is a folder that .* did not write \(it holds rollouts\.jsonl: pass that"):
        S2LConfig(**base, explorer_rollouts=str(tmp_path / "folder"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- schedules and explorer objects
def test_a_schedule_callable_is_tried_before_training(tiny, tmp_path, oracle):
    with pytest.raises(InputError, match=r"returned alpha=1\.5 at step 1"):
        _trainer(tiny, s2l_args(tmp_path, oracle), mix_schedule=lambda step: 1.5)
    with pytest.raises(InputError, match=r"failed at step 5 \(ZeroDivisionError"):
        _trainer(tiny, s2l_args(tmp_path, oracle, max_steps=5), mix_schedule=lambda step: 1 / (5 - step))
    assert schedule_probe_steps(8) == [1, 2, 3, 4, 6, 8] and schedule_probe_steps(2) == [1, 2]
    assert schedule_probe_steps(-1) == [1, 2, 3]  # a run length in epochs: only the first steps are known to come
    check_alpha_fn(lambda step: 0.5, [1, 2, 3])
    assert not (tmp_path / "out").exists()


class NoGenerate:
    pass


class WrongSignature:
    def generate(self, prompt_ids):
        return ExplorerOutput([])


@pytest.mark.parametrize("explorer, message", [(NoGenerate(), "no callable `generate`"), (WrongSignature(), "inputs")])
def test_an_explorer_object_is_checked_before_training(tiny, tmp_path, oracle, explorer, message):
    with pytest.raises(InputError, match=message):
        _trainer(tiny, s2l_args(tmp_path, oracle), explorer=explorer)


def test_check_prompt_accepts_what_trl_accepts():
    check_prompt(
        [{"role": "system", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "y"}]}], "", "p"
    )
    with pytest.raises(InputError, match="'user' message with empty content"):
        check_prompt([{"role": "user", "content": [{"type": "text", "text": " "}]}], "row 3", "prompt")


# ---------------------------------------------------------------- the command line
def _command(argv: list[str], out: Path, extra_env: dict | None = None, module: str = "s2l_trl.cli.train"):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *argv, "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def test_cli_prints_one_line_without_traceback_and_debug_shows_it(tiny, tmp_path):
    argv = ["--config", str(REPO / "recipes/tiny/grpo/config_cpu.yaml"), "--model_name_or_path", "./missing/model"]
    argv += ["--dataset_name", str(tiny["dataset"])]
    done = _command(argv, tmp_path / "out")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert lines == [
        "s2l-train: error: model_name_or_path './missing/model' looks like a local path but does not exist; expected a "
        "model folder (with config.json and the tokenizer) or a Hub id of the form 'org/name'."
    ]
    assert "Traceback" not in done.stderr
    debug = _command([*argv, "--debug"], tmp_path / "out")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "MissingPathError" in debug.stderr


def test_run_cli_exit_codes(capsys):
    def bad(argv):
        raise InputError(f"bad value {argv}")

    with pytest.raises(SystemExit) as exit_info:
        run_cli("s2l-x", bad, ["--flag"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "s2l-x: error: bad value ['--flag']\n"
    with pytest.raises(InputError):
        run_cli("s2l-x", bad, ["--debug"])

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_cli("s2l-x", interrupted, [])
    assert exit_info.value.code == 130 and "interrupted" in capsys.readouterr().err


def test_s2l_sample_refuses_a_missing_model_before_writing(tiny, tmp_path):
    out = tmp_path / "rollouts"
    done = _command(
        ["--model_path", "./nope", "--dataset_name", str(tiny["dataset"])], out, module="s2l_trl.cli.sample"
    )
    assert done.returncode == 2 and "model_path './nope' looks like a local path" in done.stderr
    assert not out.exists()


def test_codistill_classes_are_exported_at_the_top_level():
    from s2l_trl import CoDistillConfig, CoDistillTrainer
    from s2l_trl.codistill import CoDistillConfig as config_cls
    from s2l_trl.codistill import CoDistillTrainer as trainer_cls

    assert (CoDistillConfig, CoDistillTrainer) == (config_cls, trainer_cls)


def test_ctrl_c_during_an_explorer_request_exits_s2l_train_within_seconds(tiny, tmp_path):
    """The explorer's answer would take two minutes; Ctrl-C while the trainer waits for it ends s2l-train in
    seconds, with one line and status 130 (the request is cancelled, no thread keeps the interpreter alive)."""
    import signal
    import time

    from s2l_trl.devtools.fake_server import FakeServer

    with FakeServer(tiny["tokenizer"], model=str(tiny["explorer"]), latency_s=120, server_info=True) as server:
        argv = ["--config", str(REPO / "recipes/tiny/s2l_po/config_cpu.yaml")]
        argv += ["--model_name_or_path", str(tiny["learner"]), "--dataset_name", str(tiny["dataset"])]
        argv += ["--explorer_model", str(tiny["explorer"]), "--explorer_server_base_url", server.base_url]
        argv += ["--explorer_server_timeout", "30", "--output_dir", str(tmp_path / "out")]
        env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "s2l_trl.cli.train", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 240
            while "POST /v1/completions" not in server.requests_seen and proc.poll() is None:
                assert time.monotonic() < deadline, "the trainer never asked the explorer for its rows"
                time.sleep(0.2)
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(1.0)  # the trainer is now waiting for the explorer's answer
            interrupted = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
            took = time.monotonic() - interrupted
        finally:
            if proc.poll() is None:
                proc.kill()
    assert took < 15, f"s2l-train took {took:.0f} s to exit after Ctrl-C"
    assert proc.returncode == 130 and "s2l-train: interrupted" in stderr, stderr[-3000:]


def test_colocated_tensor_parallel_learner_needs_whole_groups_per_process(tmp_path, monkeypatch):
    from s2l_trl import S2LConfig

    # Two processes: 2 x 6 rows form whole groups globally (TRL's own check passes), but not per process.
    monkeypatch.setattr(S2LConfig, "world_size", property(lambda self: 2))

    common = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, use_vllm=True, vllm_mode="colocate")
    common["vllm_tensor_parallel_size"] = 2
    with pytest.raises(ValueError, match=r"whole groups.*got 6 \* 1 and 4"):
        S2LConfig(per_device_train_batch_size=6, num_generations=4, **common)
    S2LConfig(per_device_train_batch_size=8, num_generations=4, **common)


def test_s2l_codistill_prints_one_line_on_a_missing_small_model(tiny, tmp_path):
    argv = ["--config", str(REPO / "recipes/tiny/codistill/config_cpu.yaml"), "--small_model", "./no/small"]
    argv += ["--model_name_or_path", str(tiny["learner"]), "--dataset_name", str(tiny["dataset"])]
    done = _command(argv, tmp_path / "out", module="s2l_trl.cli.codistill")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "s2l-codistill: error:" in done.stderr and "./no/small" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["env", "option"])
def test_deepspeed_asked_for_but_not_installed_is_one_clear_error(tmp_path, monkeypatch, how):
    import accelerate.utils

    from s2l_trl import CoDistillConfig, S2LConfig

    monkeypatch.setattr(accelerate.utils, "is_deepspeed_available", lambda: False)
    kwargs = {"output_dir": str(tmp_path / "out"), "report_to": []}
    if how == "env":
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    else:
        kwargs["deepspeed"] = {"zero_optimization": {"stage": 3}}
    for config in (S2LConfig, CoDistillConfig):
        with pytest.raises(InputError, match=r"asks for DeepSpeed, which is not installed: `pip install deepspeed`"):
            config(**kwargs)
    assert not (tmp_path / "out").exists()


def test_s2l_train_without_deepspeed_under_an_accelerate_deepspeed_launch_prints_one_line(tiny, tmp_path):
    hide = (
        "import sys, accelerate.utils; accelerate.utils.is_deepspeed_available = lambda: False; "
        "from s2l_trl.cli.train import command; sys.argv[0] = 's2l-train'; command()"
    )
    argv = ["--config", str(REPO / "recipes/tiny/grpo/config_cpu.yaml"), "--model_name_or_path", str(tiny["learner"])]
    argv += ["--dataset_name", str(tiny["dataset"]), "--output_dir", str(tmp_path / "out")]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_DEEPSPEED": "true"}
    done = subprocess.run(
        [sys.executable, "-c", hide, *argv], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines() if "error:" in line] == [
        "s2l-train: error: ACCELERATE_USE_DEEPSPEED=true (accelerate DeepSpeed config) asks for DeepSpeed, which is "
        "not installed: `pip install deepspeed`, or launch without DeepSpeed (another accelerate config, or FSDP)."
    ]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
