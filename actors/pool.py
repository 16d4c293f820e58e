"""Engine replicas as one: split a generate call across replicas, gather in order, sync weights to all.

Per-request seeds make the split invisible: the same prompts give the same responses with 1 or N
replicas (DESIGN.md, "Determinism"). That is also what makes retries safe: a chunk whose engine died
(actor crash, node lost) is sent again, to the next replica, and gives the same responses.

Weights carry a label (`version`; the loop labels them policy-<t>, ad-hoc pools may leave it None
and skip the check). Every generate call names the label it expects, so a replica that
Ray restarted (`max_restarts`: it comes back with its start weights) refuses instead of answering
with the wrong policy; the pool then pushes it the current weights and asks again. A pool is a
plain value owned by the driver; the rollout threads read it (generate changes nothing in it).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

from actors.engine import GenerationBatch, SamplingSpec, StaleWeightsError

log = logging.getLogger("eva.pool")

# Errors that mean the engine (or the object holding its answer) is gone, not that the request was bad.
LOST = (RayActorError, ActorUnavailableError, ObjectLostError)


def wait_until_available(handle, timeout_s: float) -> bool:
    """Wait (bounded) for an actor that is restarting (`max_restarts`) or briefly unreachable: Ray
    fails calls to it fast with ActorUnavailableError meanwhile. False if it died for good or the
    time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(handle.__ray_call__.remote(lambda self: True), timeout=max(1.0, deadline - time.monotonic()))
            return True
        except ActorUnavailableError:
            time.sleep(1.0)
        except (RayActorError, ray.exceptions.GetTimeoutError):
            return False
    return False


@dataclass
class _Chunk:
    """One replica's share of a generate call: enough to send it again elsewhere."""

    engine: int
    args: tuple
    ref: Any  # ObjectRef of its GenerationBatch


@dataclass(frozen=True)
class TrainerWeights:
    """Weights the trainer pushed over a collective (`EnginePool.send_from`): the trainer that holds them
    (the policy of `iteration`; None: whatever it holds, online), for a replica that must be given them again."""

    trainer: Any
    iteration: int | None


@dataclass
class EnginePool:
    """Handles of GenerationEngine actors that serve one model (the policy, or a creator model)."""

    engines: list  # ray ActorHandles of GenerationEngine
    timeout_s: float
    retries: int = 2  # resubmissions of a failed chunk before the call fails
    version: str | None = None  # label of the weights every replica must serve (None: unchecked)
    restart_timeout_s: float = 600.0  # longest wait for a replica Ray restarts before using the next one
    # the weights of `version` (ObjectRef, path or TrainerWeights); None: the start weights
    _weights: object = field(default=None, repr=False)

    def generate_async(
        self, keys: list[str], texts: list[str], seeds: list[int], spec: SamplingSpec, chat: bool = True
    ) -> list:
        """Start generation on all replicas (contiguous, near-equal chunks); returns handles in order for gather()."""
        n = len(self.engines)
        bounds = [round(i * len(texts) / n) for i in range(n + 1)]
        chunks = []
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
            if b > a:
                args = (keys[a:b], texts[a:b], seeds[a:b], spec, chat)
                chunks.append(_Chunk(i, args, self._submit(i, args)))
        return chunks

    def gather(self, chunks: list) -> GenerationBatch:
        results = [self._result(c) for c in chunks]
        batches = [b for b, _ in results]
        return GenerationBatch(
            generations=tuple(g for b in batches for g in b.generations),
            seconds=max((b.seconds for b in batches), default=0.0),
            prompt_tokens=sum(b.prompt_tokens for b in batches),
            new_tokens=sum(b.new_tokens for b in batches),
            retries=tuple(line for _, lines in results for line in lines),
            longest=max((b.longest for b in batches), default=0),
            truncated=sum(b.truncated for b in batches),
        )

    def _submit(self, engine: int, args: tuple):
        return self.engines[engine].generate.remote(*args, expect_weights=self.version)

    def _result(self, chunk: _Chunk) -> tuple[GenerationBatch, list[str]]:
        """The chunk's batch, and a line per retry it needed: a dead engine's chunk goes to the next
        replica, a stale one's (restarted with its start weights) gets the current weights first."""
        engine, ref, retried = chunk.engine, chunk.ref, list[str]()
        for attempt in range(self.retries + 1):
            try:
                return ray.get(ref, timeout=self.timeout_s), retried
            except (StaleWeightsError, *LOST) as e:
                if attempt == self.retries:
                    raise
                # crashed (or ended itself after a fatal engine error, actors.engine.exit_on_fatal): Ray
                # restarts it with its start weights when it has restarts left; wait for that, bounded,
                # else (dead for good, its node lost) the next replica takes the chunk
                if not isinstance(e, StaleWeightsError) and not wait_until_available(
                    self.engines[engine], self.restart_timeout_s
                ):
                    engine = (engine + 1) % len(self.engines)
                line = (
                    f"engine replica {chunk.engine} failed on a batch of {len(chunk.args[0])} prompts "
                    f"({type(e).__name__}); "
                    f"retry {attempt + 1}/{self.retries} on replica {engine} with weights {self.version!r}"
                )
                log.warning(line)
                retried.append(line)
                self._push(engine)
                ref = self._submit(engine, chunk.args)
        raise AssertionError("unreachable")

    def _push(self, engine: int) -> None:
        """Give one replica the current weights (before resending it a chunk)."""
        if self._weights is None:  # the start weights: a restarted replica has them already
            return
        handle, weights = self.engines[engine], self._weights
        if isinstance(weights, TrainerWeights):  # pushed over a collective: this replica left the group
            # when it restarted, so it gets the same weights through the object store (the next push
            # forms a new group with every replica)
            push, weights = handle.update_weights, weights.trainer.state_dict.remote(weights.iteration)
        elif isinstance(weights, ray.ObjectRef):
            push = handle.update_weights
        else:
            push = handle.load_weights_from_path
        try:
            ray.get(push.remote(weights, self.version), timeout=self.timeout_s)
        except LOST as e:  # let the generate call that follows fail (and count) on its own
            log.warning("engine replica %d: weight re-sync before retry failed (%s)", engine, type(e).__name__)

    def generate(
        self, keys: list[str], texts: list[str], seeds: list[int], spec: SamplingSpec, chat: bool = True
    ) -> GenerationBatch:
        return self.gather(self.generate_async(keys, texts, seeds, spec, chat))

    def update_weights(self, weights_ref, version: str | None = None) -> float:
        """Push one state dict (an ObjectRef, put once) into every replica as `version` (default: a
        fresh label); returns the slowest replica's seconds."""
        self.adopt(weights_ref, version or uuid.uuid4().hex[:12])
        return max(
            ray.get([e.update_weights.remote(weights_ref, self.version) for e in self.engines], timeout=self.timeout_s)
        )

    def send_from(
        self, trainer, backend: str, ranks_per_engine: int, iteration: int | None, version: str | None = None
    ) -> float:
        """The trainer pushes its policy to every replica over a collective (ray.weight_sync nccl, ipc or
        gloo: PolicyTrainer.send_weights), as `version` (default: a fresh label); returns its seconds."""
        self.adopt(TrainerWeights(trainer, iteration), version or uuid.uuid4().hex[:12])
        return float(
            ray.get(
                trainer.send_weights.remote(
                    self.engines, ranks_per_engine, backend, self.version, iteration, self.timeout_s
                ),
                timeout=self.timeout_s,
            )
        )

    def load_weights_from_path(self, path: str, version: str | None = None) -> float:
        """Every replica reloads a saved policy folder, as `version` (default: a fresh label)."""
        self.adopt(path, version or uuid.uuid4().hex[:12])
        return max(
            ray.get([e.load_weights_from_path.remote(path, self.version) for e in self.engines], timeout=self.timeout_s)
        )

    def sleep(self, keep_weights: bool = False) -> float:
        """Every replica gives its memory to the trainer (GenerationEngine.sleep); the slowest one's seconds."""
        return max(ray.get(self.sleep_async(keep_weights), timeout=self.timeout_s))

    def sleep_async(self, keep_weights: bool = False) -> list:
        """`sleep` started on every replica: their ObjectRefs (seconds each), to wait on with other actors'."""
        return [e.sleep.remote(keep_weights) for e in self.engines]

    def wake_up(self, path: str | None = None, version: str | None = None) -> float:
        """Every replica comes back (GenerationEngine.wake_up), serving the policy folder `path` as
        `version` when given; the slowest one's seconds."""
        return max(ray.get(self.wake_up_async(path, version), timeout=self.timeout_s))

    def wake_up_async(self, path: str | None = None, version: str | None = None) -> list:
        """`wake_up` started on every replica (the pool adopts `path`: a replica restarted later reloads
        it): their ObjectRefs."""
        if path is not None:
            self.adopt(path, version or uuid.uuid4().hex[:12])
        return [e.wake_up.remote(path, self.version if path is not None else None) for e in self.engines]

    def wake_weights(self) -> float:
        """Every replica's weights back in GPU memory for a push, the rest still asleep
        (GenerationEngine.wake_weights); the slowest one's seconds."""
        return max(ray.get([e.wake_weights.remote() for e in self.engines], timeout=self.timeout_s))

    def adopt(self, weights, version: str) -> None:
        """Record weights another copy of this pool pushed already (ObjectRef or path, and its label)."""
        self._weights, self.version = weights, version
