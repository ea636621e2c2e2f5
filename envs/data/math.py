"""Math word problems and answer checking for the persona-prefixed math environment (``envs.math``).

Three problem sources, all returned as :class:`MathProblem`:

- **GSM8K** (:func:`load_gsm8k`): the shipped ``gsm8k_train.jsonl`` (7,473) and ``gsm8k_test.jsonl``
  (1,319). ``difficulty`` is the number of ``<<...>>`` calculator annotations in the reference
  solution. ``max_steps`` keeps an *easy slice*: at most 1 step leaves 499 train / 83 test
  questions, at most 2 steps 2,674 train / 440 test.
- **Generated arithmetic word problems** (:func:`make_problems`): written from templates
  (shopping, baking, savings, a bus ride, a garden, a collection) with a difficulty knob,
  :data:`LEVELS` (1-6): level 1 is one addition of two numbers from 2 to 9; higher levels add
  operations, larger numbers and then multiplication and division. Every answer is an exact
  positive integer, every intermediate value too, and no answer equals a number written in its
  question (so copying a number from the question never scores).
- Any list of records the user builds (``MathProblem(...)``).

Answers are checked by ``envs.math_reward`` (the env's verifiable reward); :func:`accuracy` scores a
list of answers with it.

The personas the problems are asked under live in ``envs.math``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.splits import SPLITS, read_split
from envs.math_reward import _CALC_RE, _NUMBER_RE, _number_value, format_number, is_correct, to_number

DATA_DIR = Path(__file__).resolve().parent
GSM8K_SPLITS = ("train", "test")

# --- problems --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathProblem:
    """One word problem with a numeric answer.

    Attributes:
        id: Unique identifier (``gsm8k-train-12``, ``gen-L2-train-s0-7``...).
        question: The problem as the policy sees it.
        answer: The reference answer, stored as canonical text (``"72"``, ``"0.5"``); an int or a
            float is accepted and converted.
        source: Where it comes from: ``gsm8k-train``, ``gsm8k-test`` or ``generated``.
        difficulty: GSM8K: calculator steps of the reference solution; generated: the level.
        solution: A worked solution ending in ``#### <answer>`` (privileged; may be empty).
        expression: Generated problems: the arithmetic as a Python expression (for checking).
    """

    id: str
    question: str
    answer: str
    source: str = ""
    difficulty: int = 0
    solution: str = ""
    expression: str = ""

    def __post_init__(self) -> None:
        if not str(self.id).strip() or not str(self.question).strip():
            raise ValueError(f"a math problem needs an id and a question, got id={self.id!r}")
        object.__setattr__(self, "answer", format_number(to_number(self.answer)))
        object.__setattr__(self, "difficulty", int(self.difficulty))

    @property
    def value(self) -> float:
        """The reference answer as a float."""
        return float(self.answer)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MathProblem:
        """The problem :meth:`to_dict` wrote (unknown keys are ignored)."""
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in keys})


def calculator_steps(solution: str) -> int:
    """Number of ``<<...>>`` calculator annotations in a GSM8K solution."""
    return len(_CALC_RE.findall(solution))


def clean_solution(solution: str) -> str:
    """A GSM8K solution without its ``<<...>>`` calculator annotations."""
    return _CALC_RE.sub("", solution).strip()


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file (split on newlines only: GSM8K's strings hold unicode line separators)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def load_gsm8k(split: str = "train", *, max_steps: int | None = None,
               path: str | Path | None = None) -> list[MathProblem]:
    """GSM8K problems from the shipped files (or ``path``), in file order.

    Args:
        split: ``"train"`` (7,473) or ``"test"`` (1,319).
        max_steps: Keep only the *easy slice* whose solution has at most this many calculator
            steps (``<= 1``: 499 train / 83 test; ``<= 2``: 2,674 train / 440 test).
        path: A JSONL file with ``id, question, solution, answer`` instead of the shipped one.
    """
    if split not in GSM8K_SPLITS:
        raise ValueError(f"GSM8K split must be one of {GSM8K_SPLITS}, got {split!r}")
    rows = read_jsonl(Path(path) if path else DATA_DIR / f"gsm8k_{split}.jsonl")
    problems = [MathProblem(str(r["id"]), str(r["question"]), str(r["answer"]), f"gsm8k-{split}",
                            calculator_steps(str(r["solution"])), str(r["solution"])) for r in rows]
    if max_steps is not None:
        problems = [p for p in problems if p.difficulty <= int(max_steps)]
    return problems


# --- generated problems ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One difficulty level of the generated problems.

    Attributes:
        steps: Arithmetic operations per problem.
        max_number: Largest start value and largest number added or subtracted (the smallest is 2).
        ops: The operations that may appear (``+ - * /``), drawn uniformly per step.
        max_factor: Largest multiplier or divisor (and number of groups in a product start).
    """

    steps: int
    max_number: int
    ops: tuple[str, ...]
    max_factor: int = 1


LEVELS: dict[int, Level] = {
    1: Level(1, 9, ("+",)),                           # 3 + 4
    2: Level(1, 20, ("+", "-")),                      # 17 - 9
    3: Level(2, 20, ("+", "-")),                      # 12 + 7 - 5
    4: Level(2, 50, ("+", "-", "*"), 5),              # 4 * 9 + 23
    5: Level(3, 100, ("+", "-", "*", "/"), 9),        # (56 - 14) / 6 * 5
    6: Level(4, 500, ("+", "-", "*", "/"), 12),       # four operations, numbers up to 500
}
# The embedded 135M model, greedy, 40 held-out questions each (benchmarks/math_accuracy.py): 15% right at
# level 1, 10% at level 2, 0% at levels 3 and 4. Level 1 is the only one that gives RLVR a signal.
DEFAULT_DIFFICULTY = 1
EVAL_SHARE = 0.2  # share of the problem space reserved for the eval stream (hash split)
TEST_SHARE = 0.2  # and for the test stream

NAMES = ("Mia", "Noah", "Aisha", "Leo", "Sofia", "Kenji", "Amara", "Lucas", "Priya", "Mateo", "Chloe", "Omar",
         "Hana", "Ethan", "Zara", "Diego", "Lena", "Kwame", "Ivy", "Ravi", "Elena", "Sam", "Yusuf", "Nora")

# Each theme: the items counted, and templates for the start (one number, or a product of two), each
# operation on the running count and the question. Placeholders: name, item, a, b (start), n (an
# amount added or removed), k (a factor).
THEMES: dict[str, dict[str, tuple[str, ...]]] = {
    "shopping": {
        "items": ("apples", "oranges", "lemons", "pears", "peaches"),
        "start": ("{name} has {a} {item} in a basket.", "There are {a} {item} in {name}'s kitchen."),
        "product": ("{name} buys {a} bags of {item}, and every bag holds {b} {item}.",),
        "+": ("At the market, {name} buys {n} more {item}.", "A neighbour gives {name} {n} more {item}."),
        "-": ("{name} uses {n} of the {item} to make juice.", "{name} gives {n} {item} to a friend."),
        "*": ("By the weekend, {name} has {k} times as many {item} as before.",
              "After a big delivery, {name}'s pile of {item} grows to {k} times its size."),
        "/": ("{name} splits the {item} into {k} equal piles and keeps only one pile.",
              "{name} shares the {item} equally among {k} baskets and keeps one basket."),
        "question": ("How many {item} does {name} have now?",),
    },
    "baking": {
        "items": ("cookies", "muffins", "cupcakes", "bread rolls", "pancakes"),
        "start": ("{name} bakes {a} {item}.", "{name} has {a} {item} cooling on the counter."),
        "product": ("{name} bakes {a} trays of {item} with {b} {item} on each tray.",),
        "+": ("Then {name} bakes {n} more {item}.", "A friend brings over {n} more {item}."),
        "-": ("{name} sells {n} of the {item} at a bake sale.", "The family eats {n} of the {item}."),
        "*": ("{name} keeps baking until there are {k} times as many {item} as before.",
              "For a party, {name} bakes until the number of {item} is {k} times as large."),
        "/": ("{name} packs the {item} equally into {k} boxes and gives away every box but one.",
              "{name} splits the {item} evenly between {k} plates and keeps only one plate."),
        "question": ("How many {item} does {name} have now?",),
    },
    "savings": {
        "items": ("dollars",),
        "start": ("{name} has ${a} in a piggy bank.", "{name} has saved ${a}."),
        "product": ("{name} saves ${b} every week for {a} weeks.",),
        "+": ("{name} earns ${n} by washing cars.", "{name} gets ${n} as a birthday present."),
        "-": ("{name} spends ${n} on a book.", "{name} spends ${n} on a ticket to a concert."),
        "*": ("By the end of the year, {name}'s savings have grown to {k} times that amount.",
              "{name} invests the money, and it grows to {k} times as much."),
        "/": ("{name} divides the money equally into {k} envelopes and gives away all of them except one.",
              "{name} shares the money equally among {k} people, {name} included, and keeps one share."),
        "question": ("How many dollars does {name} have now?", "How much money, in dollars, does {name} have now?"),
    },
    "bus": {
        "items": ("passengers",),
        "start": ("{name} is driving a bus with {a} passengers on board.",),
        "product": ("{name}'s bus has {a} rows of seats, and {b} passengers sit in each row.",),
        "+": ("At the next stop, {n} more passengers get on.", "Near the park, {n} more passengers get on."),
        "-": ("At the next stop, {n} passengers get off.", "At the station, {n} passengers get off."),
        "*": ("After a football match, the number of passengers on board becomes {k} times as large.",
              "So many people get on at the big station that there are {k} times as many passengers as before."),
        "/": ("The passengers split into {k} equal groups, and only one group stays on the bus.",
              "The passengers form {k} groups of the same size, and every group but one gets off."),
        "question": ("How many passengers are on {name}'s bus now?",),
    },
    "garden": {
        "items": ("tulips", "sunflowers", "tomato plants", "rose bushes"),
        "start": ("{name} has {a} {item} in the garden.",),
        "product": ("{name} plants {a} rows of {item} with {b} {item} in each row.",),
        "+": ("{name} plants {n} more {item}.", "A neighbour gives {name} {n} more {item} to plant."),
        "-": ("A storm ruins {n} of the {item}.", "{name} gives {n} of the {item} to a neighbour."),
        "*": ("By the next spring, there are {k} times as many {item} in the garden as before.",
              "The {item} spread until there are {k} times as many as before."),
        "/": ("{name} divides the {item} into {k} equal groups and sells every group except one.",
              "{name} splits the {item} equally among {k} gardens and keeps one share."),
        "question": ("How many {item} does {name} have in the garden now?",),
    },
    "collection": {
        "items": ("marbles", "stickers", "stamps", "seashells", "trading cards"),
        "start": ("{name} has a collection of {a} {item}.",),
        "product": ("{name} has {a} boxes of {item} with {b} {item} in each box.",),
        "+": ("{name} wins {n} more {item} in a game.", "{name} finds {n} more {item}."),
        "-": ("{name} trades away {n} {item}.", "{name} loses {n} {item}."),
        "*": ("After a lucky month, {name} has {k} times as many {item} as before.",
              "Over the summer, {name}'s collection grows to {k} times its size."),
        "/": ("{name} shares the {item} equally among {k} people, {name} included, and keeps one share.",
              "{name} divides the {item} into {k} equal bags and gives away every bag except one."),
        "question": ("How many {item} does {name} have now?",),
    },
}


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _draw_problem(rng: np.random.Generator, level: Level) -> dict[str, Any] | None:
    """One candidate problem, or None when the draws break a rule (the caller draws again).

    Every number written in the question is at least 2 (plural nouns stay right), so is every
    intermediate count; products are capped at ``max_number * max_factor``; a template is used at
    most once per question.
    """
    theme_key = _pick(rng, sorted(THEMES))
    theme = THEMES[theme_key]
    item, name = _pick(rng, theme["items"]), _pick(rng, NAMES)
    ops = [_pick(rng, level.ops) for _ in range(level.steps)]
    if ops[0] == "*":  # a product start counts as the first operation
        a = int(rng.integers(2, level.max_factor + 1))
        b = int(rng.integers(2, max(3, level.max_number // level.max_factor) + 1))
        sentences = [_pick(rng, theme["product"]).format(name=name, item=item, a=a, b=b)]
        value, expression, lines, ops = a * b, f"{a} * {b}", [f"{a} * {b} = {a * b}"], ops[1:]
    else:
        a = int(rng.integers(2, level.max_number + 1))
        sentences = [_pick(rng, theme["start"]).format(name=name, item=item, a=a)]
        value, expression, lines = a, str(a), [f"Start with {a}."]
    used: set[str] = set()
    for op in ops:
        if op == "+":
            amount = int(rng.integers(2, level.max_number + 1))
            new = value + amount
        elif op == "-":
            if value < 4:
                return None
            amount = int(rng.integers(2, min(level.max_number, value - 2) + 1))
            new = value - amount
        elif op == "*":
            amount = int(rng.integers(2, level.max_factor + 1))
            new = value * amount
            if new > level.max_number * level.max_factor:
                return None
        else:
            divisors = [k for k in range(2, level.max_factor + 1) if value % k == 0 and value // k >= 2]
            if not divisors:
                return None
            amount = _pick(rng, divisors)
            new = value // amount
        template = _pick(rng, theme[op])
        if template in used:
            return None
        used.add(template)
        sentences.append(template.format(name=name, item=item, **{"n" if op in "+-" else "k": amount}))
        lines.append(f"{value} {op} {amount} = {new}")
        expression = f"({expression}) {op} {amount}" if " " in expression else f"{expression} {op} {amount}"
        value = new
    sentences.append(_pick(rng, theme["question"]).format(name=name, item=item))
    question = " ".join(s[0].upper() + s[1:] for s in sentences)
    if any(_number_value(m) == value for m in _NUMBER_RE.finditer(question)):
        return None  # the answer must never be a number already written in the question
    return {"theme": theme_key, "item": item, "question": question, "answer": value, "expression": expression,
            "solution": "\n".join([*lines, f"#### {value}"])}


def _side(key: str) -> str:
    """Which side of the problem space a problem's arithmetic falls on: ``eval``, ``test`` or ``train``."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    return "eval" if u < EVAL_SHARE else "test" if u < EVAL_SHARE + TEST_SHARE else "train"


def draw_distinct(num: int, split: str, max_attempts: int | None, what: str,
                  draw: Callable[[int], tuple[str, str, MathProblem] | None], *,
                  patience: int | None = None) -> list[MathProblem]:
    """Calls ``draw(i)`` until ``num`` problems with distinct questions on ``split``'s side exist.

    ``draw(i)`` proposes the ``i``-th problem as ``(question, side key, problem)`` (None: no problem
    this time); a proposal whose question was seen, or whose key hashes to another side
    (:func:`_side`), is dropped. ``router_*`` splits draw from the training side.

    Args:
        num: Problems wanted.
        split: The stream's split.
        max_attempts: Proposals before giving up (default ``200 * num + 1000``).
        what: Names the problems in the error message.
        draw: The proposal function.
        patience: With a number, ``num`` is an upper bound: drawing stops once this many proposals
            in a row brought nothing new, and the problems found so far are returned (a small
            problem space, e.g. one level's drills, is then served whole). None: ``num`` is required.

    Raises:
        ValueError: After ``max_attempts`` proposals with too few kept (``patience`` None), or with
            none at all.
    """
    side = split if split in ("eval", "test") else "train"
    limit = max_attempts if max_attempts is not None else 200 * int(num) + 1000
    problems: list[MathProblem] = []
    seen: set[str] = set()
    misses = 0
    for _ in range(limit):
        if len(problems) >= num or (patience is not None and misses >= patience):
            break
        proposal = draw(len(problems))
        if proposal is None or proposal[0] in seen or _side(proposal[1]) != side:
            misses += 1
            continue
        misses = 0
        seen.add(proposal[0])
        problems.append(proposal[2])
    if len(problems) < num and (patience is None or not problems):
        raise ValueError(f"found only {len(problems)} distinct {what} in {limit} attempts; ask for fewer")
    return problems


def make_problems(num: int, difficulty: int = DEFAULT_DIFFICULTY, seed: int = 0, split: str = "train",
                  *, max_attempts: int | None = None) -> list[MathProblem]:
    """Generated arithmetic word problems of one difficulty level, deterministic in all arguments.

    Train, eval and test streams never share a problem: a hash of each candidate's arithmetic
    (theme, item and expression, not the name or wording) puts it on the eval side
    (:data:`EVAL_SHARE`, 20%), the test side (:data:`TEST_SHARE`, 20%) or the training side, and
    each stream keeps only its own side. ``router_train`` and
    ``router_val`` draw from the training side with their own random streams. Questions within a
    stream are distinct, and the first ``k`` problems are the same for any ``num >= k``.

    Args:
        num: Number of problems.
        difficulty: A key of :data:`LEVELS` (1-6).
        seed: Seed of the stream.
        split: One of ``train, router_train, router_val, eval, test``.
        max_attempts: Give up after this many candidates (default ``200 * num + 1000``).

    Raises:
        ValueError: For an unknown level or split, or when the level has fewer distinct problems
            than asked for.
    """
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {sorted(LEVELS)}, got {difficulty!r}")
    read_split(split, "envs.data.math.make_problems")
    level = LEVELS[difficulty]
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(difficulty), SPLITS.index(split), 0x6D617468])

    def draw(i: int) -> tuple[str, str, MathProblem] | None:
        d = _draw_problem(rng, level)
        if d is None:
            return None
        return d["question"], f"{d['theme']}|{d['item']}|{d['expression']}", MathProblem(
            f"gen-L{difficulty}-{split}-s{seed}-{i}", d["question"], str(d["answer"]), "generated", difficulty,
            d["solution"], d["expression"])

    return draw_distinct(num, split, max_attempts, f"level-{difficulty} {split} problems", draw)


def accuracy(answers: Sequence[str], problems: Sequence[MathProblem]) -> float:
    """Share of ``answers`` whose final number is correct for the problem at the same position."""
    if len(answers) != len(problems):
        raise ValueError(f"got {len(answers)} answers for {len(problems)} problems")
    if not answers:
        raise ValueError("accuracy of no answers is undefined")
    return sum(is_correct(a, p.answer) for a, p in zip(answers, problems)) / len(answers)


__all__ = [
    "DATA_DIR", "DEFAULT_DIFFICULTY", "EVAL_SHARE", "LEVELS", "NAMES", "SPLITS", "TEST_SHARE", "THEMES", "Level",
    "MathProblem",
    "accuracy", "calculator_steps", "clean_solution", "load_gsm8k", "make_problems", "read_jsonl",
]
