"""The creator: estimate how informative each prompt is for the current policy, sample, evolve.

A Ray actor that talks to the policy's engines and the reward actor through their handles; the logic
(metrics, sampling, meta-prompts, parsing, filters) is `eva.*`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray

from actors.engine import SamplingSpec
from actors.pool import LOST, EnginePool, wait_until_available
from eva.config import CreatorSection, SolverSection
from eva.evolve import build_evolve_requests, filter_evolved, parse_evolved
from eva.metrics import informativeness_batch
from eva.sampling import sample_prompts, sample_size
from eva.seeding import derive_seed
from eva.types import FilterReport, Prompt, ScoredPrompt


@dataclass
class RolloutStats:
    """Timings and counts of one rollout (generate + score) call, for metrics.json."""

    generate_seconds: float = 0.0
    score_seconds: float = 0.0
    new_tokens: int = 0
    nonfinite_rewards: int = 0
    retries: list[str] = field(default_factory=list)  # what had to be resent (generation or scoring), a line each
    extra: dict[str, float] = field(default_factory=dict)


log = logging.getLogger("eva.creator")


def score_with_retries(reward, prompts: list[str], responses: list[str], retries: int, timeout_s: float) -> tuple[list[float], list[str]]:
    """The reward actor's scores, asking again (up to `retries` times) if the actor died: Ray
    restarts it (`ray.reward.max_restarts`) with the same frozen models, so the scores are the same."""
    lines: list[str] = []
    for attempt in range(retries + 1):
        try:
            return ray.get(reward.score.remote(prompts, responses), timeout=timeout_s), lines
        except LOST as e:
            if attempt == retries or not wait_until_available(reward, timeout_s):
                raise
            lines.append(f"reward actor failed on a batch of {len(prompts)} responses ({type(e).__name__}); retry {attempt + 1}/{retries}")
            log.warning(lines[-1])
    raise AssertionError("unreachable")


def rollout(
    engines: EnginePool,
    reward,  # ray ActorHandle of RewardActor
    prompts: list[Prompt],
    spec: SamplingSpec,
    seed: int,
    stage: str,
    iteration: int,
    timeout_s: float,
) -> tuple[list[ScoredPrompt], RolloutStats]:
    """Sample `spec.n` responses per prompt from the policy and score every one of them.

    Seeds are keyed by (run seed, stage, iteration, prompt id): reruns and resumes reproduce.
    `info` of the returned records is left None; the caller computes it over the whole set.
    """
    seeds = [derive_seed(seed, stage, iteration, p.id) for p in prompts]
    batch = engines.generate([p.id for p in prompts], [p.text for p in prompts], seeds, spec)
    flat_prompts = [p.text for p, g in zip(prompts, batch.generations) for _ in g.responses]
    flat_responses = [r for g in batch.generations for r in g.responses]
    t0 = time.perf_counter()
    rewards, retried = score_with_retries(reward, flat_prompts, flat_responses, engines.retries, timeout_s) if flat_responses else ([], [])
    score_seconds = time.perf_counter() - t0
    scored, pos = [], 0
    for p, g in zip(prompts, batch.generations):
        k = len(g.responses)
        scored.append(ScoredPrompt(prompt=p, responses=g.responses, rewards=tuple(float(r) for r in rewards[pos : pos + k])))
        pos += k
    stats = RolloutStats(
        generate_seconds=batch.seconds,
        score_seconds=score_seconds,
        new_tokens=batch.new_tokens,
        nonfinite_rewards=sum(s.num_nonfinite for s in scored),
        retries=[*batch.retries, *retried],
    )
    return scored, stats


def with_informativeness(scored: list[ScoredPrompt], metric: str) -> list[ScoredPrompt]:
    """Attach `info` to every record, computed over the whole set (mean_inv needs the set's range)."""
    infos = informativeness_batch([s.rewards for s in scored], metric)
    return [ScoredPrompt(s.prompt, s.responses, s.rewards, info) for s, info in zip(scored, infos)]


class Creator:
    """estimate -> sample -> evolve. `creator_engines` is the creator LLM; None: the policy's engines."""

    def __init__(self, policy_engines: EnginePool, creator_engines: EnginePool | None, reward, creator: CreatorSection, solver: SolverSection, seed: int, timeout_s: float) -> None:
        self.policy_engines = policy_engines
        self.creator_engines = creator_engines or policy_engines  # one pool object: one weights label
        self.reward = reward
        self.cfg = creator
        self.solver = solver
        self.seed = seed
        self.timeout_s = timeout_s

    def ready(self) -> bool:
        return True

    def adopt_policy_weights(self, weights: list, version: str) -> None:
        """The driver pushed new policy weights to the engines (`weights`: [ObjectRef] or [path],
        boxed so Ray passes the reference, not the tensors): generate only against those from now."""
        self.policy_engines.adopt(weights[0], version)

    def estimate(self, prompts: list[Prompt], iteration: int) -> tuple[list[ScoredPrompt], RolloutStats]:
        """Rewards of n policy responses per prompt (no `info` yet: see `with_informativeness`)."""
        spec = SamplingSpec(self.solver.n_responses, self.solver.temperature, self.solver.top_p, self.solver.max_new_tokens)
        return rollout(self.policy_engines, self.reward, prompts, spec, self.seed, "estimate", iteration, self.timeout_s)

    def sample(self, scored: list[ScoredPrompt], iteration: int) -> list[Prompt]:
        """k = ceil(sample_frac * |X|) prompts by informativeness (`creator.sample_method`)."""
        k = sample_size(len(scored), self.cfg.sample_frac)
        picks = sample_prompts([s.info for s in scored], k, self.cfg.sample_method, derive_seed(self.seed, "sample", iteration))
        return [scored[i].prompt for i in picks]

    def evolve(self, parents: list[Prompt], existing_texts: list[str], iteration: int) -> tuple[list[Prompt], FilterReport, RolloutStats]:
        """`num_variants` rewrites per parent from the creator LLM, parsed and filtered, with lineage."""
        requests = build_evolve_requests(parents, self.cfg.num_variants, self.cfg.operators, derive_seed(self.seed, "evolve", iteration))
        spec = SamplingSpec(1, self.cfg.temperature, self.cfg.top_p, self.cfg.max_new_tokens)
        keys = [f"{r.parent.id}:{i}" for i, r in enumerate(requests)]
        batch = self.creator_engines.generate(keys, [r.meta_prompt for r in requests], [r.seed for r in requests], spec)
        candidates = [(r, parse_evolved(g.responses[0])) for r, g in zip(requests, batch.generations)]
        children, report = filter_evolved(
            candidates,
            existing_texts,
            min_chars=self.cfg.min_prompt_chars,
            max_chars=self.cfg.max_prompt_chars,
            near_dup_threshold=self.cfg.near_duplicate_threshold,
            iteration=iteration,
        )
        return children, report, RolloutStats(generate_seconds=batch.seconds, new_tokens=batch.new_tokens, retries=list(batch.retries))
