"""Near duplicates among prompts: character 3-gram Jaccard similarity and an index over many texts.

`NearDuplicateIndex` answers "is this text (nearly) one we already have?" over a buffer of any size;
the evolve filter (`eva.evolve.filter_evolved`) checks every candidate rewrite against one.
`BufferIndex` keeps one in step with a growing buffer across iterations, so each text is indexed
once per run instead of the whole buffer once per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from eva.types import normalize_text

if TYPE_CHECKING:
    from eva.buffer import PromptBuffer


def char_ngrams(text: str, n: int = 3) -> set[str]:
    """Character n-grams of the normalized text; a text shorter than n is its own single gram."""
    norm = normalize_text(text)
    if len(norm) < n:
        return {norm} if norm else set()
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; 0 when both are empty."""
    if not a and not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class NearDuplicateIndex:
    """Exact and near-duplicate lookups (character 3-gram Jaccard >= threshold) over many texts.

    Two exact pruning rules, then exact verification of the survivors:
    - prefix filter: J(A, B) >= t implies |A ∩ B| >= ceil(t·max(|A|, |B|)), so under any fixed
      total order of grams the first |X| - ceil(t·|X|) + 1 grams of A and of B share a gram;
      only those prefixes are indexed and probed. The order puts grams first seen late
      (usually rare ones) first, so common grams such as " th" seldom land in a prefix. A rank
      never changes once assigned and unseen grams rank above all seen ones, so it stays one
      fixed total order as texts are added.
    - size filter: J >= t implies t·|A| <= |B| <= |A|/t. Postings are keyed by (gram, size band)
      with bands of width -log(t) in log size, so a query reads only the bands that can match.
    """

    def __init__(self, threshold: float, texts: Iterable[str] = ()) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._band_width = max(-math.log(threshold), 1e-3)
        self._gram_ids: dict[str, int] = {}
        self._postings: dict[tuple[int, int], list[int]] = {}
        self._exact: set[str] = set()
        # Gram ids of all texts back to back (text i: flat[starts[i] : starts[i] + sizes[i]]), in
        # growable numpy buffers: compact for big buffers and gathered in one call per query.
        self._flat = np.zeros(1024, dtype=np.int32)
        self._starts = np.zeros(64, dtype=np.int64)
        self._sizes = np.zeros(64, dtype=np.int64)
        self._count = 0
        self._used = 0
        self._mask = np.zeros(1024, dtype=bool)  # scratch: marks the query's grams during _verify
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, text: object) -> bool:
        """Exact duplicate: same normalized text as an added one."""
        return isinstance(text, str) and normalize_text(text) in self._exact

    def _prefix_len(self, size: int) -> int:
        # The epsilon keeps float error in t·size from shortening the prefix (which could miss).
        return size - math.ceil(self.threshold * size - 1e-9) + 1

    def _band(self, size: float) -> int:
        return math.floor(math.log(max(size, 1.0)) / self._band_width)

    def add(self, text: str) -> None:
        grams = char_ngrams(text)
        vocab = self._gram_ids
        for gram in [g for g in grams if g not in vocab]:
            vocab[gram] = len(vocab)
        ids = sorted(map(vocab.__getitem__, grams), reverse=True)
        index, band = self._count, self._band(len(ids))
        for gid in ids[: self._prefix_len(len(ids))]:
            self._postings.setdefault((gid, band), []).append(index)
        self._flat = _grown(self._flat, self._used + len(ids))
        self._starts, self._sizes = _grown(self._starts, index + 1), _grown(self._sizes, index + 1)
        self._flat[self._used : self._used + len(ids)] = ids
        self._starts[index], self._sizes[index] = self._used, len(ids)
        self._used += len(ids)
        self._count += 1
        self._exact.add(normalize_text(text))

    def near_duplicates(self, text: str, first_only: bool = False) -> list[int]:
        """Insertion indices of added texts with Jaccard >= threshold to `text` (ascending)."""
        grams = char_ngrams(text)
        known = sorted((self._gram_ids[g] for g in grams if g in self._gram_ids), reverse=True)
        size = len(grams)
        probe = self._prefix_len(size) - (size - len(known))  # unseen grams fill the front of the prefix
        if probe <= 0 or not known:
            return []
        # Slack on both ends so float rounding of the bounds can only widen the band range.
        bands = range(
            self._band(self.threshold * size * (1 - 1e-9)), self._band(size / self.threshold * (1 + 1e-9)) + 1
        )
        candidates = sorted({i for gid in known[:probe] for b in bands for i in self._postings.get((gid, b), ())})
        if not candidates:
            return []
        found = self._verify(np.array(known, dtype=np.int64), size, np.array(candidates, dtype=np.int64))
        return found[:1] if first_only else found

    def _verify(self, query: np.ndarray, size: int, candidates: np.ndarray) -> list[int]:
        """Exact Jaccard of the query against all candidates at once (one gather + segment sums)."""
        self._mask = _grown(self._mask, len(self._gram_ids))
        sizes = self._sizes[candidates]  # all > 0: empty texts have no postings
        offsets = np.cumsum(sizes) - sizes
        positions = np.repeat(self._starts[candidates] - offsets, sizes) + np.arange(int(sizes.sum()))
        self._mask[query] = True
        try:
            inter = np.add.reduceat(self._mask[self._flat[positions]], offsets, dtype=np.int64)
        finally:
            self._mask[query] = False  # the mask is reused: allocating one per query costs more than the check
        hits = inter / (size + sizes - inter) >= self.threshold
        return candidates[hits].tolist()

    def is_near_duplicate(self, text: str) -> bool:
        return bool(self.near_duplicates(text, first_only=True))


class BufferIndex:
    """The `NearDuplicateIndex` of a prompt buffer whose rows are only ever appended (PromptBuffer):
    `sync` indexes the rows added since its last call. The answers depend only on the set of texts
    indexed, so an index grown over many iterations answers as one built at once from the same
    buffer (a resumed run builds it once, from the version it continues from)."""

    def __init__(self, threshold: float) -> None:
        self.index = NearDuplicateIndex(threshold)
        self._rows = 0  # buffer rows indexed

    def sync(self, buffer: PromptBuffer) -> NearDuplicateIndex:
        """Index the buffer rows added since the last call; returns the index."""
        for text in buffer.texts(self._rows):
            self.index.add(text)
        self._rows = len(buffer)
        return self.index


def _grown(array: np.ndarray, needed: int) -> np.ndarray:
    """`array`, or a copy at least twice as long when it holds fewer than `needed` items."""
    if needed <= len(array):
        return array
    bigger = np.zeros(max(needed, 2 * len(array)), dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger
