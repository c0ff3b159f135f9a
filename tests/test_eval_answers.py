"""Answer extraction and judging on the cases the authors' evaluator gets wrong, plus benchmark file loading."""

import json

import pytest

from s2l_trl.answers import (
    ChoiceJudge,
    MathJudge,
    extract_boxed,
    extract_choice,
    extract_math_answer,
    official_compat_match,
)
from s2l_trl.evaluation.data import BenchmarkDataError, load_benchmark, user_turn


def test_extract_boxed_handles_nested_braces():
    assert extract_boxed(r"so the answer is \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{1} then \boxed{\sqrt{\frac{3}{4}}}") == r"\sqrt{\frac{3}{4}}"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed 5 is it") == "5"
    # A box cut off by the token limit is skipped in favour of the last complete one.
    assert extract_boxed(r"\boxed{3} and finally \boxed{\frac{1") == "3"
    assert extract_boxed("no box") is None


def test_extract_math_answer_falls_back_to_answer_line():
    assert extract_math_answer("work...\nAnswer: $34$") == "34"
    assert extract_math_answer("Answer: 12\n\\boxed{13}") == "13"  # the box wins
    assert extract_math_answer("nothing") is None


@pytest.mark.parametrize(
    "gold, completion, correct",
    [
        (r"\frac{1}{2}", r"\boxed{\frac{1}{2}}", True),
        (r"\frac12", r"\boxed{0.5}", True),
        ("0.5", r"\boxed{\frac12}", True),
        ("[0,1)", r"\boxed{[0,1)}", True),
        ("[0,1)", r"\boxed{(0,1)}", False),
        (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}", True),
        ("(1,2)", r"\boxed{(2,1)}", False),
        (204, r"The total is \boxed{204}.", True),
        (204, r"\boxed{2040}", False),
        ("34", "Answer: 34", True),
    ],
)
def test_math_verify_judge(gold, completion, correct):
    assert MathJudge(gold).judge(completion).correct is correct


def test_gold_substring_of_prediction_is_wrong_for_math_verify_but_right_for_official_compat():
    verdict = MathJudge(4).judge(r"\boxed{14}")
    assert verdict.predicted == "14"
    assert verdict.correct is False
    assert verdict.official_compat is True  # the authors' lenient rule, documented caveat
    assert official_compat_match("x = 4", "4") and not official_compat_match("", "4")
    assert not MathJudge(4).judge(r"\boxed{5}").official_compat


def test_prediction_without_box_is_read_by_math_verify_and_recorded():
    verdict = MathJudge(17).judge("so she has 17 apples")
    assert verdict.predicted == "17" and verdict.correct
    assert MathJudge("1/2").judge("The final answer is $\\frac12$.").correct  # after an answer phrase
    assert MathJudge(1600).judge("so x is 1,600 in total").correct


@pytest.mark.parametrize(
    "gold, completion",
    [  # real SmolLM2-135M-Instruct answers to MATH500 problems that restate the question without solving it
        (4495, "The probability of choosing a number between 31 and 28 is $\\binom{31}{28}$."),
        (6, "We evaluate $\\log_{2}{64}$ here, a reminder that some numbers cannot be expressed exactly."),
        (1, "The expression $1^{(2^{235423523})}$ uses the exponential function with base 2."),
    ],
)
def test_a_restated_question_is_not_an_answer(gold, completion):
    """Without a box or an answer phrase, an expression math_verify would evaluate to the gold value is the question
    restated, not an answer (TRL's accuracy_reward, the training reward, gives it 0 too)."""
    verdict = MathJudge(gold).judge(completion)
    assert not verdict.correct and verdict.predicted != ""


def test_choice_extraction_and_exact_letter_scoring():
    assert extract_choice(r"The answer is \boxed{\text{(B)}}") == "B"
    assert extract_choice("I think the answer is (C).") == "C"
    assert extract_choice("D") == "D"
    assert extract_choice("A revolving door is a door") is None
    judge = ChoiceJudge("A")
    assert judge.judge(r"\boxed{A}").correct
    assert not judge.judge(r"\boxed{B}").correct
    assert not judge.judge("A bank, probably").correct


def test_shared_benchmarks_load_with_int_answers_and_choices(shared_eval_data):
    aime25 = load_benchmark("aime25", shared_eval_data)
    assert len(aime25) == 30 and isinstance(aime25[0]["answer"], int)
    csqa = load_benchmark("commonsenseqa", shared_eval_data, limit=3)
    assert csqa[0]["answer"] in csqa[0]["choices"]["label"]
    turn = user_turn(csqa[0], "nothink", "choice")
    assert turn.endswith(" /no_think") and "\nA. " in turn
    assert user_turn(aime25[0], "think").endswith(" /think")


def test_malformed_data_line_names_file_and_line(tmp_path):
    path = tmp_path / "aime24.jsonl"
    path.write_text(json.dumps({"question": "q1", "answer": 1}) + "\n" + '{"question": "q2", "answer": \n')
    with pytest.raises(BenchmarkDataError, match=r"aime24\.jsonl:2: malformed JSON"):
        load_benchmark("aime24", tmp_path)
    path.write_text(json.dumps({"question": "q1"}) + "\n")
    with pytest.raises(BenchmarkDataError, match=r"aime24\.jsonl:1: missing field\(s\) \['answer'\]"):
        load_benchmark("aime24", tmp_path)
    with pytest.raises(FileNotFoundError, match="math500.jsonl"):
        load_benchmark("math500", tmp_path)
