"""The reward scorer kinds by name: what each needs, and the fixed map of its raw score onto [0, 1].

The config validates `reward.kind` and `reward.components[*].kind` against `SCORER_KINDS`, and the
reward actor (actors.reward) builds and combines scorers by looking them up here. Rewards are never
standardized per batch: a combination weighs each component's raw score after its own fixed map, so
a weight means "share of a [0, 1] reward":

    judge        expected label value, linearly from [min label, max label] (1-9 digits, No/Yes 0/1)
    relevance    cosine similarity, clipped at 0 (a negative cosine is as unrelated as 0)
    wellformed   already in [0, 1]
    reward_model sigmoid(logit): the Bradley-Terry probability of beating a reward-0 answer
    function     clipped to [0, 1]: return values in [0, 1] for the weights to compare
    task         the task family's grade, already in [0, 1] (the whole reward only)
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

UnitMap = Callable[[float, float, float], float]  # (raw, lo, hi) -> [0, 1]; nan stays nan


def linear_unit(raw: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """`raw` in [lo, hi] mapped linearly onto [0, 1] and clipped; nan (or inf) gives nan."""
    if not math.isfinite(raw):
        return math.nan
    return min(1.0, max(0.0, (raw - lo) / (hi - lo)))


def sigmoid_unit(raw: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """1 / (1 + exp(-raw)) (a reward model's logit as a probability); `lo`/`hi` are not used."""
    return 1.0 / (1.0 + math.exp(-raw)) if math.isfinite(raw) else math.nan


@dataclass(frozen=True, slots=True)
class ScorerKind:
    """One kind of reward scorer."""

    about: str  # what it scores with, for help texts
    model: bool  # reads a model: the scorer's `model`, else its default
    function: bool  # calls a user `module:function`: the scorer's `function`, else reward.function
    unit: UnitMap  # its raw score onto [0, 1] inside a combination
    alone: bool = True  # may be the whole reward (`reward.kind`)
    component: bool = True  # may be a component of `combined` (`reward.components[*].kind`)
    actor: bool = True  # scored in the reward actor; False: graded in the rollout itself (no model to hold)


SCORER_KINDS: dict[str, ScorerKind] = {
    "judge": ScorerKind("LLM-as-a-judge via vLLM logprobs", model=True, function=False, unit=linear_unit),
    "reward_model": ScorerKind(
        "HF sequence-classification reward model", model=True, function=False, unit=sigmoid_unit
    ),
    "function": ScorerKind("user module:function", model=False, function=True, unit=linear_unit),
    # Components only: each says little on its own (relevance would read reward.model, the policy, as its encoder).
    "relevance": ScorerKind("MiniLM prompt-response cosine", model=True, function=False, unit=linear_unit, alone=False),
    "wellformed": ScorerKind(
        "text rules: repetition, truncation, length, echo", model=False, function=False, unit=linear_unit, alone=False
    ),
    # The task family's grader on the prompt's metadata (eva.tasks): pure code, so no actor holds it.
    "task": ScorerKind(
        "the task family's grader: exact match with partial credit",
        model=False,
        function=False,
        unit=linear_unit,
        component=False,
        actor=False,
    ),
    "combined": ScorerKind(
        "weighted sum of `components`", model=False, function=False, unit=linear_unit, component=False
    ),
}


def reward_kinds() -> tuple[str, ...]:
    """The kinds `reward.kind` may name."""
    return tuple(name for name, kind in SCORER_KINDS.items() if kind.alone)


def component_kinds() -> tuple[str, ...]:
    """The kinds a `combined` reward may hold."""
    return tuple(name for name, kind in SCORER_KINDS.items() if kind.component)


def scorer_kind(name: str, *, component: bool = False) -> ScorerKind:
    """The kind called `name`, as the whole reward or (`component`) as a part of `combined`;
    ValueError listing the names allowed there otherwise."""
    allowed = component_kinds() if component else reward_kinds()
    if name not in SCORER_KINDS:
        raise ValueError(f"unknown scorer kind {name!r}; known: {', '.join(allowed)}")
    if name not in allowed:
        role = "a component of combined" if component else "the whole reward (make it a component of combined)"
        raise ValueError(f"scorer kind {name!r} cannot be {role}; allowed here: {', '.join(allowed)}")
    return SCORER_KINDS[name]


def to_unit(name: str, raw: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """A raw score of kind `name` (raw range [lo, hi]) on its fixed [0, 1] scale. A name outside the
    table (a scorer made up in a test or by a user) maps linearly."""
    kind = SCORER_KINDS.get(name)
    return (kind.unit if kind else linear_unit)(raw, lo, hi)


def load_function(spec: str) -> Callable[[list[str], list[str]], Sequence[float]]:
    """Import `module:function` (kind=function). This executes user code: the module's import here,
    every call in the reward actor. ValueError says what is wrong with `spec`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward function {spec!r}: expected 'module:function', e.g. my_rewards:exact_match")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure is the user's module, say so
        raise ValueError(
            f"reward function {spec!r}: cannot import module {module_name!r}: {type(e).__name__}: {e}"
        ) from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward function {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def check_functions(functions: Sequence[tuple[str, str]]) -> None:
    """Import every (field, module:function) a run's reward will call, before anything starts: a
    typo fails now, naming the field, not minutes later in the reward actor. The current folder is
    searched too, as it is for the actors Ray starts from here."""
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        for field, spec in functions:
            try:
                load_function(spec)
            except ValueError as e:
                raise ValueError(f"{field}: {e}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
