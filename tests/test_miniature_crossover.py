"""The crossover constructions (s2l_trl/miniature/crossover.py): the shortcut corpus and its held-out class, the
problem sets, and the three constructions end to end at a micro size."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from s2l_trl.miniature import crossover, task
from s2l_trl.miniature.family import FamilySpec, build_family, train_rows
from s2l_trl.miniature.settings import CrossoverSettings


def test_last_step_carry_and_the_shortcut_corpus():
    ops = (23, 45, 17)
    # 23+45=68, 68+17: 8 + 7 carries; 23+17=40, 40+45: 0 + 5 does not.
    assert task.last_step_carries(ops, [0, 1, 2]) and not task.last_step_carries(ops, [0, 2, 1])
    assert task.no_carry_orders(ops) == [[0, 2, 1], [1, 2, 0], [2, 0, 1], [2, 1, 0]]
    assert task.always_last_carry((19, 29, 39))  # 48 + 39, 58 + 29, 68 + 19: every last step carries
    rng = random.Random(0)
    for _ in range(200):
        problem = task.make_problem(rng)
        if task.always_last_carry(problem):
            with pytest.raises(ValueError, match="carries"):
                task.shortcut_solution(problem, rng)
            continue
        text = task.shortcut_solution(problem, rng)
        assert task.is_coherent(text, problem)
        x, y, _ = task.steps_of(text)[-1]
        assert x % 10 + y % 10 < 10  # the shortcut holds on every corpus solution


def test_problem_sets_of_the_shortcut_family_and_out_of_distribution(tmp_path):
    spec = FamilySpec(
        sizes=["S"], construction="shortcut", sft_steps=2, train_problems=200, checkpoints=[], numerics="native"
    )
    assert all(task.has_no_carry_order(tuple(r["operands"])) for r in train_rows(spec))
    family = build_family(tmp_path / "fam", spec)
    held_class = crossover.eval_rows(family, "last_step_carry", 20)
    control = crossover.eval_rows(family, "heldout", 20)
    assert all(task.always_last_carry(tuple(r["operands"])) for r in held_class)
    assert all(task.has_no_carry_order(tuple(r["operands"])) for r in control)
    natural = crossover.eval_rows(family, "natural", 60)
    assert any(task.always_last_carry(tuple(r["operands"])) for r in natural)  # the class at its natural rate
    train = {tuple(sorted(r["operands"])) for r in train_rows(spec)}
    assert not train & {tuple(sorted(r["operands"])) for r in held_class + control + natural}
    assert all(len(r["operands"]) == 4 for r in crossover.eval_rows(family, "four_operands", 5))
    assert all(100 <= x <= 999 for r in crossover.eval_rows(family, "three_digit_operands", 5) for x in r["operands"])
    assert all(
        sorted(x < 10 for x in r["operands"]) == [False, False, True]
        for r in crossover.eval_rows(family, "one_digit_operand", 5)
    )
    with pytest.raises(ValueError, match="unknown problem set"):
        crossover.eval_rows(family, "five_operands", 5)


def test_constructions_end_to_end_at_micro_size(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = CrossoverSettings(
        n=4,
        num_problems=3,
        max_tokens=24,
        rl_steps=2,
        long_factor=2,
        cache_dir=str(tmp_path / "cache"),
        sft_steps=6,
        train_problems=300,
        batch_size=8,
        numerics="native",  # the test process runs with this machine's own kernels
    )
    try:
        with pytest.raises(ValueError, match="unknown construction"):
            crossover.run_crossover(settings, ["distilled"], tmp_path / "out")
        with pytest.raises(ValueError, match="unknown problem set"):
            crossover.run_crossover(replace(settings, sets="natural,five_operands"), ["ood"], tmp_path / "out")
        assert not (tmp_path / "cache").exists()  # refused before any family is built
        report = crossover.run_crossover(settings, ["shortcut", "ood", "rl_sharpened"], tmp_path / "out")
    finally:
        torch.set_num_threads(before)
    c = report["constructions"]
    assert set(c["shortcut"]["sets"]) == {"last_step_carry", "heldout", "natural"}
    assert set(c["shortcut"]["sets"]["heldout"]["sizes"]) == {"M", "L", "L-long"}
    long_family = json.loads((tmp_path / "cache" / "family-shortcut-x2" / "family.json").read_text())
    assert long_family["spec"]["sft_steps"] == 12 and list(long_family["models"]) == ["L"]
    assert set(c["ood"]["sets"]) == {"four_operands", "three_digit_operands", "one_digit_operand"}
    assert set(c["rl_sharpened"]["sets"]["heldout"]["sizes"]) == {"M", "L", "L-grpo"}
    saved = c["rl_sharpened"]["rl_run"]["saved_model"]
    assert (tmp_path / "out" / "rl_sharpened" / "rl_run" / "run.json").is_file()
    # The model sampled as L-grpo is the one the RL run trained (its checksum at the end of training).
    from transformers import AutoModelForCausalLM

    from s2l_trl.miniature.runs import weights_checksum

    assert weights_checksum(AutoModelForCausalLM.from_pretrained(saved["path"])) == saved["weights_sha256"]
    for construction, sets in (("shortcut", ["last_step_carry"]), ("ood", ["four_operands"])):
        for name in sets:
            for f in ("passk.json", "passk.md", "passk.png"):
                assert (tmp_path / "out" / construction / name / f).is_file()
    md = (tmp_path / "out" / "crossover.md").read_text()
    assert "| rl_sharpened | heldout |" in md and "L-grpo" in md
