"""What a task family is: the `Problem` record and the `TaskFamily` protocol every family implements.

A problem is a prompt text plus a plain-JSON `meta` dict, so it can live in a Parquet string column
and in JSONL files:

    {"family": "arithmetic", "params": {...}, "answer": 68, "level": "2d+"}

`params` is whatever the family needs to rebuild the problem (the text and the answer are functions
of it); `answer` is computed by code, never by a model; `level` is a short difficulty label used to
stratify reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Direction = Literal["harder", "easier", "sideways"]
DIRECTIONS: tuple[Direction, ...] = ("harder", "easier", "sideways")
META_KEYS: tuple[str, ...] = ("family", "params", "answer", "level")


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem: the prompt the solver sees and the meta its family grades and mutates it by."""

    prompt: str
    meta: dict[str, Any]

    @property
    def family(self) -> str:
        return self.meta["family"]

    @property
    def level(self) -> str:
        return self.meta["level"]

    def to_json(self) -> dict[str, Any]:
        """The JSONL form: {"prompt": ..., "meta": {...}}."""
        return {"prompt": self.prompt, "meta": self.meta}


@runtime_checkable
class TaskFamily(Protocol):
    """A family of problems with a verifiable answer (DESIGN.md, "Task families").

    Implementations are stateless: every random choice comes from the `rng` passed in, so a seed
    reproduces a problem set exactly. `meta` arguments are the dicts of `Problem.meta`.
    """

    name: str

    def generate(self, rng: np.random.Generator, level: str, n: int) -> list[Problem]:
        """`n` fresh problems at difficulty `level` (duplicates possible when the level is small)."""
        ...

    def grade(self, meta: dict[str, Any], response: str) -> float:
        """Score of one response in [0, 1]: 1.0 exactly right, partial credit below."""
        ...

    def mutate(self, meta: dict[str, Any], direction: Direction, rng: np.random.Generator) -> Problem | None:
        """A neighbour of the problem one step `direction`, answer recomputed; None if there is none."""
        ...

    def prompt_text(self, meta: dict[str, Any]) -> str:
        """The prompt the solver sees, rebuilt from `meta["params"]`."""
        ...

    def level(self, meta: dict[str, Any]) -> str:
        """The difficulty label of a problem (what reports stratify by)."""
        ...

    def key(self, meta: dict[str, Any]) -> str:
        """Identity of the underlying problem, independent of its wording (held-out splits use it).

        Two problems with the same key count as the same problem, e.g. "23+45" asked plainly and as a
        word problem. A family with no such notion returns `canonical_json(meta["params"])`.
        """
        ...


REQUIRED_METHODS: tuple[str, ...] = ("generate", "grade", "mutate", "prompt_text", "level", "key")


def missing_members(obj: object) -> list[str]:
    """What `obj` lacks to be a `TaskFamily`: a non-empty str `name` and the callables above."""
    name = getattr(obj, "name", None)
    missing = [] if isinstance(name, str) and name else ["name (a non-empty str)"]
    return missing + [m for m in REQUIRED_METHODS if not callable(getattr(obj, m, None))]


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON: the same value always gives the same string (for keys and hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_meta(meta: Any) -> dict[str, Any]:
    """Validate the shape of a problem's meta and return it; ValueError saying what is wrong.

    Checks: a dict with str `family`, dict `params`, an `answer`, str `level`, all plain JSON.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a JSON object, got {type(meta).__name__}")
    absent = [k for k in META_KEYS if k not in meta]
    if absent:
        raise ValueError(f"meta lacks {', '.join(absent)} (expected keys: {', '.join(META_KEYS)})")
    for field, kind in (("family", str), ("params", dict), ("level", str)):
        if not isinstance(meta[field], kind):
            raise ValueError(f"meta.{field} must be a {kind.__name__}, got {type(meta[field]).__name__}")
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta is not plain JSON: {e}") from e
    return meta
