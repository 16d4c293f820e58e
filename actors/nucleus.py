"""Top-p (nucleus) filtering for vLLM's CPU sampler without sorting the vocabulary.

vLLM 0.32 on CPU filters top-p by sorting every row's logits over the whole vocabulary at every
decoding step (`apply_top_k_top_p_pytorch`): 86 ms a step for 128 rows of SmolLM2's 49,152 tokens,
which held cpu-default's generation to 204-215 new tokens/s against 421 without top-p. The nucleus
of a trained model is a few tokens (4 on average there), so `nucleus_logits` finds it among the
row's top candidates (`torch.topk`) and sorts nothing: 11 ms a step, 362-364 tokens/s
(`python -m benchmarks.nucleus`, benchmarks/RESULTS.md "Top-p on CPU"). A row whose candidates do
not hold mass p (a flat distribution, such as the tiny test model's) takes vLLM's own sort.
`install()` puts it where vLLM's CPU sampler looks the filter up, in the engine actor's own process,
which is where a CPU engine samples (its engine core runs in-process; tensor parallelism, whose Ray
workers sample elsewhere, is a GPU setting).

The filter is vLLM's: a token stays when the mass of the tokens ranked above it is below p (in
vLLM's words, it goes when the ascending mass up to it is at most 1 - p), and the likeliest token
always stays. The candidates' probabilities are taken in float64, so the kept set is the exact one
of the float32 logits (vLLM's float32 cumsum agreed with it on every row tested, too). Only ties
differ: a bf16 model's logits take ~2,000 distinct values, and equal logits straddling the boundary
are split by topk's order instead of the sort's (3% of sampling rows on cpu-default); either split
keeps mass p, so the sampled distribution is the same. Top-k (eva never sets it) goes to vLLM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Candidate counts tried in turn for the rows not yet covered; rows whose top 1024 hold less than
# p go to vLLM's sort.
CANDIDATES = (64, 1024)

Filter = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


def nucleus_logits(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None, sort: Filter) -> torch.Tensor:
    """`logits` (batch x vocab) with the tokens outside each row's nucleus at -inf; `p` per row.
    `sort`: vLLM's filter, for top-k and for the rows no candidate count covers."""
    if k is not None or p is None:
        return sort(logits, k, p)
    out = torch.full_like(logits, float("-inf"))
    # p = 1 drops exactly the tokens of probability 0 (their ascending mass is 0): nothing to sort
    whole = p >= 1
    if whole.any():
        rows = whole.nonzero().squeeze(1)
        out[rows] = logits[rows].masked_fill(logits[rows].softmax(dim=-1) == 0, float("-inf"))
    todo = (~whole).nonzero().squeeze(1)
    # The candidates' probabilities in float64: in float32 the normaliser's rounding alone moves a
    # mass of 0.9 by ~1e-6, enough to put a boundary token on the wrong side now and then.
    rows_left = logits[todo]  # the rows still to cover, gathered once (a batch x vocab copy)
    lse, row_p = torch.logsumexp(rows_left.double(), dim=-1), p[todo].double()
    sorted_rows = todo[:0]
    for count in CANDIDATES:
        if todo.numel() == 0:
            break
        top = rows_left.topk(min(count, logits.shape[-1]), dim=-1)
        inclusive = (top.values.double() - lse.unsqueeze(1)).exp().cumsum(dim=-1)
        covered = (inclusive[:, -1] >= row_p) | (count >= logits.shape[-1])
        # no later candidate is likelier than this count's last: rows that more of them cannot cover
        # go straight to the sort
        reach = inclusive[:, -1] + (inclusive[:, -1] - inclusive[:, -2]) * (CANDIDATES[-1] - count)
        hopeless = ~covered & (reach < row_p)
        # the mass ranked above each candidate: the inclusive sums one place on (the top one has none)
        above = torch.nn.functional.pad(inclusive[covered][:, :-1], (1, 0))
        keep = above < row_p[covered].unsqueeze(1)
        rows, index = todo[covered], top.indices[covered]
        kept = top.values[covered].masked_fill(~keep, float("-inf"))
        out[rows] = out[rows].scatter(1, index, kept)
        sorted_rows = torch.cat([sorted_rows, todo[hopeless]])
        left = ~covered & ~hopeless
        todo, rows_left, row_p, lse = todo[left], rows_left[left], row_p[left], lse[left]
    sorted_rows = torch.cat([sorted_rows, todo])
    if sorted_rows.numel():
        out[sorted_rows] = sort(logits[sorted_rows].clone(), None, p[sorted_rows])
    return out


_installed: list[Filter] = []


def install() -> None:
    """Make vLLM's CPU sampler filter top-p with `nucleus_logits` (idempotent, this process only)."""
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    if _installed:
        return
    original: Filter = sampler.apply_top_k_top_p
    _installed.append(original)

    def apply_top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
        return nucleus_logits(logits, k, p, original)

    sampler.apply_top_k_top_p = apply_top_k_top_p
