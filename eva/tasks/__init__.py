"""Task families with verifiable rewards (DESIGN.md, "Task families").

A family generates seed problems over difficulty levels, grades a response exactly with partial
credit, and mutates a problem harder / easier / sideways with the answer recomputed by code. A
problem is a prompt plus a plain-JSON meta dict ({"family", "params", "answer", "level"}).

    base          Problem, the TaskFamily protocol, meta checks
    grading       last-number extraction and the numeric grade with partial credit
    arithmetic    the built-in "arithmetic" family
"""

from eva.tasks.arithmetic import Arithmetic
from eva.tasks.base import DIRECTIONS, Direction, Problem, TaskFamily, canonical_json, check_meta
from eva.tasks.grading import last_number, numeric_grade

__all__ = [
    "DIRECTIONS",
    "Arithmetic",
    "Direction",
    "Problem",
    "TaskFamily",
    "canonical_json",
    "check_meta",
    "last_number",
    "numeric_grade",
]
