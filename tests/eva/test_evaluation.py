"""Win-rate maths of the held-out evaluation, by hand."""

import math

import pytest

from eva.evaluation import win_rate


def test_wins_ties_losses_and_failed_scores():
    new = [0.9, 0.5, 0.1, math.nan, 0.7]
    base = [0.2, 0.5, 0.3, 0.4, math.inf]
    result = win_rate(new, base)
    # kept: (0.9 vs 0.2) win, (0.5 vs 0.5) tie, (0.1 vs 0.3) loss -> wins 1, 0.5, 0
    assert result["n"] == 3 and result["nonfinite"] == 2
    assert result["win_rate"] == pytest.approx(0.5)
    assert result["win_rate_se"] == pytest.approx(0.5 / math.sqrt(3))  # std (ddof 1) of 1, .5, 0 is .5
    assert result["mean_reward"] == pytest.approx(0.5) and result["mean_reward_initial"] == pytest.approx(1 / 3)


def test_too_few_prompts_give_nan_not_an_error():
    one = win_rate([1.0], [0.0])
    assert one["win_rate"] == 1.0 and math.isnan(one["win_rate_se"])
    none = win_rate([math.nan], [0.0])
    assert none["n"] == 0 and all(
        math.isnan(none[k]) for k in ("win_rate", "win_rate_se", "mean_reward", "mean_reward_initial")
    )
    with pytest.raises(ValueError, match="differ in length"):
        win_rate([1.0, 2.0], [1.0])
