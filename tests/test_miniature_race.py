"""The explorer-thread race experiment (s2l_trl/miniature/race.py) and the small-sample statistics it reports with."""

from __future__ import annotations

import threading

import pytest

from s2l_trl.miniature import race, stats
from s2l_trl.miniature.family import FamilySpec, build_family
from s2l_trl.miniature.settings import RLSettings

# The test process runs with this machine's own kernel settings (family builds are pinned by default); a few
# held-out problems per checkpoint suffice here.
MICRO = {"numerics": "native", "heldout_problems": 16}


def test_student_t_quantiles_and_intervals():
    # Textbook values of t_{0.975, dof}.
    assert stats.t_ppf(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert stats.t_ppf(0.975, 10) == pytest.approx(2.228139, abs=1e-6)
    assert stats.t_ppf(0.025, 4) == pytest.approx(-2.776445, abs=1e-6)
    ci = stats.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci["mean"] == 3.0 and ci["high"] - 3.0 == pytest.approx(2.776445 * 1.5811388 / 5**0.5, abs=1e-5)
    paired = stats.paired_differences({0: 0.5, 1: 0.4, 2: 0.6, 7: 1.0}, {0: 0.3, 1: 0.35, 2: 0.5})
    assert paired["seeds"] == [0, 1, 2] and paired["differences"] == pytest.approx([0.2, 0.05, 0.1])
    w = stats.welch([1, 2, 3, 4], [2, 3, 4, 5, 7])
    assert w["t"] == pytest.approx(-1.58068, abs=1e-4) and w["dof"] == pytest.approx(6.869, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_ci([1.0])


def test_kernel_level_draws_are_whole_blocks():
    report = race.kernel_race(rows=32, calls=60)
    assert report["calls_not_found_in_serial_stream"] == 0
    assert report["positions_used_twice"] == 0 and report["positions_used"] == 120


def test_reconstruct_finds_each_call_block_and_who_cut_in():
    import torch

    probs = torch.ones(16, 50)
    original = torch.multinomial
    with race.DrawRecorder() as rec:
        torch.manual_seed(3)
        torch.multinomial(probs, 1)
        worker = threading.Thread(target=lambda: [torch.multinomial(probs, 1) for _ in range(30)])
        worker.start()
        for _ in range(30):
            torch.multinomial(probs, 1)
        worker.join()
    assert torch.multinomial is original  # restored on exit
    result = race.reconstruct(rec.draws)
    assert result["calls"] == 61 and result["calls_not_reproduced"] == 0
    assert result["start_states_shared_by_informative_training_calls"] == 0
    assert result["informative_training_calls"] == 61  # uniform probabilities: every output identifies its draws
    assert result["per_source"]["learner"]["reproduced_from_one_contiguous_block"] == 61
    assert result["per_source"]["learner"]["threads"] == ["main", "worker"]
    # A call whose recorded output was not drawn from the stream is found out. The first call ends before the worker
    # starts, so no other call's block can begin where it ended: exactly one call is lost, whatever the timing.
    first = min(rec.draws, key=lambda d: d.t0)
    first.output = 1 - first.output.clamp(max=1)
    assert race.reconstruct(rec.draws)["calls_not_reproduced"] == 1


def test_run_level_on_the_micro_family(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = FamilySpec(sizes=["S", "M"], sft_steps=20, train_problems=300, batch_size=16, checkpoints=[10], **MICRO)
        family = build_family(tmp_path / "family", spec)
        settings = RLSettings(
            learner="M",
            explorer="S",
            steps=6,
            mix_steps=6,
            eval_every=6,
            eval_problems=4,
            eval_samples=2,
            num_generations=4,
            prompts_per_step=2,
            max_completion_length=24,
            seeds=[0],
        )
        report = race.run_race(family, settings, 0, tmp_path / "race")
    finally:
        torch.set_num_threads(before)
    threaded, foreground = report["runs"]["s2l_po_thread"], report["runs"]["s2l_po_foreground"]
    assert threaded["calls_not_reproduced"] == 0 == foreground["calls_not_reproduced"]
    assert threaded["per_source"]["explorer"]["threads"] == ["worker"]
    assert threaded["per_source"]["learner"]["threads"] == ["main"]
    assert foreground["per_source"]["explorer"]["threads"] == ["main"]  # in the foreground, on a forked generator
    assert threaded["start_states_shared_by_informative_training_calls"] == 0
    # In the foreground the learner's draws of a step are one unbroken stretch of the stream.
    assert foreground["per_source"]["learner"]["calls_not_adjacent_to_the_previous_call_of_their_step"] == 0
    assert foreground["worker_calls_overlapping_main_calls_in_time"] == 0
    assert report["first_step_differing_from_rerun"]["s2l_po_foreground"] is None
    assert report["steps_with_both_sources"] == [3, 4, 5]  # G_w = 4, 4, 3, 2, 1, 0 of G = 4
