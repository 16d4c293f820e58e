"""Top-p on CPU without the vocabulary sort (actors.nucleus) against vLLM's own filter and float64."""

from __future__ import annotations

import pytest
import torch

from actors import nucleus
from actors.nucleus import nucleus_logits

vllm_sampler = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")
VOCAB = 49152  # SmolLM2's


def vllm_filter(logits, k, p):
    """vLLM's CPU path (sort the row, ascending cumsum), the one nucleus_logits replaces."""
    return vllm_sampler.apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)


def zipf_logits(rows: int, sharpness: float, seed: int) -> torch.Tensor:
    """Rows shaped like a language model's: log-probabilities ~ -sharpness * log(rank), shuffled, no ties."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.stack([torch.randperm(VOCAB, generator=g) for _ in range(rows)]).float() + 1
    return -sharpness * ranks.log() + 0.3 * torch.randn(rows, VOCAB, generator=g)


def float64_nucleus(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The kept set computed in float64: a token stays when the mass ranked above it is below p."""
    probs = logits.double().softmax(dim=-1)
    values, order = probs.sort(dim=-1, descending=True)
    keep = (values.cumsum(dim=-1) - values) < p.double().unsqueeze(1)
    keep[:, 0] = True
    return torch.zeros_like(keep).scatter(1, order, keep)


class CountingSort:
    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, logits, k, p):
        self.rows.append(logits.shape[0])
        return vllm_filter(logits, k, p)


@pytest.mark.parametrize("sharpness", [1.3, 1.6, 2.0, 3.0])
def test_kept_set_is_the_float64_nucleus_and_vllms(sharpness):
    logits = zipf_logits(64, sharpness, seed=int(sharpness * 10))
    p = torch.full((64,), 0.9)
    ours = nucleus_logits(logits.clone(), None, p, vllm_filter)
    theirs = vllm_filter(logits.clone(), None, p)
    kept = ours > float("-inf")
    assert torch.equal(kept, float64_nucleus(logits, p))
    assert torch.equal(ours, theirs)  # no ties in these rows: the very tensor vLLM's sort gives
    assert torch.equal(ours[kept], logits[kept])  # kept logits untouched


def test_peaked_rows_sort_nothing_flat_rows_take_vllms_sort():
    peaked, flat = zipf_logits(6, 2.5, seed=1), 0.01 * torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(2))
    logits = torch.cat([peaked[:3], flat[:2], peaked[3:], flat[2:]])
    p = torch.tensor([0.9, 0.8, 0.95, 0.9, 0.7, 0.9, 0.5, 0.99, 0.9, 0.9])
    sort = CountingSort()
    ours = nucleus_logits(logits.clone(), None, p, sort)
    assert sort.rows == [4]  # the four flat rows, in one call
    assert torch.equal(ours, vllm_filter(logits.clone(), None, p))
    assert torch.equal(ours > float("-inf"), float64_nucleus(logits, p))


def test_second_candidate_count_covers_a_wider_nucleus():
    logits = zipf_logits(8, 1.3, seed=3)  # ~700 tokens in the nucleus: past 64, within 1024
    p = torch.full((8,), 0.9)
    sort = CountingSort()
    ours = nucleus_logits(logits.clone(), None, p, sort)
    kept = (ours > float("-inf")).sum(dim=1)
    assert ((kept > nucleus.CANDIDATES[0]) & (kept <= nucleus.CANDIDATES[1])).all()
    assert sort.rows == []
    assert torch.equal(ours > float("-inf"), float64_nucleus(logits, p))


def test_p_one_rows_drop_only_zero_probability_tokens():
    logits = zipf_logits(3, 2.0, seed=4)
    logits[0, :10] = -1e4  # underflows to probability 0 in float32
    p = torch.tensor([1.0, 1.0, 0.9])
    sort = CountingSort()
    ours = nucleus_logits(logits.clone(), None, p, sort)
    assert sort.rows == []
    assert torch.equal(ours, vllm_filter(logits.clone(), None, p))
    assert (ours[0, :10] == float("-inf")).all() and (ours[0, 10:] > float("-inf")).all()
    assert (ours[1] > float("-inf")).all()


def test_top_k_goes_to_vllm():
    logits = zipf_logits(2, 2.0, seed=5)
    sort = CountingSort()
    k, p = torch.tensor([5, 50]), torch.tensor([0.9, 0.9])
    assert torch.equal(nucleus_logits(logits.clone(), k, p, sort), vllm_filter(logits.clone(), k, p))
    assert sort.rows == [2]


def test_bf16_ties_at_the_boundary_still_give_a_nucleus():
    """bf16 logits take a few thousand distinct values: tied tokens at the boundary may be split
    otherwise than by vLLM's (unstable) sort, but the kept set is still a nucleus of mass p: every
    kept token has less than p ranked strictly above it and the kept mass reaches p."""
    logits = zipf_logits(32, 1.6, seed=6).to(torch.bfloat16).float()
    p = torch.full((32,), 0.9)
    ours = nucleus_logits(logits.clone(), None, p, vllm_filter)
    probs = logits.double().softmax(dim=-1)
    kept = ours > float("-inf")
    assert (kept.sum(dim=1) == (vllm_filter(logits.clone(), None, p) > float("-inf")).sum(dim=1)).all()
    for row in range(32):
        assert probs[row][kept[row]].sum() >= 0.9 - 1e-9
        weakest = probs[row][kept[row]].min()
        assert probs[row][probs[row] > weakest].sum() < 0.9


def test_install_puts_it_where_vllms_cpu_sampler_calls_it(monkeypatch):
    monkeypatch.setattr(nucleus, "_installed", [])
    monkeypatch.setattr(vllm_sampler, "apply_top_k_top_p", vllm_sampler.apply_top_k_top_p)
    original = vllm_sampler.apply_top_k_top_p
    nucleus.install()
    nucleus.install()  # idempotent: wraps vLLM's function once
    assert nucleus._installed == [original]
    from vllm.platforms import current_platform

    # the CPU kernels forward_cpu samples with, the build vLLM picks for this CPU (importing vllm._C
    # itself is an illegal instruction on a CPU without AVX512-BF16)
    current_platform.import_kernels()
    calls = []
    monkeypatch.setattr(nucleus, "nucleus_logits", lambda *a: calls.append(a) or nucleus_logits(*a))
    logits, p = zipf_logits(4, 2.0, seed=7), torch.full((4,), 0.9)
    sampler = vllm_sampler.TopKTopPSampler()
    tokens, _ = sampler.forward_cpu(logits.clone(), {}, None, p)
    assert len(calls) == 1 and calls[0][3] is original
    assert (float64_nucleus(logits, p).gather(1, tokens.unsqueeze(1))).all()
