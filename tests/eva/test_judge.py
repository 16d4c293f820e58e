"""The judge's reward from label logprobs, by hand."""

import math

import pytest

from eva.judge import expected_label


def test_expected_label_renormalizes_over_labels() -> None:
    # Labels carry 0.1 + 0.3 of the mass: renormalized 0.25 / 0.75 -> E = 0.25*1 + 0.75*9 = 7.
    assert expected_label([math.log(0.1), math.log(0.3)], [1.0, 9.0]) == pytest.approx(7.0)
    assert expected_label([math.log(0.2), -math.inf], [0.0, 1.0]) == 0.0  # a label with no mass
    assert math.isnan(expected_label([-math.inf, -math.inf], [0.0, 1.0]))  # nothing: nan, reported
