"""The miniature experiments end to end at a reduced size (micro family, few steps, one seed): what must hold at any
size. The full-size numbers are in results/miniature/."""

from __future__ import annotations

import json

import pytest

from s2l_trl.miniature.family import FamilySpec, build_family
from s2l_trl.miniature.rl_experiment import run_experiment
from s2l_trl.miniature.settings import CoDistillSettings, PasskSettings, RLSettings
from s2l_trl.schedule import mix_alpha, split_group

# The test process runs with this machine's own kernel settings (family builds are pinned by default); a few
# held-out problems per checkpoint suffice here.
MICRO = {"numerics": "native", "heldout_problems": 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are too small to gain from a second thread; on a loaded 2-core machine it makes them several times
    # slower. Restored afterwards for the rest of the session.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def family(tmp_path_factory, one_thread):
    spec = FamilySpec(sizes=["S", "M"], sft_steps=20, train_problems=300, batch_size=16, checkpoints=[10], **MICRO)
    root = tmp_path_factory.mktemp("mini") / "family"
    built = build_family(root, spec)
    manifest = (root / "family.json").stat().st_mtime
    assert build_family(root, spec).manifest == built.manifest  # cached: a rerun reuses it...
    assert (root / "family.json").stat().st_mtime == manifest  # ...without rebuilding
    with pytest.raises(ValueError, match="other settings"):
        build_family(root, FamilySpec(sizes=["S", "M"], sft_steps=21, train_problems=300, checkpoints=[10], **MICRO))
    return built


def test_passk_files_and_monotone_curves(family, tmp_path):
    from s2l_trl.miniature.passk_experiment import run_passk

    summary = run_passk(family, tmp_path, PasskSettings(n=8, num_problems=4))
    for name in ("passk.json", "passk.md", "passk.png", "S/miniature.json", "M/miniature.json"):
        assert (tmp_path / name).is_file(), name
    for size, data in summary["sizes"].items():
        values = [data["pass@k"][str(k)] for k in range(1, 9)]
        assert all(b >= a - 1e-12 for a, b in zip(values, values[1:])), (size, values)
    assert set(summary["crossover_k"]) == {"S<M"}


def test_rl_pipeline(family, tmp_path):
    settings = RLSettings(
        learner="M",
        explorer="S",
        steps=3,
        mix_steps=3,
        eval_every=3,
        eval_problems=4,
        eval_samples=2,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=24,
        final_passk_n=4,
        seeds=[0],
    )
    report = run_experiment(family, settings, tmp_path, ["grpo", "grpo_high_temp", "s2l_po"], ablation_seeds=[0])
    for name in ("rl.json", "rl.md", "rl.png", "rl_passk.png", "passk_start/passk.json"):
        assert (tmp_path / name).is_file(), name
    # pass@k after training: per problem, 0..n correct answers, and coherent derivations are a subset of them; the
    # reference curves hold the starting learner and the explorer on the same problems.
    for m in ("grpo", "s2l_po"):
        final = json.loads((tmp_path / "runs" / f"{m}-seed0" / "run.json").read_text())["final_passk"]
        correct, coherent = final["math_verify"]["correct_counts"], final["coherent"]["correct_counts"]
        assert len(correct) == 4 and all(0 <= h <= c <= 4 for h, c in zip(coherent, correct))
        curve = [final["math_verify"]["pass@k"][str(k)] for k in range(1, 5)]
        assert all(b >= a - 1e-12 for a, b in zip(curve, curve[1:]))
        assert curve[0] == pytest.approx(sum(correct) / 16)
    assert set(report["start_passk"]["sizes"]) == {"M (start)", "S"}
    md = (tmp_path / "rl.md").read_text()
    assert "pass@k (%) after training" in md and "| M (start) |" in md
    assert "local `LocalExplorer` in a thread beside the learner, seeded with the run's seed" in md
    runs = {m: json.loads((tmp_path / "runs" / f"{m}-seed0" / "run.json").read_text()) for m in report["methods"]}
    # The three methods start from identical weights.
    assert len({r["initial_weights_sha256"] for r in runs.values()}) == 1
    # Learner rows per step are the schedule's G_s sums; GRPO generates every row.
    expected = [2 * split_group(mix_alpha(s, "linear", 3), 4)[1] for s in (1, 2, 3)]
    assert expected == [0, 4, 8]
    assert [s["learner_rows"] for s in runs["s2l_po"]["per_step"]] == expected
    assert [s["learner_rows"] for s in runs["grpo"]["per_step"]] == [8, 8, 8]
    s2l_steps = runs["s2l_po"]["per_step"]
    assert s2l_steps[0]["learner_tokens"] == 0 and s2l_steps[0]["explorer_tokens"] > 0
    assert all(0 < s["learner_tokens"] <= s["learner_rows"] * 24 for s in s2l_steps[1:])
    assert s2l_steps[2]["explorer_tokens"] == 0  # alpha = 0 at step T_mix
    # The rollouts by source: explorer rows only in the S2L-PO run, high-temperature rows under their own name.
    div = report["diversity"]
    assert "explorer" in div["s2l_po"] and "explorer" not in div["grpo"]
    assert "learner_high_temp" in div["grpo_high_temp"]
    # Policy- vs token-level diversity per source, from the runs' rollouts.
    from s2l_trl.miniature.diversity_report import diversity_report

    per = diversity_report({"micro": tmp_path}, tmp_path / "diversity", size=2, max_step=None)["sources"]["micro"]
    assert "S2L-PO explorer rows" in per and "GRPO learner rows, high T" in per
    assert all(0.0 <= d["coherent_share"] <= 1.0 and d["groups"] > 0 for d in per.values())
    assert (tmp_path / "diversity" / "diversity.png").stat().st_size > 1000
    # A rerun resumes: finished runs are not trained again.
    mtime = (tmp_path / "runs" / "grpo-seed0" / "run.json").stat().st_mtime
    run_experiment(family, settings, tmp_path, ["grpo"], ablation_seeds=[0])
    assert (tmp_path / "runs" / "grpo-seed0" / "run.json").stat().st_mtime == mtime
    # Per-step curves of a run, from its TRL log_history.
    from s2l_trl.miniature.__main__ import main

    main(["curves", str(tmp_path / "runs" / "s2l_po-seed0"), "--output", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_codistill_pipeline(family, tmp_path):
    from s2l_trl.miniature.codistill_experiment import run_codistill_experiment

    settings = CoDistillSettings(
        small="S",
        small_sft_step=10,
        large="M",
        large_sft_step=None,
        steps=3,
        eval_every=3,
        eval_problems=4,
        eval_samples=2,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=24,
        seeds=[0],
    )
    with pytest.raises(ValueError, match="SFT step 7"):
        run_codistill_experiment(family, CoDistillSettings(small="S", small_sft_step=7), tmp_path)
    assert not (tmp_path / "runs").exists()  # refused before any run
    report = run_codistill_experiment(family, settings, tmp_path, ["grpo_small", "grpo_large", "codistill"])
    for name in ("codistill.json", "codistill.md", "codistill.png"):
        assert (tmp_path / name).is_file(), name
    runs = report["runs"]
    # Each model starts from the same weights in its GRPO run and in the CoDistill run.
    for role in ("small", "large"):
        assert (
            runs[f"grpo_{role}"]["models"][role]["initial_weights_sha256"]
            == (runs["codistill"]["models"][role]["initial_weights_sha256"])
        )
    cod = json.loads((tmp_path / "runs" / "codistill-seed0" / "run.json").read_text())
    # The small model samples every row of every step; the large model samples none; both models are evaluated.
    assert [s["large_rows_generated"] for s in cod["per_step"]] == [0.0, 0.0, 0.0]
    assert all(s["small_rollout_s"] > 0 and s["small_update_s"] > 0 for s in cod["per_step"])
    assert [e["step"] for e in cod["evals"]["small"]] == [0, 3] == [e["step"] for e in cod["evals"]["large"]]
    grpo_large = json.loads((tmp_path / "runs" / "grpo_large-seed0" / "run.json").read_text())
    assert all(s["learner_rows"] == 8 for s in grpo_large["per_step"])
    assert runs["grpo_large"]["large_rows_generated"] == 24 and runs["codistill"]["large_rows_generated"] == 0
    ratios = report["step_time_ratios"]
    assert ratios["codistill/grpo_large:step_cpu_s"] == pytest.approx(
        runs["codistill"]["median_step_cpu_s"] / runs["grpo_large"]["median_step_cpu_s"]
    )
    # A rerun resumes: finished runs are not trained again.
    mtime = (tmp_path / "runs" / "codistill-seed0" / "run.json").stat().st_mtime
    run_codistill_experiment(family, settings, tmp_path, ["codistill"])
    assert (tmp_path / "runs" / "codistill-seed0" / "run.json").stat().st_mtime == mtime


def _fake_run(method: str, seed: int, accuracies: list[float], passk1: float) -> dict:
    """A run.json as the report reads it: evaluations at steps 0, 10, 20, and pass@k after training (n = 2)."""
    zero = dict.fromkeys(
        ["learner_tokens", "explorer_tokens", "learner_rows", "explorer_gen_s", "learner_gen_s", "scoring_s"], 0
    )
    per_step = [{**zero, "training_s": 0.0, "generation_wall_s": 0.0, "step_wall_s": 0.0}]
    evals = [
        {"step": 10 * i, "greedy_accuracy": a, "pass@1": a / 2, "greedy_coherent": 0.0}
        for i, a in enumerate(accuracies)
    ]
    curve = {"pass@k": {"1": passk1, "2": min(1.0, 2 * passk1)}, "correct_counts": [1]}
    return {
        "method": method,
        "seed": seed,
        "evals": evals,
        "per_step": per_step,
        "initial_weights_sha256": "x",
        "final_passk": {"n": 2, "math_verify": curve, "coherent": curve},
    }


def test_paired_differences_against_grpo_and_ablations_against_s2l_po():
    from s2l_trl.miniature import rl_report

    runs = []
    for seed, base in enumerate([0.30, 0.40, 0.35]):
        runs.append(_fake_run("grpo", seed, [0.2, base - 0.1, base], 0.30))
        # S2L-PO: +5 points at the end and +10 at step 10 on every seed; pass@1 after training +0.1 / +0.2 / +0.3.
        runs.append(_fake_run("s2l_po", seed, [0.2, base, base + 0.05], 0.40 + 0.1 * seed))
        runs.append(_fake_run("s2l_po_per_source", seed, [0.2, base - 0.1, base - 0.02 * seed], 0.30))
    summary = rl_report.summarize_runs(runs, threshold=0.5)
    paired = rl_report.paired_against(summary, "grpo")
    assert set(paired) == {"s2l_po", "s2l_po_per_source"}
    s2l = paired["s2l_po"]
    assert s2l["final_greedy"]["differences"] == pytest.approx([0.05, 0.05, 0.05])
    assert s2l["final_greedy"]["mean"] == pytest.approx(0.05) and s2l["final_greedy"]["low"] == pytest.approx(0.05)
    # Mean over the evaluations after step 0: ((base) + (base + 0.05)) / 2 - ((base - 0.1) + base) / 2 = 0.075.
    assert s2l["mean_greedy"]["mean"] == pytest.approx(0.075)
    ablation = rl_report.paired_against(summary, "s2l_po")["s2l_po_per_source"]["final_greedy"]
    assert ablation["differences"] == pytest.approx([-0.05, -0.07, -0.09])
    assert ablation["mean"] == pytest.approx(-0.07) and ablation["low"] < -0.07 < ablation["high"] < 0
    passk = rl_report.paired_passk_against(summary)["s2l_po"]["math_verify"]["1"]
    assert passk["differences"] == pytest.approx([0.1, 0.2, 0.3]) and passk["mean"] == pytest.approx(0.2)


def test_curves_skip_evaluations_that_measured_nothing():
    """`pass_at_1_at_ends_only` leaves pass@1 NaN between the ends: the curve is NaN there, the ends are averaged."""
    import math

    from s2l_trl.miniature import rl_report

    runs = [_fake_run("grpo", seed, [0.2, 0.3, 0.4 + 0.1 * seed], 0.3) for seed in range(2)]
    runs[0]["evals"][1]["pass@1"] = runs[1]["evals"][1]["pass@1"] = float("nan")
    runs[1]["evals"][2]["pass@1"] = float("nan")  # one seed without the value: the other's alone
    curve = rl_report.summarize_runs(runs, threshold=0.5)["grpo"]["curve"]["pass@1"]
    assert curve["mean"][0] == pytest.approx(0.1) and math.isnan(curve["mean"][1])
    assert curve["mean"][2] == pytest.approx(0.2) and curve["sd"][2] == 0.0


def test_rl_settings_refuse_bad_values_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="final_passk_n must be >= 0"):
        RLSettings(final_passk_n=-1)
    with pytest.raises(ValueError, match=r"learner_path='.*nowhere' is not a saved model"):
        RLSettings(learner_path=str(tmp_path / "nowhere"))


def test_demo_states_its_start_and_checks_its_claims(family, tmp_path):
    from s2l_trl.miniature import rl_report
    from s2l_trl.miniature.rl_experiment import demo

    settings = RLSettings(
        learner="M",
        learner_band="0,100",  # the first checkpoint of M: every micro checkpoint is in this band
        explorer="S",
        steps=2,
        mix_steps=2,
        eval_every=2,
        eval_problems=4,
        eval_samples=1,
        num_generations=2,
        prompts_per_step=2,
        max_completion_length=12,
        seeds=[0],
    )
    text, verdict = demo(family, settings, tmp_path)
    first = text.splitlines()[0]
    assert first.startswith("[start] family family_seed 0") and "learner M at SFT step 10" in first
    assert text.rstrip().splitlines()[-1] == verdict["line"] and verdict["line"].startswith("[check] ")
    assert json.loads((tmp_path / "demo_verdict.json").read_text())["ok"] == verdict["ok"]
    # The check itself, on runs whose outcome is known.
    runs = {
        m: {
            "evals": [{"greedy_accuracy": 0.25}, {"greedy_accuracy": final}],
            "per_step": [{"learner_tokens": tokens}],
        }
        for m, final, tokens in (("grpo", 0.30, 1000), ("s2l_po", 0.31, 720))
    }
    assert rl_report.demo_verdict(runs)["ok"]
    assert "28% fewer learner tokens" in rl_report.demo_verdict(runs)["line"]
    runs["s2l_po"]["evals"][-1]["greedy_accuracy"] = 0.25  # S2L-PO did not learn
    verdict = rl_report.demo_verdict(runs)
    assert not verdict["ok"] and "S2L-PO learned: NO (greedy 25.0% -> 25.0%)" in verdict["line"]
    runs["grpo"]["per_step"][0]["learner_tokens"] = 800  # 10% fewer only
    assert not rl_report.demo_verdict(runs)["checks"]["fewer learner tokens"]["holds"]
