"""Task families with verifiable rewards (DESIGN.md, "Task families").

A family generates seed problems over difficulty levels, grades a response exactly with partial
credit, and mutates a problem harder / easier / sideways with the answer recomputed by code. A
problem is a prompt plus a plain-JSON meta dict ({"family", "params", "answer", "level"}).

    base          Problem, the TaskFamily protocol, meta checks
    grading       last-number extraction and the numeric grade with partial credit
    arithmetic    the built-in "arithmetic" family
    registry      families by name or "module:Class"; family_of(meta)
    problem_sets  training / held-out sets (disjoint by construction) and their JSONL files
"""

from eva.tasks.arithmetic import Arithmetic
from eva.tasks.base import DIRECTIONS, Direction, Problem, TaskFamily, canonical_json, check_meta
from eva.tasks.grading import last_number, numeric_grade
from eva.tasks.problem_sets import (
    heldout_set,
    mutate_in_split,
    problem_set,
    read_problems,
    split_of,
    training_set,
    write_problems,
)
from eva.tasks.registry import FAMILIES, family_of, get_family, load_family, register

__all__ = [
    "DIRECTIONS",
    "FAMILIES",
    "Arithmetic",
    "Direction",
    "Problem",
    "TaskFamily",
    "canonical_json",
    "check_meta",
    "family_of",
    "get_family",
    "heldout_set",
    "last_number",
    "load_family",
    "mutate_in_split",
    "numeric_grade",
    "problem_set",
    "read_problems",
    "register",
    "split_of",
    "training_set",
    "write_problems",
]
