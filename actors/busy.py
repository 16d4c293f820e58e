"""Wall-clock spans of an actor's real work (vLLM generate, reward scoring, a training round).

Each heavy actor keeps a `BusyLog`; the loop drains them once per iteration and reports how much of
the iteration's wall time some actor spent computing, and how much went elsewhere (Ray calls,
serialization, checkpoint writes, weight sync): the orchestration overhead. `time.time()` because
the spans come from different processes (and nodes) and are compared on one clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

Span = tuple[str, float, float]  # (kind, start, end), seconds since the epoch


class BusyLog:
    """Spans recorded by `with log.span(kind): ...`, handed out (and forgotten) by `drain()`."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._spans: deque[Span] = deque(maxlen=maxlen)  # bounded: an undrained log cannot grow forever

    @contextmanager
    def span(self, kind: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self._spans.append((kind, start, time.time()))

    def drain(self) -> list[Span]:
        spans = list(self._spans)
        self._spans.clear()
        return spans
