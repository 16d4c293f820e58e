"""The prioritized generative buffer: priorities from groups, decay, sampling frequencies, warm-up and
seed mixing, admission gating, and an exact round trip through a Parquet table."""

import dataclasses
import math
from collections import Counter

import pyarrow as pa
import pytest

from eva.online.buffer import PRIORITY_SCHEMA, PriorityBuffer, PrioritySettings
from eva.tables import DataError, read_table, write_table
from eva.types import Prompt, ScoredPrompt

NAN = math.nan
N = 10_000


def make_seeds(n: int) -> list[Prompt]:
    return [Prompt.seed(f"seed problem {i}") for i in range(n)]


def make_children(parent: Prompt, n: int, start: int = 0) -> list[Prompt]:
    return [parent.child(f"child {i} of {parent.text}", "deepen", iteration=1) for i in range(start, start + n)]


def group(prompt: Prompt, rewards) -> ScoredPrompt:
    return ScoredPrompt(prompt, tuple(f"response {j}" for j in range(len(rewards))), tuple(rewards))


def assert_freq(count: int, p: float, n: int = N) -> None:
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) <= 4 * sigma + 1e-12, (count / n, p)


def ids(prompts) -> list[str]:
    return [p.id for p in prompts]


# --- priorities -----------------------------------------------------------------------------------


def test_priority_is_the_groups_informativeness_refreshed_when_scored_again():
    seed = make_seeds(1)[0]
    [child] = make_children(seed, 1)
    buf = PriorityBuffer(PrioritySettings(seed=0, decay=1.0), [seed])
    buf.add([child])
    assert buf.priority(child.id, 0) is None  # never scored
    buf.record([group(child, [1, 0, 0, 1])], step=0)  # maxmean = 1 - 0.5
    assert buf.priority(child.id, 0) == pytest.approx(0.5)
    buf.record([group(child, [1, 0, 0, 0]), group(seed, [0.3, NAN, 0.1])], step=3)  # 1 - 0.25; 0.3 - 0.2
    assert buf.priority(child.id, 3) == pytest.approx(0.75)
    assert buf.priority(seed.id, 3) == pytest.approx(0.1)
    buf.record([group(child, [1, NAN, NAN])], step=4)  # one finite reward: no informativeness -> 0
    assert buf.priority(child.id, 4) == 0.0
    assert buf.to_table().column("times_scored").to_pylist() == [1, 3]


def test_learnability_priority_counts_exact_solves():
    seed = make_seeds(1)[0]
    buf = PriorityBuffer(PrioritySettings(seed=0, metric="learnability", decay=1.0), [seed])
    # p = share of rewards >= 1 (eva.metrics.learnability): p(1 - p)
    for rewards, expected in [([1, 0, 0, 1], 0.25), ([1, 1, 1, 1], 0.0), ([1, 0.5, 0.5, 0], 3 / 16)]:
        buf.record([group(seed, rewards)], step=0)
        assert buf.priority(seed.id, 0) == pytest.approx(expected)


def test_staleness_decay_by_hand():
    seed = make_seeds(1)[0]
    [child] = make_children(seed, 1)
    buf = PriorityBuffer(PrioritySettings(seed=0, decay=0.5), [seed])
    buf.add([child])
    buf.record([group(child, [1, 0, 0, 1])], step=2)  # 0.5
    # e = 0.5 * 0.5 ** (step - 2); a step before the score does not grow it
    for step, expected in [(2, 0.5), (3, 0.25), (5, 0.0625), (1, 0.5)]:
        assert buf.priority(child.id, step) == pytest.approx(expected)


# --- sampling by priority -------------------------------------------------------------------------


def three_children(**settings) -> tuple[PriorityBuffer, list[Prompt]]:
    """Children with priorities 0, 1, 3 (maxmean of [0, 0], [2, 0], [6, 0]) scored at step 0; no seeds drawn."""
    seed = make_seeds(1)[0]
    kids = make_children(seed, 3)
    buf = PriorityBuffer(PrioritySettings(**{"seed": 7, "decay": 1.0, "seed_ratio": 0.0, **settings}), [seed])
    buf.add(kids)
    buf.record([group(kids[0], [0, 0]), group(kids[1], [2, 0]), group(kids[2], [6, 0])], step=0)
    return buf, kids


def frequencies(buf: PriorityBuffer, size: int, n: int = N) -> Counter:
    counts: Counter = Counter()
    for step in range(n):
        counts.update(ids(buf.sample(step, size)))
    return counts


@pytest.mark.parametrize(
    ("alpha", "probs"),
    [
        (1.0, (1 / 7, 2 / 7, 4 / 7)),  # w = e + 1 = 1, 2, 4: proportional; priority 0 still drawn 1/7
        (0.0, (1 / 3, 1 / 3, 1 / 3)),  # temperature 0: uniform
        (2.0, (1 / 21, 4 / 21, 16 / 21)),  # w = 1, 4, 16: sharper
    ],
)
def test_one_draw_is_proportional_to_the_weight(alpha, probs):
    buf, kids = three_children(eps=1.0, alpha=alpha)
    counts = frequencies(buf, 1)
    for kid, p in zip(kids, probs, strict=True):
        assert_freq(counts[kid.id], p)


def test_two_draws_are_successive_draws_without_replacement():
    buf, kids = three_children(eps=1.0)
    p = (1 / 7, 2 / 7, 4 / 7)
    counts = frequencies(buf, 2)
    for i, kid in enumerate(kids):
        # P(i among two) = p_i + sum_{j != i} p_j * p_i / (1 - p_j)
        expected = p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(3) if j != i)
        assert_freq(counts[kid.id], expected)
    assert all(len(set(ids(buf.sample(s, 2)))) == 2 for s in range(50))


def test_a_small_floor_keeps_priority_zero_drawable():
    buf, kids = three_children(eps=0.01)  # w = 0.01, 1.01, 3.01
    counts = frequencies(buf, 1)
    assert_freq(counts[kids[0].id], 0.01 / 4.03)
    assert counts[kids[0].id] > 0


def test_an_unscored_child_weighs_like_the_best_scored_one():
    buf, kids = three_children(eps=1.0)
    [new] = make_children(kids[0], 1)
    buf.add([new])  # e = max(0, 1, 3) = 3 -> w = 1, 2, 4, 4
    counts = frequencies(buf, 1)
    for kid, p in zip([*kids, new], (1 / 11, 2 / 11, 4 / 11, 4 / 11), strict=True):
        assert_freq(counts[kid.id], p)


def test_decay_moves_draws_to_recently_scored_children():
    seed = make_seeds(1)[0]
    old, recent = make_children(seed, 2)
    settings = PrioritySettings(seed=0, decay=0.5, eps=1e-9, seed_ratio=0.0)
    buf = PriorityBuffer(settings, [seed])
    buf.add([old, recent])
    buf.record([group(old, [2, 0])], step=0)  # 1.0, at step 4: 1 * 0.5**4 = 0.0625
    buf.record([group(recent, [0.5, 0])], step=4)  # 0.25, fresh
    table = buf.to_table()
    # many draws at the same step: vary the run seed (every draw of a run derives from it)
    n = 3000
    hits = sum(
        ids(PriorityBuffer.from_table(table, dataclasses.replace(settings, seed=k)).sample(4, 1)) == [recent.id]
        for k in range(n)
    )
    assert_freq(hits, 0.25 / 0.3125, n)  # 0.8; undecayed it would be 0.25 / 1.25 = 0.2


# --- warm-up and seed mixing ----------------------------------------------------------------------


def mixed_buffer(n_seeds: int, n_children: int, **settings) -> PriorityBuffer:
    seeds = make_seeds(n_seeds)
    buf = PriorityBuffer(PrioritySettings(**{"seed": 3, **settings}), seeds)
    buf.add(make_children(seeds[0] if seeds else Prompt.seed("root"), n_children))
    return buf


def test_warmup_draws_seeds_only_then_the_ratio_holds():
    buf = mixed_buffer(10, 10, warmup_steps=3, seed_ratio=0.4)
    for step in range(3):
        batch = buf.sample(step, 5)
        assert len(set(ids(batch))) == 5 and all(p.is_seed for p in batch)
    for step in range(3, 40):
        batch = buf.sample(step, 5)
        assert [p.is_seed for p in batch] == [True, True, False, False, False]  # 0.4 * 5 = 2 seeds, first
        assert len(set(ids(batch))) == 5


@pytest.mark.parametrize(
    ("ratio", "size", "n_seeds"),
    [(0.2, 5, 1), (0.3, 5, 2), (0.5, 5, 3), (0.1, 5, 1), (0.1, 4, 0), (0.0, 5, 0), (1.0, 5, 5), (0.7, 10, 7)],
)
def test_seed_share_rounds_half_up(ratio, size, n_seeds):
    buf = mixed_buffer(20, 20, seed_ratio=ratio)
    assert sum(p.is_seed for p in buf.sample(0, size)) == n_seeds


def test_a_short_pool_is_filled_from_the_other():
    assert [p.is_seed for p in mixed_buffer(10, 1, seed_ratio=0.2).sample(0, 5)] == [True] * 4 + [False]
    assert [p.is_seed for p in mixed_buffer(1, 10, seed_ratio=0.6).sample(0, 5)] == [True] + [False] * 4
    assert len(mixed_buffer(2, 1, seed_ratio=0.5).sample(0, 5)) == 3  # all there is
    assert mixed_buffer(2, 2).sample(0, 0) == []


def test_seed_part_is_uniform():
    buf = mixed_buffer(10, 10, seed_ratio=0.4)
    counts = Counter(p.id for step in range(N) for p in buf.sample(step, 5) if p.is_seed)
    assert len(counts) == 10
    for count in counts.values():
        assert_freq(count, 2 / 10)  # 2 seeds of 10 per step


# --- admission gating -----------------------------------------------------------------------------


def test_admission_gating_admits_only_informative_children():
    seeds = make_seeds(2)
    buf = PriorityBuffer(PrioritySettings(seed=0, admit_threshold=0.3, seed_ratio=0.0, decay=1.0), seeds)
    good, flat, broken = make_children(seeds[0], 3)
    again = seeds[1].child(good.text, "deepen", iteration=1)  # same text as `good`: same id
    report = buf.admit(
        [
            group(good, [1, 0, 0, 0]),  # maxmean 0.75 > 0.3
            group(flat, [0.5, 0.5, 0.5, 0.6]),  # 0.6 - 0.525 = 0.075
            group(broken, [1, NAN, NAN, NAN]),  # no informativeness
            group(again, [1, 0, 0, 0]),
        ],
        step=5,
    )
    assert report.kept == 1
    assert report.dropped == {"duplicate": 1, "no_info": 1, "below_threshold": 1}
    assert buf.priority(good.id, 5) == pytest.approx(0.75)  # the admission score is its first priority
    assert all(p.id in buf for p in (good, flat, broken))  # rejected ones are kept (known to dedup), not drawn
    drawn = {p.id for step in range(200) for p in buf.sample(step, 3) if not p.is_seed}
    assert drawn == {good.id}  # the two seeds fill the rest of each minibatch
    assert buf.to_table().column("admitted").to_pylist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="admission gating is on"):
        buf.add(make_children(seeds[0], 1, start=9))


def test_without_a_threshold_admit_keeps_every_new_child():
    seed = make_seeds(1)[0]
    buf = PriorityBuffer(PrioritySettings(seed=0), [seed])
    a, b = make_children(seed, 2)
    report = buf.admit([group(a, [0.5, 0.5]), group(b, [1, NAN])], step=1)
    assert report.kept == 2 and sum(report.dropped.values()) == 0
    assert buf.priority(a.id, 1) == 0.0 and buf.priority(b.id, 1) == 0.0
    with pytest.raises(ValueError, match="is a seed, not a child"):
        buf.add([Prompt.seed("a new seed")])


def test_equal_ids_keep_the_first():
    a, b = make_seeds(2)
    buf = PriorityBuffer(PrioritySettings(seed=0), [a, b, Prompt.seed("SEED  problem 0")])  # same id as a
    assert len(buf) == 2 and buf.get(a.id).text == "seed problem 0"
    first, second = a.child("x", "deepen", 1), b.child("X", "breadth", 1)  # one id
    report = buf.admit([group(first, [1, 0]), group(second, [0, 0])], step=2)
    assert report.kept == 1 and report.dropped["duplicate"] == 1
    assert buf.get(first.id).operator == "deepen" and buf.priority(first.id, 2) == 0.5


# --- persistence ----------------------------------------------------------------------------------


def busy_buffer(settings: PrioritySettings) -> PriorityBuffer:
    seeds = [Prompt.seed("What is 2 + 3?", meta='{"family": "arith"}'), *make_seeds(5)]
    buf = PriorityBuffer(settings, seeds)
    kids = make_children(seeds[1], 6)
    buf.add(kids[:4])
    buf.record([group(kids[0], [1, 0, 0]), group(seeds[0], [0.2, 0.9]), group(kids[1], [NAN, 1])], step=1)
    buf.record([group(kids[2], [3, 1, 2])], step=4)
    buf.admit([group(kids[4], [1, 0]), group(kids[5], [0, 0])], step=4)
    return buf


def test_round_trip_through_parquet_keeps_state_and_future_draws(tmp_path):
    settings = PrioritySettings(seed=11, decay=0.8, alpha=0.7, eps=0.05, seed_ratio=0.3, warmup_steps=2)
    buf = busy_buffer(settings)
    write_table(buf.to_table(), tmp_path / "priority.parquet")
    back = PriorityBuffer.from_table(read_table(tmp_path / "priority.parquet", PRIORITY_SCHEMA), settings)
    assert back.to_table().equals(buf.to_table())
    assert back.get(buf.to_table().column("id")[0].as_py()).meta == '{"family": "arith"}'
    for step in range(5, 60):
        assert ids(back.sample(step, 4)) == ids(buf.sample(step, 4))
    # both go on the same way: the restored one stays in step
    for b in (buf, back):
        b.record([group(p, [1, 0, 0]) for p in b.sample(60, 4)], step=60)
    assert [ids(back.sample(s, 4)) for s in range(61, 80)] == [ids(buf.sample(s, 4)) for s in range(61, 80)]
    # the comparison has teeth: another run seed draws other minibatches
    other = PriorityBuffer.from_table(buf.to_table(), dataclasses.replace(settings, seed=12))
    assert [ids(other.sample(s, 4)) for s in range(61, 80)] != [ids(buf.sample(s, 4)) for s in range(61, 80)]


def test_from_table_names_the_problem():
    settings = PrioritySettings(seed=0)
    table = busy_buffer(settings).to_table()
    with pytest.raises(DataError, match=r"ckpt/priority.parquet: missing columns \['priority'\]"):
        PriorityBuffer.from_table(table.drop_columns(["priority"]), settings, source="ckpt/priority.parquet")
    with pytest.raises(DataError, match=r"duplicate prompt ids \(2 rows\)"):
        PriorityBuffer.from_table(pa.concat_tables([table.slice(0, 2), table.slice(0, 2)]), settings)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("decay", 0.0, "decay must be in"),
        ("eps", 0.0, "eps must be > 0"),
        ("seed_ratio", 1.5, "seed_ratio must be in"),
        ("warmup_steps", -1, "warmup_steps must be >= 0"),
        ("metric", "mean_inv", "normalized per batch"),
        ("metric", "regret", "unknown informativeness metric"),
    ],
)
def test_settings_refuse_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        PrioritySettings(seed=0, **{field: value})
