"""Answer extraction and judging for `s2l-eval` and `s2l-sample`.

Two judges are reported side by side:

* ``math_verify`` (primary): the gold answer and the prediction are parsed by Hugging Face's ``math_verify`` and
  compared symbolically, so ``0.5`` matches ``\\frac12`` and ``[0,1)`` does not match ``(0,1)``.
* ``official_compat``: the lenient rule of the S2L-PO authors' evaluator, kept only so numbers can be set beside
  the paper's. After light normalisation a prediction counts as correct when it *equals or contains* the gold
  answer as a substring. Caveat: gold ``4`` then matches a predicted ``14`` (or ``\\frac{4}{7}``), which inflates
  scores, mostly on integer-answer benchmarks such as AIME. Unlike the authors' code, the prediction it sees comes
  from the brace-matching extraction below (their ``\\boxed{([^}]*)}`` regex turns ``\\boxed{\\frac{1}{2}}`` into
  ``\\frac{1``), so ``official_compat`` differs from the paper's numbers only where their extraction broke.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_LINE = re.compile(r"(?im)^[ \t*#]*(?:final\s+)?answer[ \t*]*[:：][ \t]*(.+?)[ \t]*$")


@dataclass
class Judgement:
    """One sample's verdict: the answer extracted from it and whether each judge accepts it."""

    predicted: str
    correct: bool
    official_compat: bool


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, with nested braces matched.

    ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``; the brace-less form ``\\boxed 5`` gives ``5``. Returns ``None``
    when there is no complete box (e.g. the completion was cut inside it).
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    while start >= 0:
        content = _box_content(text, start)
        if content is not None:
            return content
        # An unterminated last box (truncated output): fall back to the box before it.
        start = max(text.rfind(cmd, 0, start) for cmd in _BOX_COMMANDS)
    return None


def _box_content(text: str, start: int) -> str | None:
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        # `\boxed 5`: the argument runs to the next space or `$`.
        match = re.match(r"[^\s$]+", text[i:])
        return match.group(0).rstrip(".") if match and i > start + 5 else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and text[j - 1] != "\\":
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def extract_math_answer(text: str) -> str | None:
    """The final answer of a math completion: the last ``\\boxed{}``, else the last ``Answer: ...`` line.

    The ``Answer:`` form is what DAPO-Math-17k's prompt asks for. Returns ``None`` when neither is present.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    lines = _ANSWER_LINE.findall(text)
    if lines:
        answer = lines[-1].strip().strip("$").strip()
        return answer.rstrip(".") or None
    return None


def extract_choice(text: str, labels: list[str] | tuple[str, ...] = ("A", "B", "C", "D", "E")) -> str | None:
    """The chosen option letter of a multiple-choice completion, or ``None``.

    Looks, in order, at the last ``\\boxed{}`` (``\\boxed{B}``, ``\\boxed{\\text{(B)}}``), the last
    ``answer is X`` / ``Answer: X`` phrase, and a completion that is just the letter (``B``, ``(B)``, ``B.``).
    """
    alternatives = "|".join(re.escape(label) for label in labels)
    letter = re.compile(rf"^[\s(\[{{]*(?:\\text\{{)?[\s(]*({alternatives})[\s)\]}}.:]*(?:\}})?[\s)\]}}.]*$")
    boxed = extract_boxed(text)
    if boxed is not None:
        match = letter.match(boxed)
        if match:
            return match.group(1)
    phrases = re.findall(rf"(?i:answer)(?:\s+is)?\s*[:：]?\s*\**\(?({alternatives})\b\)?", text)
    if phrases:
        return phrases[-1]
    match = letter.match(text.strip())
    return match.group(1) if match else None


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def unboxed_answer(text: str) -> str:
    """The answer of a completion with no ``\\boxed{}`` and no ``Answer:`` line: an expression math_verify finds after
    an answer phrase ("the final answer is $\\frac12$"), else the last number of the text, else ``""``.

    Never the last expression wherever it stands: weak models restate the question, and math_verify evaluates what
    they restate (``$\\binom{31}{28}$`` is 4495, ``$\\log_2 64$`` is 6), which judged every echo of a "Compute ..."
    problem correct (all three "correct" SmolLM2-135M answers of a real MATH500 run were such echoes; TRL's
    ``accuracy_reward``, the training reward, gave them 0).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    anchored = [
        LatexExtractionConfig(try_extract_without_anchor=False),
        ExprExtractionConfig(try_extract_without_anchor=False),
    ]
    parsed = parse(text, extraction_config=anchored)
    if len(parsed) > 1:
        return str(parsed[1])
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else ""


def _normalize_compat(answer: str) -> str:
    answer = answer.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("$", "")
    answer = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", answer)
    return re.sub(r"\s+", "", answer).rstrip(".")


def official_compat_match(predicted: str | None, gold: Any) -> bool:
    """The authors' lenient rule: normalised prediction equals or *contains* the normalised gold answer.

    Kept for comparison with the paper only; gold ``4`` is accepted for a predicted ``14``.
    """
    if not predicted:
        return False
    gold_norm, pred_norm = _normalize_compat(str(gold)), _normalize_compat(predicted)
    return bool(gold_norm) and (gold_norm == pred_norm or gold_norm in pred_norm)


def _parse(expr: str) -> list:
    from math_verify import parse

    parsed = parse(f"${expr}$")
    return parsed if parsed else parse(expr)


class MathJudge:
    """Judges predictions against one gold answer with ``math_verify``, parsing the gold answer once.

    Args:
        gold: the reference answer (a string such as ``"\\frac{1}{2}"`` or an int such as AIME's ``204``).
    """

    def __init__(self, gold: Any):
        self.gold = str(gold).strip()
        self.gold_parsed = _parse(self.gold)

    def is_correct(self, predicted: str | None) -> bool:
        """Whether ``predicted`` (an extracted answer, not a whole completion) equals the gold answer."""
        from math_verify import verify

        if not predicted:
            return False
        if not self.gold_parsed:  # gold math_verify cannot read (free text): exact match after normalisation
            return _normalize_compat(predicted) == _normalize_compat(self.gold)
        return bool(verify(self.gold_parsed, _parse(predicted)))

    def judge(self, completion: str) -> Judgement:
        """Extract the final answer of ``completion`` and judge it with both rules."""
        predicted = extract_math_answer(completion)
        if predicted is None:
            predicted = unboxed_answer(completion)
        return self.judge_predicted(predicted)

    def judge_predicted(self, predicted: str) -> Judgement:
        """Judge an already extracted answer (the ``--skip_extraction`` path)."""
        return Judgement(
            predicted=predicted,
            correct=self.is_correct(predicted),
            official_compat=official_compat_match(predicted, self.gold),
        )


class ChoiceJudge:
    """Exact-letter judging of multiple-choice completions (CommonsenseQA).

    Args:
        gold: the correct label, e.g. ``"A"``.
        labels: the option labels of the problem.
    """

    def __init__(self, gold: Any, labels: list[str] | tuple[str, ...] = ("A", "B", "C", "D", "E")):
        self.gold = str(gold).strip()
        self.labels = tuple(labels)

    def judge(self, completion: str) -> Judgement:
        return self.judge_predicted(extract_choice(completion, self.labels) or "")

    def judge_predicted(self, predicted: str) -> Judgement:
        correct = predicted.strip().upper() == self.gold.upper() and bool(predicted)
        # The lenient rule would accept any text containing the letter; for letters the exact match is the only
        # meaningful reading, so both judges agree here.
        return Judgement(predicted=predicted, correct=correct, official_compat=correct)


def make_judge(gold: Any, kind: str = "math", labels: list[str] | None = None) -> MathJudge | ChoiceJudge:
    """A judge for one problem: ``kind="math"`` (math_verify + official_compat) or ``"choice"`` (exact letter)."""
    if kind == "math":
        return MathJudge(gold)
    if kind == "choice":
        return ChoiceJudge(gold, labels or ("A", "B", "C", "D", "E"))
    raise ValueError(f"Unknown answer kind {kind!r}; expected 'math' or 'choice'.")
