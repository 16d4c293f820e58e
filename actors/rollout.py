"""Rollouts: n sampled responses per prompt from the policy's engines, every one scored by the reward
actor. The same operation serves the creator's estimate (on X_{t-1}) and the solver's solve (on
X'_t); the loop runs it in a driver thread per chunk so one chunk generates while another is scored.
"""

from __future__ import annotations

import logging
import time

import ray

from actors.engine import SamplingSpec
from actors.pool import LOST, EnginePool, wait_until_available
from eva.results import RolloutStats
from eva.seeding import derive_seed
from eva.tasks.prompts import grade as task_grade
from eva.types import Prompt, ScoredPrompt

log = logging.getLogger("eva.rollout")


def score_with_retries(
    reward, prompts: list[str], responses: list[str], retries: int, timeout_s: float, restart_timeout_s: float
) -> tuple[list[float], list[str]]:
    """The reward actor's scores, asking again (up to `retries` times) if the actor died: Ray
    restarts it (`ray.reward.max_restarts`; waited for up to `restart_timeout_s`) with the same
    frozen models, so the scores are the same."""
    lines: list[str] = []
    for attempt in range(retries + 1):
        try:
            return ray.get(reward.score.remote(prompts, responses), timeout=timeout_s), lines
        except LOST as e:
            if attempt == retries or not wait_until_available(reward, restart_timeout_s):
                raise
            lines.append(
                f"reward actor failed on a batch of {len(prompts)} responses ({type(e).__name__}); retry "
                f"{attempt + 1}/{retries}"
            )
            log.warning(lines[-1])
    raise AssertionError("unreachable")


def rollout(
    engines: EnginePool,
    reward,  # ray ActorHandle of RewardActor; None: graded by each prompt's task family (eva.tasks)
    prompts: list[Prompt],
    spec: SamplingSpec,
    seed: int,
    stage: str,
    iteration: int,
    timeout_s: float,
) -> tuple[list[ScoredPrompt], RolloutStats]:
    """Sample `spec.n` responses per prompt from the policy and score every one of them.

    Seeds are keyed by (run seed, stage, iteration, prompt id): reruns and resumes reproduce.
    `info` of the returned records is left None; the caller computes it over the whole set
    (`eva.metrics.with_informativeness`).
    """
    seeds = [derive_seed(seed, stage, iteration, p.id) for p in prompts]
    batch = engines.generate([p.id for p in prompts], [p.text for p in prompts], seeds, spec)
    flat_prompts = [p for p, g in zip(prompts, batch.generations, strict=True) for _ in g.responses]
    flat_responses = [r for g in batch.generations for r in g.responses]
    t0 = time.perf_counter()
    retried: list[str]
    if reward is None:  # verifiable rewards: pure code, graded here against the prompt's own answer
        rewards, retried = task_grade(flat_prompts, flat_responses), []
    elif flat_responses:
        rewards, retried = score_with_retries(
            reward,
            [p.text for p in flat_prompts],
            flat_responses,
            engines.retries,
            timeout_s,
            engines.restart_timeout_s,
        )
    else:
        rewards, retried = [], []
    score_seconds = time.perf_counter() - t0
    scored, pos = [], 0
    for p, g in zip(prompts, batch.generations, strict=True):
        k = len(g.responses)
        rs = tuple(float(r) for r in rewards[pos : pos + k])
        scored.append(ScoredPrompt(prompt=p, responses=g.responses, rewards=rs, tokens=g.tokens))
        pos += k
    stats = RolloutStats(
        generate_seconds=batch.seconds,
        score_seconds=score_seconds,
        new_tokens=batch.new_tokens,
        nonfinite_rewards=sum(s.num_nonfinite for s in scored),
        retries=(*batch.retries, *retried),
        longest_tokens=batch.longest,
        truncated_prompts=batch.truncated,
    )
    return scored, stats
