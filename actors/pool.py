"""Engine replicas as one: split a generate call across replicas, gather in order, sync weights to all.

Per-request seeds make the split invisible: the same prompts give the same responses with 1 or N
replicas (DESIGN.md, "Determinism").
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from actors.engine import GenerationBatch, SamplingSpec


@dataclass
class EnginePool:
    """Handles of GenerationEngine actors that serve one model (the policy, or a creator model)."""

    engines: list  # ray ActorHandles of GenerationEngine
    timeout_s: float

    def generate_async(self, keys: list[str], texts: list[str], seeds: list[int], spec: SamplingSpec, chat: bool = True) -> list:
        """Start generation on all replicas (contiguous, near-equal chunks); returns ObjectRefs in order."""
        n = len(self.engines)
        bounds = [round(i * len(texts) / n) for i in range(n + 1)]
        return [
            engine.generate.remote(keys[a:b], texts[a:b], seeds[a:b], spec, chat)
            for engine, a, b in zip(self.engines, bounds, bounds[1:])
            if b > a
        ]

    def gather(self, refs: list) -> GenerationBatch:
        batches: list[GenerationBatch] = ray.get(refs, timeout=self.timeout_s)
        return GenerationBatch(
            generations=tuple(g for b in batches for g in b.generations),
            seconds=max((b.seconds for b in batches), default=0.0),
            prompt_tokens=sum(b.prompt_tokens for b in batches),
            new_tokens=sum(b.new_tokens for b in batches),
        )

    def generate(self, keys: list[str], texts: list[str], seeds: list[int], spec: SamplingSpec, chat: bool = True) -> GenerationBatch:
        return self.gather(self.generate_async(keys, texts, seeds, spec, chat))

    def update_weights(self, weights_ref) -> float:
        """Push one state dict (an ObjectRef, put once) into every replica; returns the slowest time."""
        return max(ray.get([e.update_weights.remote(weights_ref) for e in self.engines], timeout=self.timeout_s))

    def load_weights_from_path(self, path: str) -> float:
        return max(ray.get([e.load_weights_from_path.remote(path) for e in self.engines], timeout=self.timeout_s))
