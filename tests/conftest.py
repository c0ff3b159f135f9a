"""Shared fixtures: tiny local models built once per session, and one real CPU vLLM explorer server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL_DATA = REPO.parent / "shared" / "data" / "eval"


def pytest_collection_modifyitems(config, items):
    # Tests that start their own in-process vLLM engine run before anything starts the session's explorer server:
    # two vLLM engines at once would overload this 2-core CPU (such a test skips if it finds the server up).
    items.sort(key=lambda item: 0 if item.get_closest_marker("own_vllm_engine") else 1)


@pytest.fixture(autouse=True)
def _one_vllm_engine_at_a_time(request):
    """A test marked `own_vllm_engine` skips when the session's explorer server is already up: two vLLM engines at
    once would overload this 2-core CPU (such tests are ordered first, so this happens only in unusual selections)."""
    if request.node.get_closest_marker("own_vllm_engine") is None:
        return
    definitions = request._fixturemanager.getfixturedefs("explorer_server", request.node) or []
    if any(d.cached_result is not None for d in definitions):
        pytest.skip(
            "the session's explorer server is already up; another vLLM engine would overload this CPU (run this file "
            "on its own, e.g. `pytest tests/<file>.py`)"
        )


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tokenizer, learner (width 64), explorer (width 32) and an addition data set, all built locally."""
    from s2l_trl.devtools.tiny import build_tiny_setup

    root = Path(os.environ.get("S2L_TINY_DIR", tmp_path_factory.mktemp("tiny")))
    return build_tiny_setup(root)


@pytest.fixture(scope="session")
def foreign_explorer(tmp_path_factory) -> Path:
    """A tiny explorer with its own tokenizer (another BPE vocabulary, 400 ids: inside the learner's 512): its ids
    cannot be shared with the learner."""
    from s2l_trl.devtools.tiny import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("foreign")
    build_tokenizer(root / "tok", vocab_size=400, seed=7)
    build_model(root / "explorer", root / "tok", hidden_size=32, num_layers=1, seed=3)
    return root / "explorer"


@pytest.fixture(scope="session")
def explorer_server(tiny, tmp_path_factory):
    """A real `trl vllm-serve` serving the tiny explorer on 127.0.0.1, started once and stopped by PID."""
    from s2l_trl.devtools.vllm_server import VLLMServerProcess

    log = tmp_path_factory.mktemp("vllm") / "explorer_server.log"
    server = VLLMServerProcess(tiny["explorer"], log_path=log, startup_timeout=400)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_eval_data() -> Path:
    if not SHARED_EVAL_DATA.exists():
        pytest.skip(f"shared eval data not found at {SHARED_EVAL_DATA}")
    return SHARED_EVAL_DATA
