"""The miniature task: multi-operand addition with written intermediate steps, in several valid orders.

A problem is ``Add 23+45+17``; a solution writes one partial sum per step, in any order of the operands, then the
answer in ``\\boxed{}``: ``23+45=68,68+17=85 \\boxed{85}`` or ``45+17=62,62+23=85 \\boxed{85}``. Every written order
is a valid *solution path*; the paths differ in their intermediate results (68 vs 62), so two completions with the
same answer can still be different solutions. A wrong digit early in the chain propagates to the answer, so the
model must stay coherent over the whole chain, which is what makes whole-solution diversity matter.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

# The prompt is short on purpose: on a 2-core CPU every prompt token is paid for in every rollout.
PROMPT_TEMPLATE = "Add {}"
STEP_RE = re.compile(r"(\d+)\+(\d+)=(\d+)")
BOXED_RE = re.compile(r"\\boxed\{(-?\d+)\}")


def make_problem(rng: random.Random, num_operands: int = 3, low: int = 10, high: int = 99) -> tuple[int, ...]:
    """Operands of one problem, each uniform in [low, high]."""
    return tuple(rng.randint(low, high) for _ in range(num_operands))


def solution_text(operands: tuple[int, ...], order: list[int]) -> str:
    """The written solution adding ``operands`` in the order ``order`` (a permutation of their indices)."""
    if sorted(order) != list(range(len(operands))):
        raise ValueError(f"order must be a permutation of 0..{len(operands) - 1}, got {order!r}.")
    total = operands[order[0]]
    steps = []
    for i in order[1:]:
        steps.append(f"{total}+{operands[i]}={total + operands[i]}")
        total += operands[i]
    return ",".join(steps) + f" \\boxed{{{total}}}"


def random_solution(operands: tuple[int, ...], rng: random.Random) -> str:
    """One solution in a uniformly random operand order: the corpus shows every path, none privileged."""
    order = list(range(len(operands)))
    rng.shuffle(order)
    return solution_text(operands, order)


def prompt_text(operands: tuple[int, ...]) -> str:
    return PROMPT_TEMPLATE.format("+".join(str(x) for x in operands))


def make_rows(
    n: int,
    seed: int,
    num_operands: int = 3,
    exclude: set[tuple[int, ...]] | None = None,
    low: int = 10,
    high: int = 99,
    accept: Callable[[tuple[int, ...]], bool] | None = None,
) -> list[dict]:
    """``n`` conversational problems (TRL's prompt column layout) with ``solution`` (the sum) and ``operands``.

    Operands are uniform in [low, high]. Problems whose operand multiset is in ``exclude`` are skipped, so a held-out
    set never overlaps training; so are problems ``accept`` refuses (a class of problems, e.g. for the crossover).
    """
    rng = random.Random(seed)
    rows, seen = [], set(exclude or ())
    for _ in range(100 * n + 1000):  # bounded: a too-small problem space ends in the error below, not a hang
        if len(rows) == n:
            break
        ops = make_problem(rng, num_operands, low, high)
        key = tuple(sorted(ops))
        if key in seen or (accept is not None and not accept(ops)):
            continue
        seen.add(key)
        rows.append(
            {
                "prompt_id": f"mini-{seed}-{len(rows)}",
                "prompt": [{"role": "user", "content": prompt_text(ops)}],
                "solution": str(sum(ops)),
                "operands": list(ops),
            }
        )
    if len(rows) < n:
        raise ValueError(f"could draw only {len(rows)} distinct problems of {n} asked (seed={seed}).")
    return rows


def answer_of(text: str) -> int | None:
    """The integer in the last ``\\boxed{}`` of a completion, or None."""
    found = BOXED_RE.findall(text)
    return int(found[-1]) if found else None


def is_correct(text: str, gold: int | str) -> bool:
    answer = answer_of(text)
    return answer is not None and answer == int(gold)


def steps_of(text: str) -> list[tuple[int, int, int]]:
    """The written steps ``(x, y, x+y as written)`` of a completion, in order."""
    return [(int(a), int(b), int(c)) for a, b, c in STEP_RE.findall(text)]


def path_of(text: str) -> tuple[int, ...]:
    """The solution path of a completion: its sequence of intermediate results (what differs between orders)."""
    return tuple(c for _, _, c in steps_of(text))


def is_coherent(text: str, operands: list[int] | tuple[int, ...]) -> bool:
    """Every step adds correctly, chains from the previous result, uses each operand once, and the box holds the
    last result: a correct *derivation*, not just a correct answer."""
    steps = steps_of(text)
    answer = answer_of(text)
    if not steps or answer is None:
        return False
    remaining = list(operands)
    first = steps[0][0]
    if first not in remaining:
        return False
    remaining.remove(first)
    total = first
    for x, y, z in steps:
        if x != total or y not in remaining or x + y != z:
            return False
        remaining.remove(y)
        total = z
    return not remaining and answer == total


def is_consistent(text: str) -> bool:
    """Every written step adds correctly and chains from the previous result, and the box holds the last result,
    whatever numbers the steps start from: an arithmetically sound chain (:func:`is_coherent` also asks that the
    chain adds the problem's own operands, each once)."""
    steps = steps_of(text)
    answer = answer_of(text)
    if not steps or answer is None:
        return False
    if any(x + y != z for x, y, z in steps) or any(b[0] != a[2] for a, b in zip(steps, steps[1:])):
        return False
    return answer == steps[-1][2]


def accuracy_reward(completions: list, solution: list[str], **kwargs) -> list[float]:
    """1.0 when the last boxed integer equals the sum (TRL reward signature). Exact integer match: the task's answers
    are integers, and this is ~100x cheaper than math-verify on a 2-core CPU, where rewards are on the step's path."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if is_correct(t, s) else 0.0 for t, s in zip(texts, solution)]


def corpus_pairs(rows: list[dict], seed: int, shortcut: bool = False) -> list[tuple[str, str]]:
    """``(prompt text, solution text)`` pairs, one random path per problem: the SFT corpus every size shares.
    ``shortcut``: one random path among those whose last step has no units carry (see :func:`last_step_carries`)."""
    rng = random.Random(seed)
    if shortcut:
        return [(r["prompt"][0]["content"], shortcut_solution(tuple(r["operands"]), rng)) for r in rows]
    return [(r["prompt"][0]["content"], random_solution(tuple(r["operands"]), rng)) for r in rows]


# The shortcut construction of the crossover (results/miniature/README.md, "The pass@k crossover"): a corpus in which
# the last written step never carries from the units into the tens, although earlier steps do. "The last step does
# not carry" is then right on every training problem, and wrong on the held-out class of problems whose last step
# carries in every order.


def last_step_carries(operands: tuple[int, ...], order: list[int]) -> bool:
    """Whether the last step of the solution in ``order`` carries from the units into the tens."""
    rest = sum(operands[i] for i in order[:-1])
    return rest % 10 + operands[order[-1]] % 10 >= 10


def no_carry_orders(operands: tuple[int, ...]) -> list[list[int]]:
    """The orders (permutations of operand indices) whose last step does not carry."""
    from itertools import permutations

    return [list(o) for o in permutations(range(len(operands))) if not last_step_carries(operands, list(o))]


def has_no_carry_order(operands: tuple[int, ...]) -> bool:
    """A problem of the shortcut corpus: at least one order's last step does not carry."""
    return bool(no_carry_orders(operands))


def always_last_carry(operands: tuple[int, ...]) -> bool:
    """The held-out class of the shortcut construction: every order's last step carries."""
    return not no_carry_orders(operands)


def shortcut_solution(operands: tuple[int, ...], rng: random.Random) -> str:
    """A solution in a random order among those whose last step does not carry."""
    orders = no_carry_orders(operands)
    if not orders:
        raise ValueError(f"every order of {operands} carries in its last step.")
    return solution_text(operands, orders[rng.randrange(len(orders))])
