import math
from collections import Counter

import numpy as np
import pytest

from eva.config import ConfigError, load_config
from eva.sampling import SAMPLE_METHODS, sample_prompts, sample_size

N_DRAWS = 20_000


def frequencies(scores, k, method, n=N_DRAWS) -> Counter:
    """How often each index is drawn over n seeds (each draw returns k distinct indices)."""
    counts: Counter = Counter()
    for seed in range(n):
        counts.update(sample_prompts(scores, k, method, seed))
    return counts


def assert_freq(count: int, p: float, n: int = N_DRAWS) -> None:
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) <= 4 * sigma + 1e-12, (count / n, p)


@pytest.mark.parametrize("scores", [[0.0, 1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0]])
def test_weighted_k1_proportional_to_minmax_weight(scores):
    # weights (m - min) / 3 = 0, 1/3, 2/3, 1 -> probabilities 0, 1/6, 2/6, 3/6 (not m / sum m)
    counts = frequencies(scores, 1, "weighted")
    assert counts[0] == 0
    for i, p in [(1, 1 / 6), (2, 2 / 6), (3, 3 / 6)]:
        assert_freq(counts[i], p)


def test_weighted_k2_is_successive_draws_without_replacement():
    # p = 1/6, 1/3, 1/2; P(i in first two) = p_i + sum_j p_j * p_i / (1 - p_j):
    # idx1: 1/6 + 1/12 + 1/6 = 5/12; idx2: 1/3 + 1/15 + 1/3 = 11/15; idx3: 1/2 + 1/10 + 1/4 = 17/20
    counts = frequencies([0.0, 1.0, 2.0, 3.0], 2, "weighted")
    assert counts[0] == 0
    for i, p in [(1, 5 / 12), (2, 11 / 15), (3, 17 / 20)]:
        assert_freq(counts[i], p)


def test_weighted_zero_weight_drawn_last_and_uniformly():
    # weights 0, 0, 0, 1: index 3 always first, the second draw is uniform over the zero-weight ones
    seconds: Counter = Counter()
    for seed in range(6000):
        first, second = sample_prompts([1.0, 1.0, 1.0, 5.0], 2, "weighted", seed)
        assert first == 3
        seconds[second] += 1
    for i in range(3):
        assert_freq(seconds[i], 1 / 3, n=6000)
    assert sample_prompts([0.0, 1.0, 2.0, 3.0], 10, "weighted", 0)[-1] == 0


@pytest.mark.parametrize("method", ["weighted", "uniform"])
def test_all_equal_is_uniform(method):
    counts = frequencies([5.0, 5.0, 5.0, 5.0], 1, method)
    for i in range(4):
        assert_freq(counts[i], 1 / 4)


def test_uniform_ignores_score_values():
    counts = frequencies([0.0, 100.0, None, 1.0], 1, "uniform")
    assert counts[2] == 0
    for i in (0, 1, 3):
        assert_freq(counts[i], 1 / 3)


@pytest.mark.parametrize("method", ["weighted", "greedy", "uniform"])
def test_none_and_nan_never_drawn(method):
    scores = [None, 1.0, None, 2.0, float("nan"), 0.5]
    for seed in range(50):
        out = sample_prompts(scores, 100, method, seed)
        assert sorted(out) == [1, 3, 5]
    assert sample_prompts([None, None], 5, method, 0) == []
    assert sample_prompts([None, 3.0], 5, method, 0) == [1]


@pytest.mark.parametrize("method", ["weighted", "greedy", "uniform"])
def test_no_index_twice_and_k_clipping(method):
    scores = np.random.default_rng(7).random(500)
    out = sample_prompts(scores, 200, method, 3)
    assert len(out) == 200 and len(set(out)) == 200
    assert all(type(i) is int for i in out)
    assert sorted(sample_prompts(scores[:3], 10, method, 0)) == [0, 1, 2]
    assert sample_prompts(scores, 0, method, 0) == []
    assert sample_prompts(scores, -1, method, 0) == []
    assert sample_prompts([], 3, method, 0) == []


def test_greedy_top_k_stable_ties():
    scores = [1.0, 3.0, 3.0, None, 2.0, 3.0]
    assert sample_prompts(scores, 3, "greedy", 0) == [1, 2, 5]
    assert sample_prompts(scores, 4, "greedy", 99) == [1, 2, 5, 4]
    assert sample_prompts(scores, 10, "greedy", 0) == [1, 2, 5, 4, 0]


@pytest.mark.parametrize("method", ["weighted", "uniform"])
def test_seed_reproducible(method):
    scores = np.random.default_rng(1).random(1000)
    a = sample_prompts(scores, 100, method, 42)
    assert a == sample_prompts(list(scores), 100, method, 42)
    assert a != sample_prompts(scores, 100, method, 43)


def test_weighted_draw_order_follows_keys():
    # A weight-1 prompt next to weight-1e-9 prompts is drawn first for (almost) every seed.
    scores = [0.0] + [1e-9] * 50 + [1.0]
    assert all(sample_prompts(scores, 3, "weighted", s)[0] == 51 for s in range(200))


def test_object_array_with_none():
    scores = np.array([None, 2.0, 1.0], dtype=object)
    assert sample_prompts(scores, 5, "greedy", 0) == [1, 2]


def test_unknown_method():
    with pytest.raises(ValueError, match="weighted, greedy, uniform"):
        sample_prompts([1.0], 1, "topp", 0)
    with pytest.raises(
        ConfigError, match="creator.sample_method: .*unknown sample method 'topp'; known: weighted, greedy, uniform"
    ):
        load_config(None, ["creator.sample_method=topp"], preset="tiny")
    for method in SAMPLE_METHODS:
        assert load_config(None, [f"creator.sample_method={method}"], preset="tiny").creator.sample_method == method


def test_million_prompts():
    # Its speed is benchmarks.buffer_ops' job; here: a valid draw at that size, tilted by weight.
    scores = np.random.default_rng(0).random(1_000_000)
    out = np.array(sample_prompts(scores, 250_000, "weighted", 0))
    assert len(np.unique(out)) == 250_000 and out.min() >= 0 and out.max() < 1_000_000
    # min-max weights ~ U(0, 1): a weighted draw of a quarter prefers high scores (uniform: mean 0.5)
    assert 0.6 < scores[out].mean() < 0.7


@pytest.mark.parametrize(
    ("n", "frac", "k"),
    [
        (100, 0.25, 25),
        (101, 0.25, 26),
        (1, 0.25, 1),
        (3, 0.01, 1),
        (0, 0.25, 0),
        (30, 0.1, 3),
        (7, 0.5, 4),
        (8, 1.0, 8),
    ],
)
def test_sample_size(n, frac, k):
    assert sample_size(n, frac) == k


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.5])
def test_sample_size_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match="sample fraction"):
        sample_size(10, frac)
