"""Family builds as a random factor and regimes chosen by measured accuracy (results/miniature/README.md): two micro
families built with different family seeds, their recorded held-out curves and machine, the band selection on them
and on a controlled curve, and the refusal when no checkpoint is in band."""

from __future__ import annotations

import json

import pytest

from s2l_trl.miniature import regime
from s2l_trl.miniature.family import Family, FamilySpec, build_family
from s2l_trl.miniature.settings import CoDistillSettings, RLSettings


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _micro(family_seed: int) -> FamilySpec:
    return FamilySpec(
        sizes=["S"],
        sft_steps=30,
        train_problems=300,
        batch_size=16,
        checkpoints=[],
        checkpoint_every=10,
        heldout_problems=8,
        family_seed=family_seed,
        numerics="native",  # the test process runs with this machine's own kernel settings
    )


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> dict[int, Family]:
    root = tmp_path_factory.mktemp("builds")
    return {k: build_family(root / f"fs{k}", _micro(k)) for k in (0, 1)}


def test_two_family_seeds_are_two_builds_of_one_task(two_builds):
    a, b = two_builds[0], two_builds[1]
    assert a.spec.build_seed != b.spec.build_seed
    curves = {k: f.heldout_curve("S") for k, f in two_builds.items()}
    # A checkpoint every 10 steps plus the final one, each measured on the same held-out problems.
    assert [p["step"] for p in curves[0]] == [10, 20, 30] == [p["step"] for p in curves[1]]
    for point in curves[0] + curves[1]:
        assert {"greedy_accuracy", "pass@1", "greedy_coherent", "weights_sha256"} <= set(point)
    # Other initial weights and batch order: every checkpoint differs; the task (tokenizer, corpus) does not.
    assert all(p["weights_sha256"] != q["weights_sha256"] for p, q in zip(curves[0], curves[1]))
    assert (a.tokenizer / "tokenizer.json").read_text() == (b.tokenizer / "tokenizer.json").read_text()
    assert a.manifest["models"]["S"]["weights_sha256"] == curves[0][-1]["weights_sha256"]
    # The machine and kernel settings that produced the floats are part of the record.
    env = a.manifest["environment"]
    assert env["processor"] and env["torch_cpu_capability"] and env["versions"]["torch"]
    assert env["numerics"] == "native" and "ATEN_CPU_CAPABILITY" in env["kernel_settings"]
    assert "family_seed 1" in b.label


def test_the_band_picks_a_checkpoint_of_each_build_in_band_or_refuses_naming_the_curve(two_builds):
    for family in two_builds.values():
        curve = family.heldout_curve("S")
        # The band around the measured accuracy of the build's first checkpoint picks that checkpoint.
        first = 100 * curve[0]["greedy_accuracy"]
        picked = regime.select(family, "S", regime.Band(first, first))
        assert picked.step == 10 and picked.path == str(family.root / "S-step10")
        assert picked.weights_sha256 == curve[0]["weights_sha256"]
        assert picked.greedy_accuracy in regime.Band(first, first)
        # A band above everything the build reached: one clear error naming the size, the band and the curve.
        top = 100 * max(p["greedy_accuracy"] for p in curve)
        band = regime.Band(min(100.0, top + 1), 100.0)
        with pytest.raises(regime.RegimeError) as err:
            regime.select(family, "S", band)
        message = str(err.value)
        assert "no checkpoint of S" in message and str(band) in message and "(step 10)" in message
        assert "(step 30)" in message and "--checkpoint_every" in message


def test_the_first_checkpoint_in_band_on_a_learning_curve(tmp_path):
    """The selection rule on a curve with a steep part: the first checkpoint in band, whatever comes later."""
    spec = FamilySpec(sizes=["L"], sft_steps=200, checkpoints=[], checkpoint_every=40)
    accuracies = {40: 0.01, 80: 0.04, 120: 0.22, 160: 0.31, 200: 0.93}
    manifest = {
        "heldout": {
            "L": [
                {"step": s, "greedy_accuracy": a, "pass@1": a / 2, "greedy_coherent": 0.0, "weights_sha256": f"w{s}"}
                for s, a in accuracies.items()
            ]
        }
    }
    family = Family(tmp_path, spec, manifest)
    assert regime.select(family, "L", regime.Band.parse("20,35")).step == 120
    assert regime.select(family, "L", regime.Band.parse("pass@1:12,20")).step == 160
    final = regime.select(family, "L", regime.Band.parse("90,100"))
    assert final.step == 200 and final.path == str(tmp_path / "L")
    with pytest.raises(regime.RegimeError, match=r"1\.0% \(step 40\).*93\.0% \(step 200\)"):
        regime.select(family, "L", regime.Band.parse("40,80"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20", r"learner_band='20' is not a band; write LOW,HIGH"),
        ("35,20", r"need 0 <= LOW <= HIGH <= 100"),
        ("accuracy:20,35", r"unknown metric 'accuracy'"),
    ],
)
def test_bad_bands_are_refused_before_any_run(text, message):
    with pytest.raises(ValueError, match=message):
        RLSettings(learner_band=text)
    with pytest.raises(ValueError, match=message.replace("learner_band", "explorer_band")):
        RLSettings(explorer_band=text)
    with pytest.raises(ValueError, match=message.replace("learner_band", "small_band")):
        CoDistillSettings(small_band=text)


def test_an_rl_run_starts_from_the_band_pick_and_records_it(two_builds, tmp_path):
    from s2l_trl.miniature.rl_experiment import run_one

    family = two_builds[1]
    curve = family.heldout_curve("S")
    accuracy = 100 * curve[1]["greedy_accuracy"]
    # Every checkpoint of a micro family scores alike; a band that excludes nothing below step 20 is not possible,
    # so the band picks the first checkpoint at that accuracy: checked against the curve itself.
    band = f"{accuracy},{accuracy}"
    expected = next(p for p in curve if 100 * p["greedy_accuracy"] == accuracy)
    settings = RLSettings(
        learner="S",
        learner_band=band,
        explorer="S",
        steps=1,
        eval_every=1,
        eval_problems=4,
        eval_samples=1,
        num_generations=2,
        prompts_per_step=1,
        max_completion_length=8,
        seeds=[0],
    )
    result = run_one(family, settings, "grpo", 0, tmp_path)
    assert result["learner"] == str(family.path("S", expected["step"]))
    assert result["learner_start"]["weights_sha256"] == expected["weights_sha256"] == result["initial_weights_sha256"]
    assert result["family"]["family_seed"] == 1 and result["environment"]["processor"]
    saved = json.loads((tmp_path / "runs" / "grpo-seed0" / "run.json").read_text())
    assert saved["settings"]["learner_band"] == band


def test_the_interval_over_family_builds_counts_both_sources_of_variation():
    from s2l_trl.miniature.stats import mean_ci, two_level_interval

    # Three builds whose seeds agree closely within a build but whose builds disagree: pooling every (build, seed)
    # as independent would give a narrow interval; the interval over the builds' means is as wide as the builds'
    # disagreement.
    by_build = {0: [0.10, 0.11, 0.09], 1: [-0.05, -0.04, -0.06], 2: [0.02, 0.03, 0.01]}
    pooled = two_level_interval(by_build)
    naive = mean_ci([x for v in by_build.values() for x in v])
    assert pooled["mean"] == pytest.approx(naive["mean"]) == pytest.approx(0.0233333, abs=1e-6)
    assert pooled["groups"] == 3 and pooled["values"] == 9
    assert pooled["low"] < naive["low"] and pooled["high"] > naive["high"]
    assert pooled["low"] < 0 < pooled["high"]  # the builds disagree in sign: no claim
    assert pooled["sd_within_group"] == pytest.approx(0.01) and pooled["sd_between_groups"] > 0.07
    with pytest.raises(ValueError, match="at least 2 groups"):
        two_level_interval({0: [0.1, 0.2]})


def test_the_families_report_pairs_seeds_within_each_build(tmp_path):
    from s2l_trl.miniature import families_report

    def run(method: str, seed: int, final: float, tokens: int) -> dict:
        evals = [
            {"step": 0, "greedy_accuracy": 0.2, "pass@1": 0.1},
            {"step": families_report.DEMO_STEP, "greedy_accuracy": final - 0.02, "pass@1": float("nan")},
            {"step": 120, "greedy_accuracy": final, "pass@1": final / 2},
        ]
        per_step = [{"learner_tokens": tokens}]
        return {"method": method, "seed": seed, "evals": evals, "per_step": per_step, "family": {"label": "b"}}

    runs = {
        k: {
            "grpo": {s: run("grpo", s, 0.30 + 0.01 * s, 1000) for s in range(3)},
            "s2l_po": {s: run("s2l_po", s, 0.30 + 0.01 * s + gain, 720) for s in range(3)},
        }
        for k, gain in ((0, 0.05), (1, -0.01))
    }
    report = families_report.build_report(runs, unavailable={2: "no checkpoint of M in the family at x has ..."})
    final = report["paired"]["s2l_po"]["final_greedy"]
    assert final["per_family"][0]["differences"] == pytest.approx([0.05] * 3)
    assert final["per_family"][1]["mean"] == pytest.approx(-0.01)
    assert final["pooled"]["mean"] == pytest.approx(0.02) and final["pooled"]["groups"] == 2
    ratio = report["paired"]["s2l_po"]["learner_tokens_ratio"]["pooled"]
    assert ratio["mean"] == pytest.approx(0.72)
    # The main job's claims are calibrated at its last step: the accuracy there, and what each method gained by then.
    assert report["paired"]["s2l_po"]["greedy_at_demo_end"]["pooled"]["mean"] == pytest.approx(0.02)
    gained = report["families"][0]["methods"]["s2l_po"]["gain_at_demo_end"]["mean"]
    assert gained == pytest.approx(0.30 + 0.01 + 0.05 - 0.02 - 0.2)
    text = families_report.write_report(report, tmp_path, "demo")
    assert "learner tokens, ratio" in text and "| S2L-PO | final greedy accuracy |" in text
    assert "| S2L-PO | greedy accuracy at step 80 (the main job's end) |" in text
    assert "| family_seed 2 | regime not available in this build: no checkpoint of M" in text
    assert (tmp_path / "families.png").stat().st_size > 1000 and (tmp_path / "families.json").is_file()


def test_boolean_settings_parse_true_and_false_on_the_command_line():
    import argparse

    from s2l_trl.miniature.__main__ import _settings_args

    parser = argparse.ArgumentParser()
    _settings_args(parser, RLSettings)
    assert parser.parse_args(["--pass_at_1_at_ends_only", "false"]).pass_at_1_at_ends_only is False
    assert parser.parse_args(["--pass_at_1_at_ends_only", "true"]).pass_at_1_at_ends_only is True
    assert parser.parse_args([]).pass_at_1_at_ends_only is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--pass_at_1_at_ends_only", "maybe"])


def test_an_interrupted_family_build_resumes_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """A build killed after its first size keeps that size (checked by checksum) and ends with the same family."""
    from s2l_trl.miniature import family as family_module

    spec = FamilySpec(**{**_micro(2).__dict__, "sizes": ["M", "S"], "sft_steps": 10, "checkpoint_every": 5})
    whole = build_family(tmp_path / "whole", spec)

    real_sft = family_module.sft

    def dies_on_the_second_size(*args, **kwargs):
        if args[-1] == "sft S":
            raise KeyboardInterrupt
        return real_sft(*args, **kwargs)

    monkeypatch.setattr(family_module, "sft", dies_on_the_second_size)
    with pytest.raises(KeyboardInterrupt):
        build_family(tmp_path / "resumed", spec)
    assert not (tmp_path / "resumed/family.json").exists() and (tmp_path / "resumed/family.partial.json").exists()
    monkeypatch.setattr(family_module, "sft", real_sft)
    resumed = build_family(tmp_path / "resumed", spec)
    assert "M kept from the interrupted build" in capsys.readouterr().out
    for size in ("M", "S"):
        assert resumed.manifest["heldout"][size] == whole.manifest["heldout"][size]
        assert resumed.manifest["models"][size]["weights_sha256"] == whole.manifest["models"][size]["weights_sha256"]
    assert not (tmp_path / "resumed/family.partial.json").exists()
    # A partial build of other settings is never mixed in.
    (tmp_path / "other").mkdir()
    partial = {**json.loads(json.dumps(whole.manifest)), "spec": {**whole.manifest["spec"], "sft_steps": 11}}
    (tmp_path / "other/family.partial.json").write_text(json.dumps(partial))
    with pytest.raises(ValueError, match="interrupted build with other settings"):
        build_family(tmp_path / "other", spec)


def test_the_codistill_report_says_how_each_model_was_picked():
    from s2l_trl.miniature.codistill_report import _start

    settings = {"small_band": "40,60", "small_sft_step": 500, "large_band": "", "large_sft_step": None}
    assert _start(settings, "small") == "first checkpoint with held-out 40,60 (greedy, %)"  # the band, not step 500
    assert _start(settings, "large") == "SFT step final"
