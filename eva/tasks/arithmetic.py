"""The built-in `arithmetic` family: "What is A op B?", plain or wrapped in a one-line story.

params (plain JSON):
    op        "+", "-", "*" or "/" (shown as +, -, ×, ÷)
    operands  [A, B] as they appear in the text
    digits    [dx, dy]: digit counts of the core pair (x, y), see below
    template  None for "What is A op B?", else an index into TEMPLATES[op] (a word problem)

The core pair (x, y) is what difficulty is measured on: for + - * it is (A, B); for "/" it is
(quotient, divisor), the dividend A = x * y, so every quotient is exact. For "-" the larger operand
comes first (answers are never negative). Operands have no leading zeros: a d-digit operand is drawn
uniformly from [10^(d-1), 10^d - 1] (1..9 for d = 1).

Levels: f"{max(dx, dy)}d{op}" plus "w" for a word problem, e.g. "1d+", "2d-", "3d*", "2d/w". `generate`
draws both core numbers with d digits. Measured for SmolLM2-135M: 1d+ 56% right, 1d* 41%, 2d+ 9%,
2d- 1%, 3d+ 0%, so 1d..3d spans its frontier; MAX_DIGITS leaves room above.

Mutations (the answer is always recomputed from the new params):
    harder    one more digit on x or y (a fresh number), or the next op (+ -> - -> * -> /, the core
              pair kept), or a plain problem wrapped as a word problem
    easier    the reverse of each
    sideways  fresh core numbers with the same digits, op and template, or another template
Each direction picks uniformly among the moves that exist; None when none does (easier from a plain
1-digit sum, harder from a 4-digit division word problem).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from eva.tasks.base import Direction, Problem
from eva.tasks.grading import numeric_grade

OPS: tuple[str, ...] = ("+", "-", "*", "/")  # in order of difficulty
SYMBOLS: dict[str, str] = {"+": "+", "-": "-", "*": "×", "/": "÷"}
MAX_DIGITS = 4
_LEVEL = re.compile(r"^([1-9])d([-+*/])(w?)$")

# Several stories per op, each with {a} and {b} (the operands in order); the answer stays A op B.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": (
        "Sara has {a} apples and buys {b} more. How many apples does she have now?",
        "A library has {a} books and receives {b} new ones. How many books does it have now?",
        "Tom walks {a} meters in the morning and {b} meters in the afternoon. How many meters does he walk in total?",
    ),
    "-": (
        "Sara has {a} apples and gives {b} of them away. How many apples does she have left?",
        "A bus carries {a} passengers and {b} get off at the next stop. How many passengers are still on the bus?",
        "A shop had {a} pencils and sold {b} of them. How many pencils are left?",
    ),
    "*": (
        "There are {a} boxes with {b} pencils in each box. How many pencils are there in total?",
        "A farmer plants {a} rows of trees with {b} trees in each row. How many trees does he plant?",
        "A ticket costs {b} dollars. How many dollars do {a} tickets cost?",
    ),
    "/": (
        "{a} cookies are shared equally among {b} children. How many cookies does each child get?",
        "A rope {a} meters long is cut into {b} equal pieces. How many meters long is each piece?",
        "{a} students are split into {b} equal teams. How many students are in each team?",
    ),
}


def apply_op(op: str, a: int, b: int) -> int:
    """A op B for the operands as shown; "/" must divide exactly."""
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a} / {b} is not an exact quotient")
        return a // b
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _draw(rng: np.random.Generator, digits: int) -> int:
    """A uniform number with exactly `digits` digits (1..9 for one digit)."""
    return int(rng.integers(10 ** (digits - 1) if digits > 1 else 1, 10**digits))


def _ndigits(x: int) -> int:
    return len(str(abs(x)))


def _build(op: str, x: int, y: int, template: int | None) -> dict[str, Any]:
    """Meta from the core pair: orders "-" operands, forms the "/" dividend, computes answer and level."""
    if op == "-" and y > x:
        x, y = y, x
    operands = [x * y, y] if op == "/" else [x, y]
    digits = [_ndigits(x), _ndigits(y)]
    params = {"op": op, "operands": operands, "digits": digits, "template": template}
    level = f"{max(digits)}d{op}" + ("w" if template is not None else "")
    return {"family": Arithmetic.name, "params": params, "answer": apply_op(op, *operands), "level": level}


def _parse(meta: dict[str, Any]) -> tuple[str, int, int, int | None]:
    """(op, x, y, template) of an arithmetic meta; ValueError naming what is malformed."""
    if meta.get("family") != Arithmetic.name:
        raise ValueError(f"not an arithmetic problem: family={meta.get('family')!r}")
    p = meta.get("params") or {}
    op, operands, template = p.get("op"), p.get("operands"), p.get("template")
    if op not in OPS:
        raise ValueError(f"arithmetic params.op must be one of {OPS}, got {op!r}")
    if not (isinstance(operands, list) and len(operands) == 2 and all(type(v) is int and v > 0 for v in operands)):
        raise ValueError(f"arithmetic params.operands must be two positive ints, got {operands!r}")
    if template is not None and not (type(template) is int and 0 <= template < len(TEMPLATES[op])):
        raise ValueError(f"arithmetic params.template must be None or 0..{len(TEMPLATES[op]) - 1}, got {template!r}")
    a, b = operands
    x = apply_op("/", a, b) if op == "/" else a
    return op, x, b, template


def parse_level(level: str) -> tuple[int, str, bool]:
    """(digits, op, word) of a level label such as "2d+" or "1d*w"."""
    m = _LEVEL.match(level)
    if not m or int(m[1]) > MAX_DIGITS:
        raise ValueError(
            f"arithmetic level {level!r}: expected <digits 1..{MAX_DIGITS}>d<op {' '.join(OPS)}>[w], e.g. 2d+ or 1d*w"
        )
    return int(m[1]), m[2], m[3] == "w"


Core = tuple[str, int, int, int | None]  # (op, x, y, template)

# The moves of each direction; `_move` returns None for a move that does not exist from a problem.
MOVES: dict[str, tuple[str, ...]] = {
    "harder": ("more_digits", "next_op", "wrap"),
    "easier": ("fewer_digits", "prev_op", "unwrap"),
    "sideways": ("new_numbers", "other_template"),
}


def _move(name: str, core: Core, rng: np.random.Generator) -> Core | None:
    """One mutation move applied to a core, or None when it does not exist from there."""
    op, x, y, t = core
    i = OPS.index(op)
    if name in ("more_digits", "fewer_digits"):
        step = 1 if name == "more_digits" else -1
        slots = [k for k, v in enumerate((x, y)) if 1 <= _ndigits(v) + step <= MAX_DIGITS]
        if not slots:
            return None
        pair = [x, y]
        k = slots[int(rng.integers(len(slots)))]
        pair[k] = _draw(rng, _ndigits(pair[k]) + step)
        return op, pair[0], pair[1], t
    if name == "next_op":
        return (OPS[i + 1], x, y, t) if i + 1 < len(OPS) else None
    if name == "prev_op":
        return (OPS[i - 1], x, y, t) if i > 0 else None
    if name == "wrap":
        return (op, x, y, int(rng.integers(len(TEMPLATES[op])))) if t is None else None
    if name == "unwrap":
        return (op, x, y, None) if t is not None else None
    if name == "new_numbers":
        return op, _draw(rng, _ndigits(x)), _draw(rng, _ndigits(y)), t
    if name == "other_template":
        others = [k for k in range(len(TEMPLATES[op])) if t is not None and k != t]
        return (op, x, y, others[int(rng.integers(len(others)))]) if others else None
    raise ValueError(f"unknown arithmetic move {name!r}")


class Arithmetic:
    """Integer arithmetic with exact answers and log-error partial credit (module docstring)."""

    name = "arithmetic"

    def generate(self, rng: np.random.Generator, level: str, n: int) -> list[Problem]:
        """`n` problems at `level`: both core numbers with the level's digits, a random template if "w"."""
        digits, op, word = parse_level(level)
        problems = []
        for _ in range(n):
            x, y = _draw(rng, digits), _draw(rng, digits)
            template = int(rng.integers(len(TEMPLATES[op]))) if word else None
            problems.append(self._problem(_build(op, x, y, template)))
        return problems

    def grade(self, meta: dict[str, Any], response: str) -> float:
        """`eva.tasks.grading.numeric_grade` of the response against meta["answer"]."""
        return numeric_grade(meta["answer"], response)

    def mutate(self, meta: dict[str, Any], direction: Direction, rng: np.random.Generator) -> Problem | None:
        """One random move of `direction` that changes the problem (MOVES), or None if none exists."""
        if direction not in MOVES:
            raise ValueError(f"mutation direction must be one of {', '.join(MOVES)}, got {direction!r}")
        core = _parse(meta)
        old = _build(*core)["params"]
        moves = list(MOVES[direction])
        rng.shuffle(moves)
        for name in moves:
            for _ in range(16):  # new_numbers may redraw the same pair (1-digit levels): retry
                new = _move(name, core, rng)
                if new is None:
                    break
                built = _build(*new)
                if built["params"] != old:
                    return self._problem(built)
        return None

    def prompt_text(self, meta: dict[str, Any]) -> str:
        op, _, _, template = _parse(meta)
        a, b = meta["params"]["operands"]
        if template is None:
            return f"What is {a} {SYMBOLS[op]} {b}?"
        return TEMPLATES[op][template].format(a=a, b=b)

    def level(self, meta: dict[str, Any]) -> str:
        """The level label recomputed from the params (not read from meta["level"])."""
        return _build(*_parse(meta))["level"]

    def key(self, meta: dict[str, Any]) -> str:
        """ "A op B" without wording, e.g. "23+45": a word problem and its plain form share a key."""
        op, _, _, _ = _parse(meta)
        a, b = meta["params"]["operands"]
        return f"{a}{op}{b}"

    def _problem(self, meta: dict[str, Any]) -> Problem:
        return Problem(prompt=self.prompt_text(meta), meta=meta)
