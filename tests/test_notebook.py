"""recipes/notebooks/s2l_po_lora.ipynb runs top to bottom in a kernel of this interpreter and plots both sources."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "recipes" / "notebooks" / "s2l_po_lora.ipynb"
KERNEL = "s2l-trl-test"


def _text_outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append(out["text"])
        elif "text/plain" in out.get("data", {}):
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


def test_lora_notebook_executes(tmp_path, monkeypatch):
    # A kernel spec pinned to this interpreter (the venv's), found through JUPYTER_PATH, so the notebook cannot run
    # in some other Python that lacks s2l_trl; the first cell injected below checks it anyway.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "s2l-trl tests",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    monkeypatch.setenv("S2L_NOTEBOOK_DIR", str(work))  # the notebook builds and writes here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys, s2l_trl\nprint(sys.executable)\nprint(s2l_trl.__file__)"))
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    nbformat.write(nb, tmp_path / "executed.ipynb")  # kept for a look at a failure

    executable, package = _text_outputs(nb.cells[0]).split()
    assert Path(executable) == Path(sys.executable)
    import s2l_trl

    assert Path(package) == Path(s2l_trl.__file__)

    # The figure was shown inline and saved.
    images = [out for cell in nb.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) == 1
    figure = work / "s2l_rewards.png"
    assert figure.exists() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The per-step summary the plot cell prints: 6 steps, alpha 1 -> 0 over T_mix = 4, both sources while mixing.
    text = "".join(_text_outputs(cell) for cell in nb.cells)
    summary = [line for line in text.splitlines() if line.startswith("step ") and "alpha" in line]
    assert [line.split()[3] for line in summary] == ["1.000", "0.667", "0.333", "0.000", "0.000", "0.000"]
    assert "nan" not in summary[1] and "nan" not in summary[2]  # steps 2-3 hold explorer and learner rows
    # The overlap figures of the explorer's steps (1-3: alpha 1, 2/3, 1/3), each with its three timings.
    overlap = [line for line in text.splitlines() if line.startswith("overlap at step")]
    assert [line.split()[3].rstrip(":") for line in overlap] == ["1", "2", "3"]
    timings = r"learner generation \d+\.\d{3}s, explorer \d+\.\d{3}s, waited for it \d+\.\d{3}s$"
    assert all(re.search(timings, line) for line in overlap), overlap
    # LoRA: the saved output is an adapter.
    assert "adapter_model.safetensors" in text and "trainable params" in text
