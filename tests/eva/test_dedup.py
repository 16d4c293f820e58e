"""The near-duplicate index against brute force, its normalization and its speed."""

import random
import time

import pytest

from eva.dedup import NearDuplicateIndex, char_ngrams, jaccard
from eva.types import normalize_text


def brute_grams(text: str) -> set[str]:
    norm = normalize_text(text)
    if len(norm) < 3:
        return {norm} if norm else set()
    return {norm[i : i + 3] for i in range(len(norm) - 2)}


def brute_jaccard(a: str, b: str) -> float:
    ga, gb = brute_grams(a), brute_grams(b)
    return len(ga & gb) / len(ga | gb) if ga or gb else 0.0


def random_corpus(rng: random.Random, n: int) -> list[str]:
    """Random strings plus mutated copies, so pair similarities cover the whole range."""
    base = ["".join(rng.choice("abcd eф") for _ in range(rng.randint(0, 60))) for _ in range(n // 2)]
    out = list(base)
    for _ in range(n - len(base)):
        s = list(rng.choice(base))
        for _ in range(rng.randint(0, 4)):
            if s:
                s[rng.randrange(len(s))] = rng.choice("abcd eX")
        out.append("".join(s) + rng.choice(["", "", "a", "xyz"]))
    return out


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.85, 1.0])
def test_index_matches_brute_force(threshold):
    rng = random.Random(int(threshold * 100))
    stored, queries = random_corpus(rng, 300), random_corpus(rng, 150)
    index = NearDuplicateIndex(threshold, stored)
    hits = 0
    for q in queries + stored[:50]:
        expected = [i for i, s in enumerate(stored) if brute_jaccard(q, s) >= threshold]
        assert index.near_duplicates(q) == expected, q
        assert index.is_near_duplicate(q) == bool(expected)
        hits += bool(expected)
    assert hits > 10  # the corpus really contains near duplicates


def test_index_exact_membership_is_normalized():
    index = NearDuplicateIndex(0.85, ["Hello   World"])
    assert "hello world" in index and "HELLO WORLD " in index and "hello" not in index
    assert len(index) == 1


def test_index_rejects_bad_threshold():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            NearDuplicateIndex(bad)


def test_index_handles_a_large_buffer_quickly():
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    texts = [" ".join(rng.choices(words, k=rng.randint(8, 40))) for _ in range(5000)]
    index = NearDuplicateIndex(0.85, texts)
    start = time.perf_counter()
    flags = [index.is_near_duplicate(t[:-2] + "zz") for t in texts[:200]]
    assert time.perf_counter() - start < 10.0  # generous: shared CI machines
    assert sum(flags) >= 190


def test_char_ngrams_and_jaccard_by_hand():
    assert char_ngrams("Ab  c") == {"ab ", "b c"}  # normalized first: casefold, whitespace runs collapsed
    assert char_ngrams("ab") == {"ab"} and char_ngrams("  ") == set()
    rng = random.Random(1)
    for text in random_corpus(rng, 50):
        assert char_ngrams(text) == brute_grams(text)
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 0.0 and jaccard({"a"}, set()) == 0.0


def test_buffer_index_grown_in_steps_answers_as_one_built_at_once():
    """The loop keeps one index per run and syncs it with the growing buffer each iteration; its
    answers must equal those of an index built from the final buffer (what a resumed run builds)."""
    from eva.buffer import PromptBuffer
    from eva.dedup import BufferIndex
    from eva.types import Prompt

    rng = random.Random(7)
    corpus = [t for t in dict.fromkeys(random_corpus(rng, 400)) if normalize_text(t)]
    buffer = PromptBuffer()
    grown = BufferIndex(0.6)
    for start in range(0, len(corpus), 37):  # iterations of 37 new prompts each
        buffer.add(Prompt.seed(t) for t in corpus[start : start + 37])
        grown.sync(buffer)
    assert len(grown.index) == len(buffer)  # each text indexed once, not once per sync
    assert len(grown.sync(buffer)) == len(buffer)
    fresh = NearDuplicateIndex(0.6, buffer.texts())
    for q in random_corpus(random.Random(8), 200):
        assert grown.index.near_duplicates(q) == fresh.near_duplicates(q), q
        assert (q in grown.index) == (q in fresh)
