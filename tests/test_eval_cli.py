"""`s2l-eval` front-end on CPU: scoring hand-written outputs, the transformers backend end to end, resuming a
killed run, and the pass@k plot."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s2l_trl.cli.eval import main as eval_main
from s2l_trl.evaluation.runner import EvalArguments, run_evaluation
from s2l_trl.sampling.engine import SamplingEngine

REPO = Path(__file__).resolve().parents[1]

# Three problems x four outputs with hand-counted verdicts (math_verify / official_compat).
HAND_RAW = [
    {
        "question": "half?",
        "answer": r"\frac{1}{2}",  # math_verify 3/4; official_compat 1/4 (exact string only)
        "outputs": [r"\boxed{\frac{1}{2}}", r"\boxed{0.5}", r"\boxed{\frac12}", "no answer"],
    },
    {
        "question": "four?",
        "answer": 4,  # int gold; math_verify 3/4; official_compat 4/4 (14 contains 4)
        "outputs": [r"\boxed{14}", r"\boxed{4}", "so \\boxed{4}.", r"\boxed{4.0}"],
    },
    {"question": "pair?", "answer": "(1,2)", "outputs": [r"\boxed{(2,1)}", "x", r"\boxed{[1,2]}", ""]},
]


def _write_raw(root: Path, model: str, timestamp: str, bench: str = "aime24") -> Path:
    out = root / "output" / f"{model}_{timestamp}"
    out.mkdir(parents=True)
    with (out / f"{bench}_raw.jsonl").open("w") as f:
        for row in HAND_RAW:
            f.write(json.dumps(row) + "\n")
    return out


def test_skip_inference_reproduces_known_passk(tmp_path):
    out = _write_raw(tmp_path, "hand", "t0")
    eval_main(
        [
            "--model_path",
            "some/hand",
            "--k",
            "4",
            "--benchmarks",
            "aime24",
            "--skip_inference",
            "--timestamp",
            "t0",
            "--output_root",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "result" / "hand_t0" / "aime24.json").read_text())
    mv, compat = result["math_verify"], result["official_compat"]
    assert mv["correct_counts"] == [3, 3, 0]
    assert mv["pass@k"] == pytest.approx({"1": 0.5, "2": 2 / 3, "4": 2 / 3})
    assert compat["correct_counts"] == [1, 4, 0]
    assert compat["pass@k"] == pytest.approx({"1": 5 / 12, "2": 0.5, "4": 2 / 3})
    extracted = [json.loads(line) for line in (out / "aime24.jsonl").read_text().splitlines()]
    assert extracted[0]["predicted_answers"][:3] == [r"\frac{1}{2}", "0.5", r"\frac12"]
    summary = json.loads((tmp_path / "result" / "hand_t0" / "summary.json").read_text())
    assert summary["benchmarks"]["aime24"]["pass@1"] == pytest.approx(0.5)
    assert summary["benchmarks"]["aime24"]["official_compat_pass@1"] == pytest.approx(5 / 12)

    # --skip_extraction re-judges (possibly hand-edited) predicted answers.
    extracted[2]["predicted_answers"] = ["(1, 2)", "x", "[1,2]", ""]
    (out / "aime24.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extracted))
    eval_main(
        [
            "--model_path",
            "some/hand",
            "--k",
            "4",
            "--benchmarks",
            "aime24",
            "--skip_extraction",
            "--timestamp",
            "t0",
            "--output_root",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "result" / "hand_t0" / "aime24.json").read_text())
    assert result["math_verify"]["correct_counts"] == [3, 3, 1]


def test_malformed_raw_line_is_named(tmp_path):
    out = _write_raw(tmp_path, "hand", "t1")
    with (out / "aime24_raw.jsonl").open("a") as f:
        f.write('{"question": "broken"\n')
    with pytest.raises(ValueError, match=r"aime24_raw\.jsonl:4: malformed JSON"):
        eval_main(
            [
                "--model_path",
                "hand",
                "--k",
                "4",
                "--benchmarks",
                "aime24",
                "--skip_inference",
                "--timestamp",
                "t1",
                "--output_root",
                str(tmp_path),
            ]
        )


def test_plot_writes_png_from_result_folders(tmp_path):
    for model in ("small", "large"):
        _write_raw(tmp_path, model, "t2")
        eval_main(
            [
                "--model_path",
                model,
                "--k",
                "4",
                "--benchmarks",
                "aime24",
                "--skip_inference",
                "--timestamp",
                "t2",
                "--output_root",
                str(tmp_path),
            ]
        )
    png = tmp_path / "fig" / "passk.png"
    eval_main(
        [
            "plot",
            str(tmp_path / "result" / "small_t2"),
            str(tmp_path / "result" / "large_t2"),
            "--labels",
            "Qwen3-0.6B",
            "Qwen3-1.7B",
            "--output",
            str(png),
        ]
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        eval_main(["plot", str(tmp_path / "missing_dir"), "--output", str(png)])


@pytest.fixture(scope="module")
def long_context_model(tiny, tmp_path_factory):
    """The tiny explorer's shape with room for AIME prompts (up to ~900 tokens in the tiny tokenizer)."""
    from s2l_trl.devtools.tiny import build_model

    path = tmp_path_factory.mktemp("tiny_long") / "explorer_2k"
    build_model(path, tiny["tokenizer"], hidden_size=32, num_layers=1, seed=1, max_position_embeddings=2048)
    return path


def test_transformers_backend_end_to_end(long_context_model, shared_eval_data, tmp_path):
    summary = eval_main(
        [
            "--model_path",
            str(long_context_model),
            "--backend",
            "transformers",
            "--k",
            "4",
            "--benchmarks",
            "aime24",
            "commonsenseqa",
            "--data_dir",
            str(shared_eval_data),
            "--limit",
            "3",
            "--max_tokens",
            "8",
            "--timestamp",
            "e2e",
            "--output_root",
            str(tmp_path),
        ]
    )
    out = tmp_path / "output" / "explorer_2k_e2e"
    raw = [json.loads(line) for line in (out / "aime24_raw.jsonl").read_text().splitlines()]
    assert len(raw) == 3 and all(len(r["outputs"]) == 4 for r in raw)
    assert str(raw[0]["answer"]) == "204" and all(isinstance(t, str) for t in raw[0]["outputs"])
    config = (out / "config.txt").read_text()
    assert "temperature = 0.7" in config and "presence_penalty = 1.5" in config and "top_k = 20" in config
    for bench in ("aime24", "commonsenseqa"):
        result = json.loads((tmp_path / "result" / "explorer_2k_e2e" / f"{bench}.json").read_text())
        assert result["num_problems"] == 3 and set(result["math_verify"]["pass@k"]) == {"1", "2", "4"}
    assert summary["generated_tokens"] > 0


class _CountingEngine(SamplingEngine):
    def __init__(self, engine):
        super().__init__(engine.explorer, engine.tokenizer)
        self.prompts = 0

    def generate(self, prompt_ids, n, inputs=None):
        self.prompts += len(prompt_ids)
        return super().generate(prompt_ids, n, inputs)


def test_killed_run_resumes_without_redoing_finished_problems(long_context_model, shared_eval_data, tmp_path):
    args = [
        "--model_path",
        str(long_context_model),
        "--backend",
        "transformers",
        "--k",
        "4",
        "--benchmarks",
        "aime24",
        "--data_dir",
        str(shared_eval_data),
        "--max_tokens",
        "48",
        "--batch_prompts",
        "1",
        "--timestamp",
        "kill",
        "--output_root",
        str(tmp_path),
    ]
    raw = tmp_path / "output" / "explorer_2k_kill" / "aime24_raw.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "eval" / "run_evaluation.py"), *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (raw.exists() and raw.read_text().count("\n") >= 2):
            assert proc.poll() is None, "the evaluation exited before it could be interrupted"
            assert time.monotonic() < deadline, "no raw outputs appeared within 120 s"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = raw.read_text().splitlines()
    assert 2 <= len(finished) < 30
    with raw.open("a") as f:  # a line torn by the kill
        f.write('{"question": "Every morning Aya')

    from s2l_trl.evaluation.runner import _LazyEngine

    resumed = EvalArguments(
        model_path=str(long_context_model),
        backend="transformers",
        k=4,
        benchmarks=["aime24"],
        data_dir=str(shared_eval_data),
        max_tokens=48,
        timestamp="kill",
        output_root=str(tmp_path),
    )
    engine = _CountingEngine(_LazyEngine(resumed, None).get())
    summary = run_evaluation(resumed, engine=engine)
    lines = raw.read_text().splitlines()
    assert engine.prompts == 30 - len(finished)  # finished problems were not sampled again
    assert len(lines) == 30 and lines[: len(finished)] == finished
    questions = [json.loads(line)["question"] for line in lines]
    assert len(set(questions)) == 30
    assert summary["benchmarks"]["aime24"]["num_problems"] == 30

    # Changing a setting the outputs depend on is refused rather than mixed into the same run.
    with pytest.raises(ValueError, match="k: 4 \\(before\\) vs 8 \\(now\\)"):
        run_evaluation(
            EvalArguments(
                model_path=str(long_context_model),
                backend="transformers",
                k=8,
                benchmarks=["aime24"],
                data_dir=str(shared_eval_data),
                max_tokens=48,
                timestamp="kill",
                output_root=str(tmp_path),
            )
        )


@pytest.mark.parametrize("kind", ["dot_slash", "absolute", "deep", "under_existing_folder", "a_file"])
def test_missing_local_model_path_is_refused_before_writing(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    model_path = {
        "dot_slash": "./outputs/Qwen3-8B-S2L",
        "absolute": str(tmp_path / "gone" / "ckpt"),
        "deep": "outputs/run/checkpoint-32",
        "under_existing_folder": "outputs/Qwen3-8B-S2L",  # could be a Hub id, but outputs/ is a local folder
        "a_file": "weights.bin",
    }[kind]
    root = tmp_path / "root"
    error = ValueError if kind == "a_file" else FileNotFoundError
    with pytest.raises(error, match=f"model_path {model_path!r} .*expected a model folder"):
        eval_main(["--model_path", model_path, "--backend", "transformers", "--output_root", str(root)])
    assert not root.exists()  # nothing written: no output/ or result/ folder


def test_hub_ids_are_not_taken_for_local_paths(tmp_path, monkeypatch):
    from s2l_trl.evaluation.runner import looks_like_local_path

    monkeypatch.chdir(tmp_path)
    assert not any(looks_like_local_path(n) for n in ("Qwen/Qwen3-1.7B", "gpt2", "org/model-v1.5_x"))
    assert all(looks_like_local_path(n) for n in ("./m", "/m", "~/m", "a/b/c", "m/", "..", "bad name/x"))


@pytest.mark.parametrize("second", ["malformed", "missing"])
def test_a_bad_second_benchmark_is_found_before_anything_is_sampled_or_written(tiny, tmp_path, monkeypatch, second):
    """Every benchmark file is read before sampling starts: a bad later one costs nothing and leaves no config.txt."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "aime24.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    if second == "malformed":
        (data / "math500.jsonl").write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n{not json\n")
    sampled = []
    monkeypatch.setattr(SamplingEngine, "generate", lambda self, *a, **k: sampled.append(a) or None)
    root = tmp_path / "root"
    expected = r"math500\.jsonl:2: malformed JSON line" if second == "malformed" else r"math500\.jsonl"
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        eval_main(
            ["--model_path", str(tiny["explorer"]), "--backend", "transformers", "--benchmarks", "aime24", "math500"]
            + ["--data_dir", str(data), "--output_root", str(root), "--max_tokens", "4", "--k", "1"]
        )
    assert sampled == [] and not root.exists()
