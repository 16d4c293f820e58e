"""Task families: the grader on hand-computed cases, arithmetic generation and mutation properties,
the registry, held-out sets and their JSONL files."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eva.tasks import (
    DIRECTIONS,
    FAMILIES,
    Arithmetic,
    Problem,
    TaskFamily,
    canonical_json,
    family_of,
    get_family,
    heldout_set,
    last_number,
    mutate_in_split,
    numeric_grade,
    read_problems,
    split_of,
    training_set,
    write_problems,
)
from eva.tasks.arithmetic import MAX_DIGITS, OPS, TEMPLATES, parse_level

ARITH = Arithmetic()
LEVELS = [f"{d}d{op}{w}" for d in range(1, MAX_DIGITS + 1) for op in OPS for w in ("", "w")]

# ------------------------------------------------------------------------------------------ grading


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("42", 1.0),
        ("The answer is 42.", 1.0),  # trailing period
        ("23 + 19 = 42", 1.0),  # the last number counts, not the operands
        ("**42**", 1.0),
        ("42.0", 1.0),  # decimals compare by value
        ("It is 40. No wait, 42", 1.0),
        ("It is 42. No wait, 40", 0.5 * (1 - np.log10(3) / np.log10(53))),  # last number: 40, off by 2
        # answer 42: denominator log10(11 + 42) = log10(53) = 1.72428
        ("41", 0.5 * (1 - 0.30103 / 1.72428)),  # off by one: 0.41271
        ("52", 0.5 * (1 - 1.04139 / 1.72428)),  # off by ten: 0.19802
        ("42.5", 0.5 * (1 - 0.17609 / 1.72428)),  # off by a half: 0.44894
        ("-42", 0.0),  # wrong sign: error 84 >= 42 + 10
        ("420", 0.0),
        ("I do not know.", 0.0),
        ("", 0.0),
    ],
)
def test_grade_hand_computed(response, expected):
    assert numeric_grade(42, response) == pytest.approx(expected, abs=1e-5)


def test_grade_literal_numbers():
    # Spelled out, so a change of formula shows up here and not only in the docstring.
    assert numeric_grade(42, "41") == pytest.approx(0.41271, abs=1e-5)
    assert numeric_grade(42, "52") == pytest.approx(0.19802, abs=1e-5)
    assert numeric_grade(7, "8") == pytest.approx(0.5 * (1 - np.log10(2) / np.log10(18)), abs=1e-12)  # 0.38007
    assert numeric_grade(7, "24") == 0.0  # error 17 = 7 + 10: the edge
    assert numeric_grade(-5, "-5") == 1.0
    assert numeric_grade(-5, "5") == pytest.approx(0.5 * (1 - np.log10(11) / np.log10(16)), abs=1e-12)  # 0.06748


def test_grade_commas_negatives_and_operators():
    assert numeric_grade(1234, "1,234") == 1.0
    assert numeric_grade(1234567, "Total: 1,234,567 apples.") == 1.0
    assert numeric_grade(1234, "1234.00") == 1.0
    assert numeric_grade(-3, "x = -3") == 1.0
    assert numeric_grade(-3, "x = \u22123") == 1.0  # unicode minus
    assert numeric_grade(5, "10-5") == 1.0  # the minus of an expression is not a sign
    assert numeric_grade(4, "pick 3,4") == 1.0  # a list, not a thousands comma: the last number is 4
    assert last_number("no digits here") is None
    assert last_number("1,2345") == 2345


def test_grade_separates_close_from_far():
    answer = 568
    grades = [numeric_grade(answer, str(v)) for v in (568, 567, 578, 668, 1568, -568)]
    assert grades == sorted(grades, reverse=True)
    assert grades[0] == 1.0 and grades[-1] == 0.0 and grades[1] < 0.5 and grades[3] > 0


@given(st.integers(-(10**9), 10**9), st.integers(-(10**9), 10**9), st.sampled_from(["{}", "= {}.", "**{}**"]))
def test_grade_bounds_and_exactness(answer, value, fmt):
    g = numeric_grade(answer, "so " + fmt.format(f"{value:,}"))
    assert 0.0 <= g <= 1.0
    assert (g == 1.0) == (value == answer)
    if value != answer:
        assert g < 0.5


def test_grade_rejects_non_numeric_answer():
    with pytest.raises(ValueError, match="finite int or float"):
        numeric_grade("42", "42")


# --------------------------------------------------------------------------------------- arithmetic


def _eval_params(params: dict) -> int:
    """The answer straight from the operands and op, independent of the family's code."""
    a, b = params["operands"]
    value = {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a, b)}[params["op"]]
    assert Fraction(value).denominator == 1, params
    return int(value)


def _difficulty(meta: dict) -> tuple[tuple[int, ...], int, bool]:
    """(sorted core digits, op rank, word problem): the partial order harder/easier move along."""
    p = meta["params"]
    return tuple(sorted(p["digits"])), OPS.index(p["op"]), p["template"] is not None


def _check_problem(p: Problem) -> None:
    meta, params = p.meta, p.meta["params"]
    assert meta["family"] == "arithmetic"
    assert meta["answer"] == _eval_params(params)
    assert meta["answer"] >= 0
    a, b = params["operands"]
    assert re.search(rf"(?<!\d){a}(?!\d)", p.prompt) and re.search(rf"(?<!\d){b}(?!\d)", p.prompt), p.prompt
    core = (a // b, b) if params["op"] == "/" else (a, b)
    assert params["digits"] == [len(str(v)) for v in core]
    assert max(params["digits"]) <= MAX_DIGITS
    assert meta["level"] == ARITH.level(meta) and p.prompt == ARITH.prompt_text(meta)
    assert json.loads(json.dumps(meta)) == meta  # plain JSON
    assert ARITH.grade(meta, f"The answer is {meta['answer']}.") == 1.0


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(LEVELS), st.integers(0, 2**32 - 1))
def test_generate_matches_level(level, seed):
    digits, op, word = parse_level(level)
    for p in ARITH.generate(np.random.default_rng(seed), level, 5):
        _check_problem(p)
        assert p.level == level
        assert p.meta["params"]["digits"] == [digits, digits]
        assert p.meta["params"]["op"] == op and (p.meta["params"]["template"] is not None) == word


def test_generate_is_deterministic():
    def prompts(seed: int) -> list[str]:
        return [p.prompt for lv in ("1d+", "2d-", "3d*w") for p in ARITH.generate(np.random.default_rng(seed), lv, 20)]

    assert prompts(3) == prompts(3)
    assert prompts(3) != prompts(4)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(LEVELS), st.lists(st.sampled_from(DIRECTIONS), min_size=1, max_size=12), st.integers(0, 2**32 - 1)
)
def test_mutation_walk(level, directions, seed):
    """Along a random walk of mutations every problem is consistent and each step moves as asked."""
    rng = np.random.default_rng(seed)
    p = ARITH.generate(rng, level, 1)[0]
    for direction in directions:
        child = ARITH.mutate(p.meta, direction, rng)
        if child is None:
            continue
        _check_problem(child)
        assert child.meta["params"] != p.meta["params"]
        if direction == "sideways":
            assert _difficulty(child.meta) == _difficulty(p.meta) and child.level == p.level
        else:
            lo, hi = (p, child) if direction == "harder" else (child, p)
            (dlo, olo, wlo), (dhi, ohi, whi) = _difficulty(lo.meta), _difficulty(hi.meta)
            # Exactly one of: one operand gains a digit, the op moves one step, the story is added.
            steps = (sum(dhi) - sum(dlo), ohi - olo, int(whi) - int(wlo))
            assert sorted(steps) == [0, 0, 1], (lo.meta, hi.meta)
            assert all(high >= low for high, low in zip(dhi, dlo, strict=True))
            # The coarse label never moves the wrong way either.
            (lab_dlo, lab_olo, lab_wlo), (lab_dhi, lab_ohi, lab_whi) = parse_level(lo.level), parse_level(hi.level)
            assert lab_dhi >= lab_dlo and OPS.index(lab_ohi) >= OPS.index(lab_olo) and lab_whi >= lab_wlo
        p = child


def test_mutation_ends_return_none():
    easiest = ARITH.generate(np.random.default_rng(0), "1d+", 1)[0]
    hardest = ARITH.generate(np.random.default_rng(0), f"{MAX_DIGITS}d/w", 1)[0]
    rng = np.random.default_rng(1)
    assert all(ARITH.mutate(easiest.meta, "easier", rng) is None for _ in range(20))
    assert all(ARITH.mutate(hardest.meta, "harder", rng) is None for _ in range(20))
    assert ARITH.mutate(easiest.meta, "harder", rng) is not None
    assert ARITH.mutate(hardest.meta, "easier", rng) is not None


def test_mutations_keep_or_wrap_as_asked():
    rng = np.random.default_rng(0)
    plain = ARITH.generate(rng, "2d+", 1)[0]
    harder = {ARITH.mutate(plain.meta, "harder", rng).level for _ in range(60)}
    assert harder == {"2d+w", "2d-", "3d+"}  # wrap, next op, one more digit (2d+3d is labelled 3d+)
    word = ARITH.generate(rng, "2d*w", 1)[0]
    sideways = [ARITH.mutate(word.meta, "sideways", rng) for _ in range(40)]
    assert {s.level for s in sideways} == {"2d*w"}
    assert {s.meta["params"]["template"] for s in sideways} == set(range(len(TEMPLATES["*"])))
    assert any(s.meta["params"]["operands"] != word.meta["params"]["operands"] for s in sideways)


def test_word_problems_and_division_text():
    meta = {"family": "arithmetic", "params": {"op": "+", "operands": [12, 7], "digits": [2, 1], "template": 0}}
    assert ARITH.prompt_text(meta) == "Sara has 12 apples and buys 7 more. How many apples does she have now?"
    meta = {"family": "arithmetic", "params": {"op": "/", "operands": [56, 8], "digits": [1, 1], "template": None}}
    assert ARITH.prompt_text(meta) == "What is 56 ÷ 8?" and ARITH.level(meta) == "1d/" and ARITH.key(meta) == "56/8"


def test_bad_level_and_meta_are_refused():
    with pytest.raises(ValueError, match=r"arithmetic level '2x\+'"):
        ARITH.generate(np.random.default_rng(0), "2x+", 1)
    with pytest.raises(ValueError, match="level '9d\\+'"):
        ARITH.generate(np.random.default_rng(0), "9d+", 1)
    bad = {"family": "arithmetic", "params": {"op": "%", "operands": [1, 2], "digits": [1, 1], "template": None}}
    with pytest.raises(ValueError, match="params.op"):
        ARITH.mutate(bad, "harder", np.random.default_rng(0))
    with pytest.raises(ValueError, match="direction"):
        ARITH.mutate(ARITH.generate(np.random.default_rng(0), "1d+", 1)[0].meta, "up", np.random.default_rng(0))


# ----------------------------------------------------------------------------------------- registry


class TinyFamily:
    """A user family: "Repeat the word N times" graded by exact count."""

    name = "tiny-repeat"

    def generate(self, rng, level, n):
        return [self._problem(int(rng.integers(1, 5))) for _ in range(n)]

    def grade(self, meta, response):
        return float(response.split().count("hi") == meta["answer"])

    def mutate(self, meta, direction, rng):
        k = meta["params"]["k"] + {"harder": 1, "easier": -1, "sideways": 0}[direction]
        return self._problem(k) if k >= 1 else None

    def prompt_text(self, meta):
        return f"Say hi {meta['params']['k']} times."

    def level(self, meta):
        return meta["level"]

    def key(self, meta):
        return canonical_json(meta["params"])

    def _problem(self, k):
        meta = {"family": self.name, "params": {"k": k}, "answer": k, "level": str(k)}
        return Problem(self.prompt_text(meta), meta)


class NotAFamily:
    name = "nope"

    def grade(self, meta, response):
        return 0.0


def test_registry_builtin_and_user_family():
    assert get_family("arithmetic") is FAMILIES["arithmetic"]
    assert isinstance(get_family("arithmetic"), TaskFamily)
    fam = get_family(f"{__name__}:TinyFamily")
    assert isinstance(fam, TinyFamily) and get_family(f"{__name__}:TinyFamily") is fam
    p = fam.generate(np.random.default_rng(0), "any", 1)[0]
    assert family_of(p.meta) is fam and fam.grade(p.meta, "hi " * p.meta["answer"]) == 1.0
    assert family_of(ARITH.generate(np.random.default_rng(0), "1d+", 1)[0].meta) is FAMILIES["arithmetic"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            f"{__name__}:NotAFamily",
            r"NotAFamily is not a task family: missing generate, mutate, prompt_text, level, key",
        ),
        (f"{__name__}:NoSuchClass", "has no class 'NoSuchClass'"),
        ("no_such_module_xyz:Family", "cannot import module 'no_such_module_xyz'"),
        ("sudoku", r"unknown task family 'sudoku'; known: arithmetic"),
        (":Family", "expected a built-in name"),
    ],
)
def test_registry_refuses_with_clear_message(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        get_family(spec)
    assert spec in str(e.value)


def test_family_of_unknown():
    with pytest.raises(ValueError, match="unknown task family 'chess'"):
        family_of({"family": "chess", "params": {}, "answer": 1, "level": "x"})
    with pytest.raises(ValueError, match="no family name"):
        family_of({"params": {}})


# -------------------------------------------------------------------------------- held-out and JSONL

SET_LEVELS = ["1d+", "1d*w", "2d+", "2d-", "3d+"]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_heldout_and_training_are_disjoint(seed):
    held = heldout_set(ARITH, SET_LEVELS, 10, seed)
    train = training_set(ARITH, SET_LEVELS, 40, seed)
    assert [p.level for p in held] == [lv for lv in SET_LEVELS for _ in range(10)]
    assert {p.prompt for p in held}.isdisjoint(p.prompt for p in train)
    assert {ARITH.key(p.meta) for p in held}.isdisjoint(ARITH.key(p.meta) for p in train)  # not even as a story
    assert {split_of(ARITH, p.meta) for p in held} == {"heldout"}
    assert {split_of(ARITH, p.meta) for p in train} == {"train"}
    assert len({p.prompt for p in held}) == len(held)  # distinct within a level
    assert heldout_set(ARITH, SET_LEVELS, 10, seed) == held  # reproducible


def test_heldout_levels_are_independent_and_small_levels_refuse():
    both = heldout_set(ARITH, ["2d+", "3d+"], 5, 0)
    assert heldout_set(ARITH, ["3d+"], 5, 0) == both[5:]
    with pytest.raises(ValueError, match=r"level '1d\+': only \d+ distinct heldout problems"):
        heldout_set(ARITH, ["1d+"], 40, 0)  # 81 one-digit sums in all, about a fifth held out


def test_mutate_in_split_stays_on_its_side():
    rng = np.random.default_rng(0)
    for p in training_set(ARITH, ["1d+", "2d*"], 20, 0):
        for direction in DIRECTIONS:
            child = mutate_in_split(ARITH, p.meta, direction, rng)
            assert child is None or split_of(ARITH, child.meta) == "train"


def test_jsonl_round_trip(tmp_path):
    problems = heldout_set(ARITH, ["1d+w", "2d/"], 4, 0)
    path = tmp_path / "heldout.jsonl"
    assert write_problems(path, problems) == 8
    assert read_problems(path) == problems
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"prompt", "meta"} and first["meta"]["family"] == "arithmetic"
    assert "÷" in path.read_text(encoding="utf-8")  # written as UTF-8, not escaped


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "Expecting property name"),
        ('["a"]', 'keys "prompt" and "meta"'),
        ('{"prompt": "What is 1 + 1?", "meta": {"family": "arithmetic"}}', "meta lacks params, answer, level"),
        ('{"prompt": "", "meta": {}}', "prompt must be a non-empty string"),
        (
            '{"prompt": "x", "meta": {"family": 1, "params": {}, "answer": 2, "level": "1d+"}}',
            "meta.family must be a str",
        ),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(ARITH.generate(np.random.default_rng(0), "1d+", 1)[0].to_json())
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ")) as e:
        read_problems(path)
    assert message in str(e.value)
