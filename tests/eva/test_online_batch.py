"""The step batch the trainer receives: the engine's token ids, rewards, and online DPO's pairs
chosen exactly as eva.pairs.build_pairs chooses them."""

import math

import pytest

from eva.online.batch import step_batch
from eva.pairs import build_pairs, pair_indices
from eva.types import Prompt, SampledTokens, ScoredPrompt


def group(text: str, rewards: tuple[float, ...], tokens: bool = True) -> ScoredPrompt:
    responses = tuple(f"{text} answer {i}" for i in range(len(rewards)))
    ids = SampledTokens((1, 2, 3), tuple((10 + i, 2) for i in range(len(rewards)))) if tokens else None
    return ScoredPrompt(Prompt.seed(text), responses, rewards, tokens=ids)


def test_batch_holds_the_token_ids_and_the_pairs_build_pairs_would_build():
    groups = [
        group("a", (0.0, 1.0, 0.5)),
        group("b", (0.3, 0.3, 0.3)),  # a tie: no pair
        group("c", (math.nan, 0.2, 0.9)),  # the nan is not a candidate
        group("d", (0.1, 0.15, 0.1)),  # margin 0.05 <= min_margin 0.1: no pair
    ]
    b = step_batch(7, 2, groups, min_margin=0.1)
    assert (b.step, b.iteration, b.num_sequences) == (7, 2, 12)
    assert b.prompt_ids == ((1, 2, 3),) * 4 and b.completion_ids[0] == ((10, 2), (11, 2), (12, 2))
    assert b.rewards[2][1:] == (0.2, 0.9) and math.isnan(b.rewards[2][0])
    assert b.pairs == ((0, 1, 0), (2, 2, 1))
    pairs, report = build_pairs(groups, 0.1, 2)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        (groups[p].responses[c], groups[p].responses[r]) for p, c, r in b.pairs
    ]
    assert report.dropped == {"too_few_rewards": 0, "tie": 1, "below_margin": 1}


def test_pair_indices_reasons_and_first_of_ties():
    assert pair_indices([1.0, 0.0, 1.0, 0.0], 0.0) == (0, 1)
    assert pair_indices([math.nan, 1.0], 0.0) == "too_few_rewards"
    assert pair_indices([0.5, 0.5], 0.0) == "tie"
    assert pair_indices([0.5, 0.6], 0.1) == "below_margin"


def test_a_group_without_token_ids_is_refused_naming_the_prompt():
    g = group("no tokens", (0.0, 1.0), tokens=False)
    with pytest.raises(ValueError, match=f"prompt {g.prompt.id}: the group has no token ids"):
        step_batch(0, 1, [g], 0.0)
