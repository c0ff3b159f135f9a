"""The in-process vLLM explorer's engine dies with the process that started it (issue 26): after SIGKILL or SIGTERM of
that process its engine processes are gone within seconds, also when the kill comes while the engine is starting.
Stand-in engine processes first (cheap), then one real vLLM-CPU engine killed with kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from s2l_trl.devtools.vllm_server import CPU_ENV

REPO = Path(__file__).resolve().parents[1]
WATCHDOG = REPO / "s2l_trl" / "explorers" / "engine_watchdog.py"

# A "trainer" that starts the watchdog, then an "engine" (a process with a child of its own, like vLLM's engine core
# and its worker), announces it to the watchdog or not (a kill during the engine's start-up), and waits to be killed.
FAKE_TRAINER = textwrap.dedent(
    """
    import importlib.util, json, subprocess, sys, time
    spec = importlib.util.spec_from_file_location("engine_watchdog", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    watchdog = module.EngineWatchdog.start(poll_s=0.1, grace_s=2.0)
    engine = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])
    time.sleep(0.5)  # the worker (sleep) starts
    if sys.argv[2] == "announce":
        watchdog.watch([engine.pid])
    import psutil
    family = [engine.pid] + [c.pid for c in psutil.Process(engine.pid).children(recursive=True)]
    print(json.dumps(family), flush=True)
    time.sleep(300)
    """
)


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _kill_left_over(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("announce", ["announce", "during-start-up"])
def test_the_engine_processes_die_with_their_trainer(sig, announce):
    trainer = subprocess.Popen(
        [sys.executable, "-c", FAKE_TRAINER, str(WATCHDOG), announce], stdout=subprocess.PIPE, text=True
    )
    family: list[int] = []
    try:
        family = json.loads(trainer.stdout.readline())
        assert len(family) == 2 and all(psutil.pid_exists(pid) for pid in family)
        time.sleep(0.3)
        trainer.send_signal(sig)
        trainer.wait(timeout=10)
        assert _gone_within(family, 8.0), f"engine processes {family} outlived their trainer"
    finally:
        if trainer.poll() is None:
            trainer.kill()
        _kill_left_over(family)


def test_a_closed_engine_stops_its_watchdog_and_leaves_other_processes_alone():
    sys.path.insert(0, str(WATCHDOG.parent))
    try:
        from engine_watchdog import EngineWatchdog
    finally:
        sys.path.pop(0)
    other = subprocess.Popen(["sleep", "60"])  # started by this process before the watchdog: not the engine's
    watchdog = EngineWatchdog.start(poll_s=0.1)
    try:
        watchdog.stop()
        assert watchdog.process.wait(timeout=5) == 0 and other.poll() is None
    finally:
        other.kill()
        other.wait()


CPU_TRAINER = textwrap.dedent(
    """
    import json, sys, time
    import psutil
    from s2l_trl.explorers import SamplingSettings
    from s2l_trl.explorers.vllm_engine import VLLMEngineExplorer, _engine_processes
    explorer = VLLMEngineExplorer(
        sys.argv[1], SamplingSettings(max_tokens=4, seed=0), dtype="float32", enforce_eager=True, max_model_len=256,
        own_process=True,
    )
    assert explorer.generate([[1, 2, 3]], 2).completion_ids
    engine = _engine_processes(explorer.llm)
    family = engine + [c.pid for pid in engine for c in psutil.Process(pid).children(recursive=True)]
    print("ENGINE " + json.dumps(family), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.slow
@pytest.mark.own_vllm_engine
def test_a_real_vllm_explorer_engine_dies_with_its_trainer_after_kill_9(tiny):
    pytest.importorskip("vllm")
    env = {**CPU_ENV, **os.environ, "PYTHONPATH": str(REPO)}
    trainer = subprocess.Popen(
        [sys.executable, "-c", CPU_TRAINER, str(tiny["explorer"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    family: list[int] = []
    try:
        for line in trainer.stdout:
            if line.startswith("ENGINE "):
                family = json.loads(line[len("ENGINE ") :])
                break
        assert family, f"the engine did not start (exit {trainer.poll()})"
        trainer.send_signal(signal.SIGKILL)  # the trainer only: its engine is left behind unless it is watched
        trainer.wait(timeout=30)
        assert _gone_within(family, 30.0), f"vLLM engine processes {family} outlived their trainer"
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
        _kill_left_over(family)
