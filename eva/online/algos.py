"""Advantage estimators and policy losses of the online solver, by name (verl `core_algos` style).

Two small registries: `ADV_ESTIMATORS` (rewards of the groups -> one advantage per response) and
`POLICY_LOSSES` (per-token log-probs + advantages -> a scalar loss and its stats). Tensors in,
tensors out; no process state. Why these are eva's and not TRL's: `eva.online`'s docstring.

Shapes. Rewards are a float tensor `[P, n]`: row p holds the n rewards of prompt p's group, in the
order the engine returned the responses. A non-finite reward (nan, +-inf: a scorer failure) takes no
part in its group's statistics and gets advantage 0, as TRL does with unscorable completions; a
group with fewer than 2 finite rewards (no baseline) or with all of them equal (a tie) gets all zeros. Advantages come
back `[P, n]`; flattened row-major (`.reshape(-1)`), response i of prompt p is sequence `p * n + i`
of the `[B, T]` token tensors of the loss, B = P * n.

Token aggregation (`agg`, verl's names), over a per-token loss x and a completion mask m `[B, T]`:
- `token-mean`: sum(x m) / sum(m), every token of the batch weighs the same (DAPO; TRL `bnpo`);
- `seq-mean-token-mean`: mean over sequences of sum_t(x m) / sum_t(m) (GRPO paper; TRL `grpo`);
- `seq-mean-token-sum`: mean over sequences of sum_t(x m): the loss of whole sequences, log pi(y|x)
  = sum_t log pi(y_t | ...) (RLOO, Ahmadian et al. 2024; TRL RLOOTrainer sums log-probs);
- `seq-mean-token-sum-norm`: sum(x m) / (B * max_len), a constant divisor (Dr. GRPO; TRL `dr_grpo`).
A sequence whose mask is all zeros counts as a loss of 0 in the seq-mean modes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

AdvantageFn = Callable[..., torch.Tensor]
PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]

ADV_ESTIMATORS: dict[str, AdvantageFn] = {}
POLICY_LOSSES: dict[str, PolicyLossFn] = {}
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def register_adv_est(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: add an advantage estimator to `ADV_ESTIMATORS` under `name`."""
    return _registrar(ADV_ESTIMATORS, name, "advantage estimator")


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: add a policy loss to `POLICY_LOSSES` under `name`."""
    return _registrar(POLICY_LOSSES, name, "policy loss")


def _registrar(table: dict, name: str, what: str) -> Callable:
    def add(fn):
        if name in table:
            raise ValueError(f"{what} {name!r} is already registered")
        table[name] = fn
        return fn

    return add


def advantage_estimator(name: str) -> AdvantageFn:
    """The estimator registered as `name`; ValueError listing the known ones for any other."""
    if name not in ADV_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {', '.join(ADV_ESTIMATORS)}")
    return ADV_ESTIMATORS[name]


def policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered as `name`; ValueError listing the known ones for any other."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; known: {', '.join(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]


# --- advantages ---------------------------------------------------------------------------------


def _group_stats(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(signal, finite count, sum, rewards with non-finite set to 0); counts and sums are [P, 1].

    `signal` marks the finite rewards of groups that carry a signal: >= 2 finite rewards that are not
    all equal. The tie is tested exactly, so float rounding of a mean cannot turn a tie into +-1 after
    scaling by a std of 1e-17. Every other reward gets advantage 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_prompts, n], got shape {tuple(rewards.shape)}")
    finite = torch.isfinite(rewards)
    r = torch.where(finite, rewards, torch.zeros_like(rewards))
    count = finite.sum(dim=1, keepdim=True)
    hi = torch.where(finite, rewards, -torch.inf).amax(dim=1, keepdim=True)
    lo = torch.where(finite, rewards, torch.inf).amin(dim=1, keepdim=True)
    signal = finite & (count >= 2) & (hi > lo)
    return signal, count, r.sum(dim=1, keepdim=True), r


@register_adv_est("rloo")
def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out: A_i = r_i - (sum of the other m - 1 finite rewards of the group) / (m - 1).

    Equals m / (m - 1) * (r_i - mean); a group's advantages sum to 0. `rewards` [P, n] -> [P, n].
    """
    signal, count, total, r = _group_stats(rewards)
    baseline = (total - r) / (count - 1).clamp(min=1)
    return torch.where(signal, r - baseline, torch.zeros_like(r))


@register_adv_est("grpo")
def grpo_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Group-normalized: A_i = (r_i - mean) / (std + eps), mean and std over the group's finite rewards.

    std is Bessel-corrected (1 / (m - 1)), as TRL's `nanstd` and verl's `torch.std`; eps as verl
    (TRL adds 1e-4). `scale_by_std=False` is Dr. GRPO (Liu et al. 2025): A_i = r_i - mean, no
    division, so groups with a small spread are not blown up. A group with equal rewards gets 0.
    `rewards` [P, n] -> [P, n].
    """
    signal, count, total, r = _group_stats(rewards)
    mean = total / count.clamp(min=1)
    adv = torch.where(signal, r - mean, torch.zeros_like(r))
    if scale_by_std:
        std = (adv.square().sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        adv = adv / (std + eps).clamp(min=torch.finfo(adv.dtype).tiny)  # groups without signal: 0 / tiny = 0
    return adv


# --- losses -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyBatch:
    """What a policy loss reads, B sequences of T completion-token positions (padded).

    `logp`: log-probs of the sampled tokens under the policy being trained (carries the gradient).
    `old_logp`: the same under the policy that sampled them (the engines' weights; no gradient).
    `ref_logp`: the same under the reference policy, for the KL penalty. `mask`: 1 on completion
    tokens, 0 on padding. `advantages`: one per sequence [B] (row-major from `[P, n]`).
    """

    logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, agg: str, max_len: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar with the completion mask (modes: module docstring).

    `max_len` is the divisor's length for `seq-mean-token-sum-norm` (the generation's max new
    tokens, so the divisor does not change with the batch); default T.
    """
    m = mask.to(per_token.dtype)
    x = per_token * m
    if agg == "token-mean":
        return x.sum() / m.sum().clamp(min=1)
    if agg == "seq-mean-token-mean":
        return (x.sum(dim=-1) / m.sum(dim=-1).clamp(min=1)).mean()
    if agg == "seq-mean-token-sum":
        return x.sum(dim=-1).mean()
    if agg == "seq-mean-token-sum-norm":
        return x.sum() / (x.shape[0] * (x.shape[-1] if max_len is None else max_len))
    raise ValueError(f"unknown token aggregation {agg!r}; known: {', '.join(AGG_MODES)}")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman 2020; GRPO).

    Unbiased for samples of pi, >= 0 everywhere, 0 where the two log-probs are equal. Same shape in and out.
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.to(x.dtype)
    return float((x * m).sum() / m.sum().clamp(min=1))


def _finish(
    per_token: torch.Tensor, batch: PolicyBatch, agg: str, beta: float, max_len: int | None, stats: dict[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Add beta * k3 KL per token (when beta > 0), aggregate, and record the KL's token mean."""
    if beta:
        if batch.ref_logp is None:
            raise ValueError(f"a KL penalty (beta={beta}) needs the reference log-probs (ref_logp)")
        kl = kl_k3(batch.logp, batch.ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = _masked_mean(kl.detach(), batch.mask)
    return aggregate(per_token, batch.mask, agg, max_len), stats


@register_policy_loss("reinforce")
def reinforce_loss(
    batch: PolicyBatch, agg: str = "seq-mean-token-sum", beta: float = 0.0, max_len: int | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE with the advantages as they are (RLOO's loss): per token -A * logp, aggregated.

    The default `seq-mean-token-sum` is -mean_b(A_b * log pi(y_b | x_b)), the sequence-level
    estimator of the RLOO paper; `seq-mean-token-mean` divides each sequence by its length. On-policy:
    the gradient equals the clipped loss's at ratio 1 (rollouts from the weights being trained); with
    rollouts a few optimizer steps old use `clip`. Returns (loss, stats) with `kl` when beta > 0.
    """
    per_token = -batch.advantages.unsqueeze(-1) * batch.logp
    return _finish(per_token, batch, agg, beta, max_len, {})


@register_policy_loss("clip")
def clipped_loss(
    batch: PolicyBatch,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg: str = "seq-mean-token-mean",
    beta: float = 0.0,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate per token (GRPO's loss): ratio = exp(logp - old_logp),
    -min(ratio * A, clamp(ratio, 1 - eps_low, 1 + eps_high) * A), plus beta * k3 KL, aggregated.

    A token is clipped (no gradient) where ratio > 1 + eps_high with A > 0 or ratio < 1 - eps_low
    with A < 0; everywhere else the unclipped term is the smaller one. `eps_high > eps_low` is DAPO's
    clip-higher. Stats: `clip_low`, `clip_high` (shares of completion tokens clipped on each side),
    `ratio_mean`, and `kl` when beta > 0.
    """
    if batch.old_logp is None:
        raise ValueError("the clipped loss needs the sampling policy's log-probs (old_logp)")
    adv = batch.advantages.unsqueeze(-1)
    ratio = torch.exp(batch.logp - batch.old_logp)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    r = ratio.detach()
    stats = {
        "clip_low": _masked_mean(((r < 1 - eps_low) & (adv < 0)).float(), batch.mask),
        "clip_high": _masked_mean(((r > 1 + eps_high) & (adv > 0)).float(), batch.mask),
        "ratio_mean": _masked_mean(r, batch.mask),
    }
    return _finish(per_token, batch, agg, beta, max_len, stats)


def chunk_weight(agg: str, mask: torch.Tensor, total_tokens: int, total_sequences: int) -> float:
    """The factor that makes a micro-batch's aggregated loss its share of the whole minibatch's.

    `aggregate` over a micro-batch of the minibatch's sequences (completion mask `mask` [b, T])
    divides by the micro-batch's own tokens (token-mean) or sequences (the seq-mean modes); times
    this weight, the micro-batches' losses sum to `aggregate` over the whole minibatch of
    `total_sequences` sequences holding `total_tokens` completion tokens (up to float rounding), so
    gradient accumulation gives the one-pass gradient. Sequences left out of every micro-batch (a
    zero advantage, no KL: their loss is 0) still count in the totals.
    """
    if agg == "token-mean":
        return float(mask.sum()) / max(total_tokens, 1)
    if agg in AGG_MODES:
        return mask.shape[0] / max(total_sequences, 1)
    raise ValueError(f"unknown token aggregation {agg!r}; known: {', '.join(AGG_MODES)}")


def dpo_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO over M pairs (online DPO's loss; TRL DPOTrainer's `sigmoid` without label smoothing).

    Inputs are sequence log-probs [M] (summed over each completion's tokens) of the chosen and the
    rejected response under the policy and the reference. With the implicit reward margin
    z = beta * ((chosen - ref_chosen) - (rejected - ref_rejected)): loss = mean(-log sigmoid(z)).
    Stats: `reward_accuracy` (share of pairs with z > 0) and `reward_margin` (mean z).
    """
    z = beta * ((chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp))
    loss = -torch.nn.functional.logsigmoid(z).mean()
    zd = z.detach()
    return loss, {"reward_accuracy": float((zd > 0).float().mean()), "reward_margin": float(zd.mean())}
