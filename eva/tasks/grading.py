"""Grading a free-text response against a numeric answer: the last number counts, with partial credit.

Small policies rarely answer in a fixed format, so the grader reads the LAST number of the response
("... 23 + 45 = 68." -> 68) and scores it:

    exact (value == answer, so "42.0" == 42)      -> 1.0
    otherwise  0.5 * max(0, 1 - log10(1 + |value - answer|) / log10(11 + |answer|))
    no number                                      -> 0.0

The partial term lies in [0, 0.5): it is largest for near misses and reaches 0 once
|value - answer| >= |answer| + 10 (the +10 leaves room around small answers: for answer 7 an error of
17 or more scores 0, for answer 1000 one of 1010). Examples for answer 42: 41 -> 0.413, 52 -> 0.199,
-42 -> 0. So when no sample of a prompt is exactly right, the closer ones still beat
the far ones and a preference pair exists; a right answer always beats every wrong one.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

# A number: optional sign (ASCII '-' or U+2212, not right after a word character or ')', so the
# minus of "10-5" is an operator), digits with optional thousands commas ("1,234,567"), optional
# decimals. A trailing period is sentence punctuation ("42." -> 42). ASCII digits only.
_NUMBER = re.compile(r"(?:(?<![\w)])[-\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)", re.ASCII)


def last_number(text: str) -> Decimal | None:
    """The last number written in `text` (commas dropped, sign kept), or None if there is none."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return Decimal(matches[-1].replace(",", "").replace("\u2212", "-"))
    except InvalidOperation:  # cannot happen for what the pattern matches; be safe anyway
        return None


def partial_credit(value: Decimal, answer: Decimal) -> float:
    """0.5 * max(0, 1 - log10(1 + |value - answer|) / log10(11 + |answer|)), in [0, 0.5]."""
    err = abs(value - answer)
    ratio = float((1 + err).log10()) / float((11 + abs(answer)).log10())
    return 0.5 * max(0.0, 1.0 - ratio)


def numeric_grade(answer: int | float, response: str) -> float:
    """Score in [0, 1] of `response` for a problem whose exact answer is `answer` (module docstring)."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer):
        raise ValueError(f"numeric answer must be a finite int or float, got {answer!r}")
    value = last_number(response)
    if value is None:
        return 0.0
    target = Decimal(answer) if isinstance(answer, int) else Decimal(repr(answer))
    return 1.0 if value == target else partial_credit(value, target)
