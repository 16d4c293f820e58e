import math

import pytest

from eva.config import ConfigError, load_config
from eva.metrics import METRICS, busy_summary, informativeness, informativeness_batch, metric_names, register, summarize
from eva.types import Timing

NAN, INF = float("nan"), float("inf")


def test_the_config_takes_exactly_the_registered_names():
    assert "mean_inv" not in METRICS and metric_names() == (*METRICS, "mean_inv")
    for name in metric_names():
        assert load_config(None, [f"creator.metric={name}"], preset="tiny").creator.metric == name
    with pytest.raises(
        ConfigError,
        match="creator.metric: .*unknown informativeness metric 'gapp'; known: gap, maxmean, dts, var, learnability, "
        "uniform, mean_inv",
    ):
        load_config(None, ["creator.metric=gapp"], preset="tiny")


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("gap", 5.0), ("maxmean", 3.0), ("dts", 3.0), ("var", 3.5), ("uniform", 1.0)],
)
def test_hand_computed_values(metric, expected):
    # [1, 3, 2, 6]: max 6, min 1, mean 3, sorted desc 6, 3, ...; deviations 4+0+1+9 = 14, /4 = 3.5
    assert informativeness([1, 3, 2, 6], metric) == pytest.approx(expected, abs=1e-12)
    # Non-finite rewards are dropped, so the same vector with nan/inf mixed in gives the same value.
    assert informativeness([1, NAN, 3, INF, 2, -INF, 6], metric) == pytest.approx(expected, abs=1e-12)


def test_other_vectors():
    assert informativeness([-2.0, 0.5], "gap") == 2.5
    assert informativeness([-2.0, 0.5], "dts") == 2.5
    assert informativeness([-2.0, 0.5], "maxmean") == 1.25
    assert informativeness([-2.0, 0.5], "var") == pytest.approx(1.5625)
    assert informativeness([4, 4, 1], "dts") == 0.0  # tie at the top: best minus second best is 0
    assert informativeness([4, 4, 1], "gap") == 3.0
    assert informativeness([2, 2], "var") == 0.0


@pytest.mark.parametrize("rewards", [[], [5.0], [5.0, NAN], [INF, -INF], [NAN, NAN, 1.0]])
@pytest.mark.parametrize("metric", ["gap", "maxmean", "dts", "var", "uniform"])
def test_fewer_than_two_finite_is_none(rewards, metric):
    assert informativeness(rewards, metric) is None


def test_returns_python_float():
    assert type(informativeness([1, 3], "var")) is float


def test_mean_inv_single_prompt_points_to_batch():
    with pytest.raises(ValueError, match="informativeness_batch"):
        informativeness([1, 2], "mean_inv")


def test_unknown_metric_lists_names():
    with pytest.raises(ValueError, match="gap, maxmean, dts, var, learnability, uniform, mean_inv"):
        informativeness([1, 2], "nope")
    with pytest.raises(ValueError, match="known"):
        informativeness_batch([[1, 2]], "nope")


def test_register_rejects_duplicate():
    with pytest.raises(ValueError, match="already registered"):
        register("gap")(lambda r: 0.0)


def test_mean_inv_batch():
    # means 2, 5, 3.5 (lo 2, hi 5); [7] and [nan, 1] have < 2 finite rewards and take no part
    lists = [[1, 3], [4, 6], [2, 5], [7], [NAN, 1], [0, INF, 4]]
    out = informativeness_batch(lists, "mean_inv")
    assert out == [1.0, 0.0, 0.5, None, None, 1.0]


def test_mean_inv_all_equal_means_is_one():
    assert informativeness_batch([[1, 3], [2, 2], [5]], "mean_inv") == [1.0, 1.0, None]
    assert informativeness_batch([[0, 1]], "mean_inv") == [1.0]
    assert informativeness_batch([[1], []], "mean_inv") == [None, None]
    assert informativeness_batch([], "mean_inv") == []


def test_batch_matches_single():
    lists = [[1, 3, 2, 6], [NAN, 2], [0.5, -0.5, 0.25]]
    assert informativeness_batch(lists, "gap") == [5.0, None, 1.0]
    assert informativeness_batch(lists, "maxmean") == [informativeness(r, "maxmean") for r in lists]


def test_summarize():
    s = summarize([None, 1.0, 2.0, 3.0, 4.0, 5.0, NAN])
    assert s["count"] == 5
    assert s["none_count"] == 2
    assert s["mean"] == 3.0
    assert s["std"] == pytest.approx(math.sqrt(2.0))
    assert (s["min"], s["max"]) == (1.0, 5.0)
    # linear interpolation: position 0.1 * 4 = 0.4 -> 1.4; 0.5 * 4 = 2 -> 3; 0.9 * 4 = 3.6 -> 4.6
    assert s["p10"] == pytest.approx(1.4)
    assert s["p50"] == 3.0
    assert s["p90"] == pytest.approx(4.6)


def test_summarize_empty():
    assert summarize([]) == {"count": 0, "none_count": 0}
    assert summarize([None, None]) == {"count": 0, "none_count": 2}


def test_busy_summary_unions_overlaps_and_clips_to_the_wall():
    spans = [
        ("generate", 10.0, 14.0),
        ("score", 13.0, 15.0),  # overlaps generate by 1 s: counted once in busy_s
        ("generate", 14.5, 16.0),  # inside the score span's tail and beyond
        ("train", 18.0, 25.0),  # runs past the end: clipped at 20
        ("train", 0.0, 1.0),  # before the start: dropped
    ]
    s = busy_summary(spans, start=9.0, end=20.0)
    assert s.wall_s == 11.0
    assert s.busy_by_kind == {"generate": 5.5, "score": 2.0, "train": 2.0}
    assert s.busy_s == 8.0  # [10, 16] + [18, 20]
    assert s.overhead_s == 3.0 and s.overhead_share == round(3.0 / 11.0, 4)


def test_busy_summary_without_spans_is_all_overhead():
    s = busy_summary([], start=0.0, end=4.0)
    assert s == Timing(wall_s=4.0, busy_s=0.0, overhead_s=4.0, overhead_share=1.0, busy_by_kind={})


def test_learnability_is_p_times_one_minus_p_of_exact_solves():
    assert informativeness([1.0, 0.0, 1.0, 0.3], "learnability") == 0.25  # 2 of 4 exactly right
    assert informativeness([1.0, 1.0, 1.0, 0.9], "learnability") == 0.75 * 0.25
    assert informativeness([0.4, 0.3, 0.2, 0.1], "learnability") == 0.0  # a gap, but nothing solved
    assert informativeness([1.0, 1.0], "learnability") == 0.0


def test_rollout_stats_of_chunks_merge_into_the_stage_marker():
    """A stage's chunks: tokens, truncations and retries add up; the longest sequence is the longest
    of any chunk (what model.max_model_len must hold), not a sum."""
    from eva.results import RolloutStats

    a = RolloutStats(generate_seconds=1.0, new_tokens=10, longest_tokens=300, truncated_prompts=1, retries=("x",))
    b = RolloutStats(generate_seconds=2.0, new_tokens=5, longest_tokens=120)
    marker = RolloutStats.merge([a, b]).marker(7)
    assert marker["prompts"] == 7 and marker["new_tokens"] == 15 and marker["retries"] == 1
    assert marker["longest_tokens"] == 300 and marker["truncated"] == 1 and marker["generate_s"] == 3.0
    assert RolloutStats.merge([]).marker(0)["longest_tokens"] == 0
