"""The scorer kinds table: who may be what, and the fixed maps onto [0, 1], by hand."""

import math

import pytest

from eva.scorers import SCORER_KINDS, component_kinds, linear_unit, reward_kinds, scorer_kind, sigmoid_unit, to_unit


def test_kinds_and_where_they_may_stand():
    assert reward_kinds() == ("judge", "reward_model", "function", "task", "combined")
    assert component_kinds() == ("judge", "reward_model", "function", "relevance", "wellformed")
    assert [k for k, v in SCORER_KINDS.items() if v.model] == ["judge", "reward_model", "relevance"]
    assert [k for k, v in SCORER_KINDS.items() if v.function] == ["function"]
    assert (
        scorer_kind("judge") is SCORER_KINDS["judge"]
        and scorer_kind("wellformed", component=True) is SCORER_KINDS["wellformed"]
    )


def test_unknown_or_misplaced_kinds_list_what_is_allowed():
    with pytest.raises(
        ValueError, match="unknown scorer kind 'rm'; known: judge, reward_model, function, task, combined$"
    ):
        scorer_kind("rm")
    with pytest.raises(
        ValueError,
        match=r"'relevance' cannot be the whole reward \(make it a component of combined\); allowed here: judge, "
        r"reward_model, function, task, combined",
    ):
        scorer_kind("relevance")
    with pytest.raises(
        ValueError,
        match="'combined' cannot be a component of combined; allowed here: judge, reward_model, function, relevance, "
        "wellformed",
    ):
        scorer_kind("combined", component=True)


def test_unit_maps_by_hand():
    assert linear_unit(5.0, 1.0, 9.0) == 0.5  # a judge's expected digit: (5 - 1) / 8
    assert linear_unit(-0.3) == 0.0 and linear_unit(1.7) == 1.0  # clipped: a negative cosine counts as 0
    assert sigmoid_unit(0.0) == 0.5 and sigmoid_unit(math.log(3.0)) == pytest.approx(0.75)
    assert (
        math.isnan(linear_unit(math.nan)) and math.isnan(sigmoid_unit(math.inf)) and math.isnan(linear_unit(-math.inf))
    )
    assert to_unit("reward_model", 0.0, 5.0, 9.0) == 0.5  # sigmoid: lo/hi do not matter
    assert to_unit("judge", 9.0, 1.0, 9.0) == 1.0 and to_unit("function", 0.25) == 0.25
    assert to_unit("made-up", 3.0, 2.0, 4.0) == 0.5  # outside the table: linear


def test_check_functions_imports_each_and_names_the_field(tmp_path, monkeypatch):
    from eva.scorers import check_functions

    (tmp_path / "my_rewards_mod.py").write_text(
        "def exact(prompts, responses):\n    return [1.0] * len(prompts)\nNOT_CALLABLE = 3\n"
    )
    monkeypatch.chdir(tmp_path)  # the current folder is searched, as Ray's workers started from here do
    check_functions([("reward.function", "my_rewards_mod:exact")])
    with pytest.raises(
        ValueError,
        match=r"^reward\.function: reward function 'no_such_mod:f': cannot import module 'no_such_mod': "
        r"ModuleNotFoundError",
    ):
        check_functions([("reward.function", "no_such_mod:f")])
    with pytest.raises(ValueError, match=r"^reward\.components\.1\.function: .*has no callable 'NOT_CALLABLE'"):
        check_functions([("reward.components.1.function", "my_rewards_mod:NOT_CALLABLE")])
    with pytest.raises(ValueError, match="expected 'module:function'"):
        check_functions([("reward.function", "just_a_name")])
    assert str(tmp_path) not in __import__("sys").path
