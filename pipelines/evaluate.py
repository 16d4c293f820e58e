"""Held-out evaluation: an iteration's policy against the initial policy under the run's scorer.

One engine serves both policies (weights are swapped from the committed folders), the run's reward
scorer rates every response, and a win counts 1, a tie 0.5. Results go to <run>/eval/, outside the
committed iterations, so evaluating never changes what a run committed.
"""

from __future__ import annotations

import time

import ray

from actors.cluster import init_ray, workdir_for
from actors.engine import GenerationEngine, SamplingSpec
from actors.pool import EnginePool
from eva.buffer import load_seed_prompts
from eva.checkpoint import RunDir, atomic_write_json, check_writable
from eva.config import RunConfig
from eva.evaluation import win_rate
from eva.seeding import derive_seed


def evaluate(cfg: RunConfig, run: RunDir, iteration: int, prompts_path: str, column: str = "prompt", limit: int | None = None) -> dict:
    """Win rate of pi_iteration vs pi_0 and mean rewards on held-out prompts; written to eval/."""
    from actors.reward import RewardActor

    evaluated, initial = run.iteration(iteration), run.iteration(0)
    for folder in (evaluated, initial):
        if not folder.has_policy():
            raise FileNotFoundError(f"{folder.policy} has no policy (pruned by checkpoint.keep_policies, or not committed)")
    policy_dir, initial_dir = evaluated.policy, initial.policy
    prompts = load_seed_prompts(prompts_path, column, limit)
    check_writable(run.root)  # the result goes to <run>/eval/: fail before the engines start
    init_ray(cfg)
    work = workdir_for(cfg)
    engine = ray.remote(GenerationEngine).options(num_cpus=cfg.ray.engine.num_cpus, num_gpus=cfg.ray.engine.num_gpus).remote(str(initial_dir), cfg.model, work, cfg.run.seed)
    reward = ray.remote(RewardActor).options(num_cpus=cfg.ray.reward.num_cpus, num_gpus=cfg.ray.reward.num_gpus).remote(cfg.reward, str(initial_dir), work, trust_remote_code=cfg.model.trust_remote_code)
    pool = EnginePool([engine], cfg.ray.timeout_s)
    t0 = time.perf_counter()
    try:
        s = cfg.solver
        spec = SamplingSpec(1, s.temperature, s.top_p, s.max_new_tokens)
        keys, texts = [p.id for p in prompts], [p.text for p in prompts]
        seeds = [derive_seed(cfg.run.seed, "eval", p.id) for p in prompts]  # same seeds for both policies
        base = [g.responses[0] for g in pool.generate(keys, texts, seeds, spec).generations]
        pool.load_weights_from_path(str(policy_dir))
        new = [g.responses[0] for g in pool.generate(keys, texts, seeds, spec).generations]
        scores = ray.get(reward.score.remote(texts + texts, base + new), timeout=cfg.ray.timeout_s)
    finally:
        ray.kill(engine)
        ray.kill(reward)
    result = {
        "iteration": iteration,
        "prompts": prompts_path,
        **win_rate(scores[len(texts) :], scores[: len(texts)]),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out = run.eval_path(iteration)
    atomic_write_json(out, result)
    run.log_event("eval", **result)
    result["path"] = str(out)
    return result
