"""Engine replicas as one: split a generate call across replicas, gather in order, sync weights to all.

Per-request seeds make the split invisible: the same prompts give the same responses with 1 or N
replicas (DESIGN.md, "Determinism"). That is also what makes retries safe: a chunk whose engine died
(actor crash, node lost) is sent again, to the next replica, and gives the same responses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

from actors.engine import GenerationBatch, SamplingSpec


log = logging.getLogger("eva.pool")

# Errors that mean the engine (or the object holding its answer) is gone, not that the request was bad.
LOST = (RayActorError, ActorUnavailableError, ObjectLostError)


@dataclass
class _Chunk:
    """One replica's share of a generate call: enough to send it again elsewhere."""

    engine: int
    args: tuple
    ref: object  # ObjectRef of its GenerationBatch


@dataclass
class EnginePool:
    """Handles of GenerationEngine actors that serve one model (the policy, or a creator model)."""

    engines: list  # ray ActorHandles of GenerationEngine
    timeout_s: float
    retries: int = 2  # resubmissions of a failed chunk before the call fails
    _weights: object = field(default=None, repr=False)  # last weights pushed (ObjectRef or path), for restarted engines

    def generate_async(self, keys: list[str], texts: list[str], seeds: list[int], spec: SamplingSpec, chat: bool = True) -> list:
        """Start generation on all replicas (contiguous, near-equal chunks); returns handles in order for gather()."""
        n = len(self.engines)
        bounds = [round(i * len(texts) / n) for i in range(n + 1)]
        return [
            _Chunk(i, (keys[a:b], texts[a:b], seeds[a:b], spec, chat), self.engines[i].generate.remote(keys[a:b], texts[a:b], seeds[a:b], spec, chat))
            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))
            if b > a
        ]

    def gather(self, chunks: list) -> GenerationBatch:
        batches = [self._result(c) for c in chunks]
        return GenerationBatch(
            generations=tuple(g for b in batches for g in b.generations),
            seconds=max((b.seconds for b in batches), default=0.0),
            prompt_tokens=sum(b.prompt_tokens for b in batches),
            new_tokens=sum(b.new_tokens for b in batches),
        )

    def _result(self, chunk: _Chunk) -> GenerationBatch:
        """The chunk's batch; if its engine died, resend it to the next replicas up to `retries` times."""
        engine, ref = chunk.engine, chunk.ref
        for attempt in range(self.retries + 1):
            try:
                return ray.get(ref, timeout=self.timeout_s)
            except LOST as e:
                if attempt == self.retries:
                    raise
                engine = (engine + 1) % len(self.engines)
                log.warning("engine replica %d failed on a batch of %d prompts (%s); retry %d/%d on replica %d",
                            chunk.engine, len(chunk.args[0]), type(e).__name__, attempt + 1, self.retries, engine)
                ref = self._resubmit(engine, chunk.args)
        raise AssertionError("unreachable")

    def _resubmit(self, engine: int, args: tuple):
        """Send a chunk to `engine`, first giving it the current weights (a restarted actor has its start weights)."""
        handle = self.engines[engine]
        if self._weights is not None:
            try:
                push = handle.update_weights if isinstance(self._weights, ray.ObjectRef) else handle.load_weights_from_path
                ray.get(push.remote(self._weights), timeout=self.timeout_s)
            except LOST as e:  # let the generate call below fail (and count) on its own
                log.warning("engine replica %d: weight re-sync before retry failed (%s)", engine, type(e).__name__)
        return handle.generate.remote(*args)

    def generate(self, keys: list[str], texts: list[str], seeds: list[int], spec: SamplingSpec, chat: bool = True) -> GenerationBatch:
        return self.gather(self.generate_async(keys, texts, seeds, spec, chat))

    def update_weights(self, weights_ref) -> float:
        """Push one state dict (an ObjectRef, put once) into every replica; returns the slowest time."""
        self._weights = weights_ref
        return max(ray.get([e.update_weights.remote(weights_ref) for e in self.engines], timeout=self.timeout_s))

    def load_weights_from_path(self, path: str) -> float:
        self._weights = path
        return max(ray.get([e.load_weights_from_path.remote(path) for e in self.engines], timeout=self.timeout_s))
