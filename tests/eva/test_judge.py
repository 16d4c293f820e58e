"""The judge's reward from label logprobs, by hand."""

import math

import pytest

from eva.judge import JUDGE_TEMPLATES, expected_label, judge_template


def test_expected_label_renormalizes_over_labels() -> None:
    # Labels carry 0.1 + 0.3 of the mass: renormalized 0.25 / 0.75 -> E = 0.25*1 + 0.75*9 = 7.
    assert expected_label([math.log(0.1), math.log(0.3)], [1.0, 9.0]) == pytest.approx(7.0)
    assert expected_label([math.log(0.2), -math.inf], [0.0, 1.0]) == 0.0  # a label with no mass
    assert math.isnan(expected_label([-math.inf, -math.inf], [0.0, 1.0]))  # nothing: nan, reported


def test_templates_by_name():
    assert list(JUDGE_TEMPLATES) == ["plain", "rubric", "fewshot", "yesno", "yesno_plain"]
    assert judge_template("rubric") is JUDGE_TEMPLATES["rubric"]
    with pytest.raises(
        ValueError, match="unknown judge template 'nope'; known: plain, rubric, fewshot, yesno, yesno_plain"
    ):
        judge_template("nope")


@pytest.mark.parametrize("name", list(JUDGE_TEMPLATES))
def test_every_template_has_both_slots_and_scored_labels(name):
    t = JUDGE_TEMPLATES[name]
    text = t.user.format(prompt="P?", response="R.")
    assert "P?" in text and "R." in text and "{" not in text
    values = [v for _, v in t.labels]
    assert min(values) < max(values) and len({label for label, _ in t.labels}) == len(t.labels)
    if values == [float(d) for d in range(1, 10)]:
        assert t.suffix == "Score: "  # the trailing space: SmolLM2 then puts its next-token mass on 1-9
