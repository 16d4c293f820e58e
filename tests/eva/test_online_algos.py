"""Advantages, policy losses and the KL term of the online solver, against numbers worked by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eva.online.algos import (
    ADV_ESTIMATORS,
    AGG_MODES,
    POLICY_LOSSES,
    PolicyBatch,
    advantage_estimator,
    aggregate,
    clipped_loss,
    grpo_advantages,
    kl_k3,
    policy_loss,
    reinforce_loss,
    rloo_advantages,
)
from eva.pairs import build_pairs
from eva.types import PreferencePair, Prompt, ScoredPrompt

NAN = math.nan


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-6, atol=1e-6)


# --- advantages ----------------------------------------------------------------------------------


def test_rloo_baseline_is_mean_of_the_others():
    # group [1, 2, 6]: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 -> A = -3, -1.5, 4.5
    # group [0, 0, 3]: baselines 1.5, 1.5, 0 -> A = -1.5, -1.5, 3
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    close(rloo_advantages(rewards), [[-3.0, -1.5, 4.5], [-1.5, -1.5, 3.0]])


def test_rloo_skips_nonfinite_rewards_and_lone_samples():
    # [3, nan, 1, 2]: 3 finite (sum 6) -> baselines (1+2)/2 = 1.5, (3+2)/2 = 2.5, (3+1)/2 = 2
    # [5, nan, inf, nan]: one finite reward, no baseline -> all 0
    rewards = torch.tensor([[3.0, NAN, 1.0, 2.0], [5.0, NAN, math.inf, NAN]])
    close(rloo_advantages(rewards), [[1.5, 0.0, -1.5, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_grpo_normalizes_by_the_bessel_std():
    # [1, 2, 6]: mean 3, deviations -2, -1, 3, var (4 + 1 + 9) / 2 = 7 -> A = (-2, -1, 3) / sqrt(7)
    # [4, 4]: no spread -> 0 (not 0 / eps blown up)
    rewards = torch.tensor([[1.0, 2.0, 6.0], [4.0, 4.0, NAN]])
    s7 = math.sqrt(7)
    close(grpo_advantages(rewards, eps=0.0), [[-2 / s7, -1 / s7, 3 / s7], [0.0, 0.0, 0.0]])
    # eps enters the divisor: (r - mean) / (sqrt(7) + 1)
    close(grpo_advantages(rewards[:1], eps=1.0), [[-2 / (s7 + 1), -1 / (s7 + 1), 3 / (s7 + 1)]])


def test_dr_grpo_does_not_scale():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.5, NAN, 0.0]])
    close(grpo_advantages(rewards, scale_by_std=False), [[-2.0, -1.0, 3.0], [0.25, 0.0, -0.25]])


def test_registry_names_and_errors():
    assert set(ADV_ESTIMATORS) == {"rloo", "grpo"} and set(POLICY_LOSSES) == {"reinforce", "clip"}
    assert advantage_estimator("rloo") is rloo_advantages and policy_loss("clip") is clipped_loss
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'; known: rloo, grpo"):
        advantage_estimator("ppo")
    with pytest.raises(ValueError, match="known: reinforce, clip"):
        policy_loss("dpo")
    with pytest.raises(ValueError, match=r"\[num_prompts, n\]"):
        rloo_advantages(torch.tensor([1.0, 2.0]))


# Rewards to 6 decimals: a scorer's resolution, and no subnormal spreads whose squares underflow to 0.
reward = st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 6))
groups = st.integers(2, 8).flatmap(lambda n: st.lists(st.lists(reward, min_size=n, max_size=n), min_size=1, max_size=5))


@settings(max_examples=200, deadline=None)
@given(groups)
def test_rloo_group_sums_to_zero_and_is_scaled_centering(rows):
    r = torch.tensor(rows, dtype=torch.float64)
    adv = rloo_advantages(r)
    n = r.shape[1]
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(r.shape[0], dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(adv, n / (n - 1) * (r - r.mean(dim=1, keepdim=True)), atol=1e-9, rtol=1e-9)


@settings(max_examples=200, deadline=None)
@given(groups)
def test_grpo_zero_mean_and_unit_std(rows):
    r = torch.tensor(rows, dtype=torch.float64)
    adv = grpo_advantages(r, eps=0.0)
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(r.shape[0], dtype=torch.float64), atol=1e-9, rtol=0)
    spread = r.std(dim=1) > 1e-6
    torch.testing.assert_close(adv.std(dim=1)[spread], torch.ones(int(spread.sum()), dtype=torch.float64))
    tie = r.amax(dim=1) == r.amin(dim=1)
    assert (adv[tie] == 0).all() and (rloo_advantages(r)[tie] == 0).all()


# --- aggregation and KL ---------------------------------------------------------------------------

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),  # 2.5: the masked 9s never count
        ("seq-mean-token-mean", (6 / 3 + 4 / 1) / 2),  # 3.0
        ("seq-mean-token-sum", (6 + 4) / 2),  # 5.0
        ("seq-mean-token-sum-norm", 10 / (2 * 3)),  # T = 3
    ],
)
def test_aggregate_modes(agg, expected):
    assert aggregate(PER_TOKEN, MASK, agg).item() == pytest.approx(expected)


def test_aggregate_norm_uses_max_len_and_rejects_unknown_modes():
    assert aggregate(PER_TOKEN, MASK, "seq-mean-token-sum-norm", max_len=5).item() == pytest.approx(10 / 10)
    assert len(AGG_MODES) == 4
    with pytest.raises(ValueError, match="unknown token aggregation 'sum'"):
        aggregate(PER_TOKEN, MASK, "sum")


def test_kl_k3_by_hand():
    # p = 0.5, ref = 0.25: d = ln 0.25 - ln 0.5 = -ln 2 -> e^d - d - 1 = 0.5 + ln 2 - 1 = 0.193147...
    # p = 0.25, ref = 0.5: d = ln 2 -> 2 - ln 2 - 1 = 0.306853...; equal -> 0
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3]))
    close(kl_k3(logp, ref), [math.log(2) - 0.5, 1 - math.log(2), 0.0])


# --- losses ---------------------------------------------------------------------------------------


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_reinforce_sequence_sum_value_and_gradient():
    # seq 0: A = 2, log-probs -1, -2 (third token padding); seq 1: A = -1, log-probs -0.5, -0.5, -1
    # loss = mean(-2 * (-3), +1 * (-2)) = (6 - 2) / 2 = 2; d loss / d logp = -A / B = -1 (seq 0), 0.5 (seq 1)
    logp = leaf([[-1.0, -2.0, -7.0], [-0.5, -0.5, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    batch = PolicyBatch(logp=logp, advantages=torch.tensor([2.0, -1.0], dtype=torch.float64), mask=mask)
    loss, stats = reinforce_loss(batch)
    assert loss.item() == pytest.approx(2.0) and stats == {}
    loss.backward()
    close(logp.grad, [[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]])
    # per-token mean per sequence: mean(-2 * -1.5, 1 * -2/3) = (3 - 2/3) / 2
    loss2, _ = reinforce_loss(batch, agg="seq-mean-token-mean")
    assert loss2.item() == pytest.approx((3 - 2 / 3) / 2)


def clip_case(ratios, advantages):
    """One token per sequence with the given ratio (old_logp = 0) and advantage."""
    logp = leaf([[math.log(r)] for r in ratios])
    batch = PolicyBatch(
        logp=logp,
        advantages=torch.tensor(advantages, dtype=torch.float64),
        mask=torch.ones(len(ratios), 1),
        old_logp=torch.zeros(len(ratios), 1, dtype=torch.float64),
    )
    return logp, batch


def per_sequence_losses(ratios, advantages, **kw):
    """Each sequence's loss and its gradient d loss_b / d logp_b (one token each)."""
    out = []
    for r, a in zip(ratios, advantages, strict=True):
        logp, batch = clip_case([r], [a])
        loss, _ = clipped_loss(batch, **kw)
        loss.backward()
        out.append((loss.item(), logp.grad.item()))
    return out


def test_clip_by_hand():
    # eps_low 0.2, eps_high 0.28 (clip-higher): the band is [0.8, 1.28]
    ratios = [1.5, 0.5, 1.1, 1.5, 0.5]
    advs = [2.0, -1.0, 1.0, -1.0, 1.0]
    got = per_sequence_losses(ratios, advs, eps_low=0.2, eps_high=0.28)
    expected = [
        (-1.28 * 2, 0.0),  # ratio above 1 + eps_high, A > 0: clipped, no gradient
        (0.8, 0.0),  # ratio below 1 - eps_low, A < 0: -min(-0.5, -0.8) = 0.8, clipped
        (-1.1, -1.1),  # inside the band: -ratio * A, gradient -ratio * A
        (1.5, 1.5),  # above the band but A < 0: the unclipped term is the smaller, not clipped
        (-0.5, -0.5),  # below the band but A > 0: not clipped
    ]
    for (loss, grad), (want_loss, want_grad) in zip(got, expected, strict=True):
        assert loss == pytest.approx(want_loss) and grad == pytest.approx(want_grad)


def test_clip_stats_count_clipped_tokens():
    _, batch = clip_case([1.5, 0.5, 1.1, 1.5, 0.5], [2.0, -1.0, 1.0, -1.0, 1.0])
    loss, stats = clipped_loss(batch, eps_low=0.2, eps_high=0.28, agg="token-mean")
    assert stats["clip_high"] == pytest.approx(1 / 5) and stats["clip_low"] == pytest.approx(1 / 5)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.1 + 1.5 + 0.5) / 5)
    assert loss.item() == pytest.approx((-2.56 + 0.8 - 1.1 + 1.5 - 0.5) / 5)


def test_clip_at_ratio_one_has_the_reinforce_gradient():
    logp = leaf([[-1.0, -2.0], [-0.3, -0.1]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.5, -0.5], dtype=torch.float64)
    grads = []
    for name in ("clip", "reinforce"):
        logp.grad = None
        batch = PolicyBatch(logp=logp, advantages=adv, mask=mask, old_logp=logp.detach().clone())
        policy_loss(name)(batch, agg="token-mean")[0].backward()
        grads.append(logp.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_kl_penalty_is_added_per_token_before_aggregating():
    # one sequence, two tokens, ratio 1, A = 0: the loss is beta * mean(k3) alone
    logp = leaf([[math.log(0.5), math.log(0.25)]])
    ref = torch.log(torch.tensor([[0.25, 0.5]], dtype=torch.float64))
    batch = PolicyBatch(
        logp=logp,
        advantages=torch.zeros(1, dtype=torch.float64),
        mask=torch.ones(1, 2),
        old_logp=logp.detach(),
        ref_logp=ref,
    )
    k = ((math.log(2) - 0.5) + (1 - math.log(2))) / 2  # = 0.25
    loss, stats = clipped_loss(batch, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * k) and stats["kl"] == pytest.approx(k)
    loss, stats = reinforce_loss(batch, beta=0.1, agg="seq-mean-token-sum")
    assert loss.item() == pytest.approx(0.1 * 2 * k)
    # the gradient of k3 in logp is 1 - exp(ref - logp): 1 - 0.5 and 1 - 2, times beta / 2 tokens
    logp.grad = None
    clipped_loss(batch, beta=0.1)[0].backward()
    close(logp.grad, [[0.1 * 0.5 / 2, 0.1 * -1.0 / 2]])


def test_losses_say_what_they_miss():
    batch = PolicyBatch(logp=torch.zeros(1, 1), advantages=torch.ones(1), mask=torch.ones(1, 1))
    with pytest.raises(ValueError, match="old_logp"):
        clipped_loss(batch)
    with pytest.raises(ValueError, match="ref_logp"):
        reinforce_loss(batch, beta=0.1)


# --- online DPO: pairs from the step's groups (eva.pairs.build_pairs, as the eva.online docstring says) ---


def test_online_dpo_pairs_best_vs_worst_of_each_group_ties_skipped():
    def scored(text, rewards):
        return ScoredPrompt(Prompt.seed(text), tuple(f"{text}/{j}" for j in range(len(rewards))), tuple(rewards))

    groups = [
        scored("a", [0.2, 0.9, 0.5, 0.9, 0.2]),  # best: first 0.9 (index 1), worst: first 0.2 (index 0)
        scored("b", [0.5, 0.5, 0.5, 0.5]),  # a tie: no signal, no pair
        scored("c", [1.0, NAN, NAN, NAN]),  # one finite reward
        scored("d", [NAN, 0.0, 1.0, -math.inf]),  # -inf is a scorer failure, not the worst
    ]
    pairs, report = build_pairs(groups, min_margin=0.0, iteration=7)
    assert pairs == [
        PreferencePair(groups[0].prompt.id, "a", "a/1", "a/0", 0.9, 0.2, 7),
        PreferencePair(groups[3].prompt.id, "d", "d/2", "d/1", 1.0, 0.0, 7),
    ]
    assert report.dropped == {"too_few_rewards": 1, "tie": 1, "below_margin": 0}


# --- micro-batches and online DPO ---------------------------------------------------------------


@pytest.mark.parametrize("agg", AGG_MODES)
def test_micro_batches_weighted_by_chunk_weight_sum_to_the_whole_batch(agg):
    """Three sequences of 2, 3 and 1 completion tokens split 2 + 1: the weighted chunk losses add up
    to the one-pass loss in every aggregation mode."""
    from eva.online.algos import chunk_weight

    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0], [6.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    whole = aggregate(x, mask, agg, max_len=4)
    parts = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    summed = sum(aggregate(xs, ms, agg, max_len=4) * chunk_weight(agg, ms, 6, 3) for xs, ms in parts)
    close(summed, float(whole))


def test_chunk_weight_by_hand_and_unknown_mode():
    from eva.online.algos import chunk_weight

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert chunk_weight("token-mean", mask, 12, 5) == 3 / 12
    assert chunk_weight("seq-mean-token-sum", mask, 12, 5) == 2 / 5
    with pytest.raises(ValueError, match="unknown token aggregation"):
        chunk_weight("mean", mask, 12, 5)


def test_dpo_loss_by_hand():
    """z = beta ((pc - rc) - (pr - rr)): pair 1: 0.5 ((-1 + 2) - (-3 + 2)) = 1; pair 2: 0.5 (0 - (-2 + 4)) = -1.
    loss = mean(-log sigmoid(z)) = (log(1 + e^-1) + log(1 + e^1)) / 2; one pair of two has z > 0."""
    from eva.online.algos import dpo_loss

    chosen = torch.tensor([-1.0, -4.0], requires_grad=True)
    loss, stats = dpo_loss(
        chosen, torch.tensor([-3.0, -2.0]), torch.tensor([-2.0, -4.0]), torch.tensor([-2.0, -4.0]), 0.5
    )
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert stats == {"reward_accuracy": 0.5, "reward_margin": 0.0}
    loss.backward()  # d/d chosen_i = -beta * sigmoid(-z_i) / 2
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    close(chosen.grad, [-0.5 * sig(-1.0) / 2, -0.5 * sig(1.0) / 2])


def test_dpo_loss_at_the_reference_is_ln2():
    from eva.online.algos import dpo_loss

    logp = torch.tensor([-5.0, -7.0, -1.0])
    loss, stats = dpo_loss(logp, logp - 1, logp, logp - 1, 0.1)
    assert float(loss) == pytest.approx(math.log(2)) and stats["reward_accuracy"] == 0.0
