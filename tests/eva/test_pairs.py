import pytest

from eva.pairs import build_pairs, pair_stats
from eva.types import Prompt, ScoredPrompt

NAN, INF = float("nan"), float("inf")


def scored(text: str, rewards: list[float]) -> ScoredPrompt:
    responses = tuple(f"{text}-r{i}" for i in range(len(rewards)))
    return ScoredPrompt(prompt=Prompt.seed(text), responses=responses, rewards=tuple(rewards))


def test_argmax_argmin_first_occurrence():
    pairs, report = build_pairs([scored("p", [0.5, 2.0, -1.0, 2.0, -1.0])], min_margin=0.0, iteration=3)
    (pair,) = pairs
    assert (pair.chosen, pair.rejected) == ("p-r1", "p-r2")
    assert (pair.chosen_reward, pair.rejected_reward, pair.margin) == (2.0, -1.0, 3.0)
    assert pair.iteration == 3
    assert pair.prompt == "p" and pair.prompt_id == Prompt.seed("p").id
    assert report.kept == 1 and report.dropped == {"too_few_rewards": 0, "tie": 0, "below_margin": 0}


def test_nonfinite_rewards_ignored():
    pairs, _ = build_pairs([scored("q", [NAN, 1.0, -INF, 0.2, INF])], min_margin=0.0, iteration=1)
    assert (pairs[0].chosen, pairs[0].rejected) == ("q-r1", "q-r3")
    assert pairs[0].margin == pytest.approx(0.8)


def test_drop_reasons_counted():
    batch = [
        scored("few1", [1.0, NAN]),
        scored("few2", []),
        scored("tie", [1.0, 1.0, NAN]),
        scored("at_margin", [0.0, 0.5]),  # margin == min_margin: dropped (<=)
        scored("small", [0.0, 0.25]),
        scored("ok", [0.0, 0.75]),
        scored("ok2", [3.0, 1.0, 2.0]),
    ]
    pairs, report = build_pairs(batch, min_margin=0.5, iteration=0)
    assert [p.prompt for p in pairs] == ["ok", "ok2"]
    assert report.kept == 2
    assert report.dropped == {"too_few_rewards": 2, "tie": 1, "below_margin": 2}
    assert report.total == 7


def test_zero_min_margin_keeps_any_positive_margin():
    pairs, report = build_pairs([scored("a", [0.0, 1e-9]), scored("b", [2.0, 2.0])], min_margin=0.0, iteration=0)
    assert len(pairs) == 1 and report.dropped["tie"] == 1


def test_length_mismatch_raises():
    bad = ScoredPrompt(prompt=Prompt.seed("x"), responses=("a",), rewards=(1.0, 2.0))
    with pytest.raises(ValueError, match="1 responses but 2 rewards"):
        build_pairs([bad], min_margin=0.0, iteration=0)


def test_pair_stats():
    pairs, _ = build_pairs([scored("a", [1.0, 4.0]), scored("b", [-1.0, 0.0, 1.0])], min_margin=0.0, iteration=0)
    assert pair_stats(pairs) == {
        "count": 2,
        "mean_margin": 2.5,
        "min_margin": 2.0,
        "max_margin": 3.0,
        "mean_chosen_reward": 2.5,
        "mean_rejected_reward": 0.0,
    }
    assert pair_stats([]) == {"count": 0}
