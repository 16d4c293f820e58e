"""Held-out evaluation: an iteration's policy against the initial policy under the run's scorer.

One engine serves both policies (weights are swapped from the committed folders), the run's reward
scorer rates every response, and a win counts 1, a tie 0.5. Results go to <run>/eval/, outside the
committed iterations, so evaluating never changes what a run committed.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from actors.cluster import init_ray, workdir_for
from actors.engine import GenerationEngine, SamplingSpec
from actors.pool import EnginePool
from eva.buffer import load_seed_prompts
from eva.checkpoint import RunDir, atomic_write_json, check_writable
from eva.config import RunConfig
from eva.evaluation import eval_responses_table, task_accuracy, win_rate
from eva.seeding import derive_seed
from eva.tasks import Problem, get_family, heldout_set, read_problems
from eva.tasks.prompts import grade, prompt_of


def evaluate(
    cfg: RunConfig, run: RunDir, iteration: int, prompts_path: str, column: str = "prompt", limit: int | None = None
) -> dict:
    """Win rate of pi_iteration vs pi_0 and mean rewards on held-out prompts; written to eval/ (the
    numbers as JSON, each prompt's two responses and rewards as Parquet beside it)."""
    from actors.reward import RewardActor

    evaluated, initial = run.iteration(iteration), run.iteration(0)
    for folder in (evaluated, initial):
        if not folder.has_policy():
            raise FileNotFoundError(
                f"{folder.policy} has no policy (pruned by checkpoint.keep_policies, or not committed)"
            )
    policy_dir, initial_dir = evaluated.policy, initial.policy
    prompts = load_seed_prompts(prompts_path, column, limit)
    check_writable(run.root)  # the result goes to <run>/eval/: fail before the engines start
    init_ray(cfg)
    work = workdir_for(cfg)
    engine: Any = (
        ray.remote(GenerationEngine)
        .options(num_cpus=cfg.ray.engine.num_cpus, num_gpus=cfg.ray.engine.num_gpus)
        .remote(str(initial_dir), cfg.model, work, cfg.run.seed)
    )
    reward: Any = (
        ray.remote(RewardActor)
        .options(num_cpus=cfg.ray.reward.num_cpus, num_gpus=cfg.ray.reward.num_gpus)
        .remote(cfg.reward, str(initial_dir), work, trust_remote_code=cfg.model.trust_remote_code)
    )
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
    base_rewards, new_rewards = scores[: len(texts)], scores[len(texts) :]
    table = eval_responses_table(keys, texts, base, new, base_rewards, new_rewards)
    responses = run.write_eval_responses(iteration, table)
    result = {
        "iteration": iteration,
        "prompts": prompts_path,
        **win_rate(new_rewards, base_rewards),
        "seconds": round(time.perf_counter() - t0, 2),
        "responses": run.relative(responses),
    }
    out = run.eval_path(iteration)
    atomic_write_json(out, result)
    run.log_event("eval", **result)
    result["path"] = str(out)
    return result


def heldout_problems(cfg: RunConfig, problems_path: str | None = None, limit: int | None = None) -> list[Problem]:
    """The held-out problems of a task run: a JSONL file of problems (any problem of the family, in
    eva.tasks.problem_sets' format), else the run's held-out set: `task.eval_per_level` problems of
    every `task.eval_levels` level (all there are, where a level has fewer) from the held-out side of
    the split, which no training set, seed or mutation ever reaches."""
    task = cfg.task
    if task.family is None:
        raise ValueError("this run has no task family (task.family): evaluate it on held-out prompts with --prompts")
    family = get_family(task.family)
    if problems_path is not None:
        problems = read_problems(problems_path)
    else:
        problems = heldout_set(family, task.eval_levels or task.levels, task.eval_per_level, task.seed, strict=False)
    return problems[:limit] if limit is not None else problems


def evaluate_task(
    cfg: RunConfig, run: RunDir, iterations: list[int], problems_path: str | None = None, limit: int | None = None
) -> dict:
    """Greedy exact-match accuracy per difficulty level of each iteration's policy on held-out problems;
    one engine, weights swapped between iterations. Each iteration's result goes to eval/ (with
    iteration 0's beside it when 0 is among `iterations`); returns {iteration: result}."""
    folders = {t: run.iteration(t) for t in iterations}
    for folder in folders.values():
        if not folder.has_policy():
            raise FileNotFoundError(
                f"{folder.policy} has no policy (pruned by checkpoint.keep_policies, or not committed)"
            )
    problems = heldout_problems(cfg, problems_path, limit)
    if not problems:
        raise ValueError("no held-out problems to evaluate")
    check_writable(run.root)  # results go to <run>/eval/: fail before the engine starts
    init_ray(cfg)
    first = str(folders[iterations[0]].policy)
    engine: Any = (
        ray.remote(GenerationEngine)
        .options(num_cpus=cfg.ray.engine.num_cpus, num_gpus=cfg.ray.engine.num_gpus)
        .remote(first, cfg.model, workdir_for(cfg), cfg.run.seed)
    )
    pool = EnginePool([engine], cfg.ray.timeout_s)
    prompts = [prompt_of(p) for p in problems]
    levels = [p.level for p in problems]
    spec = SamplingSpec(1, 0.0, 1.0, cfg.solver.max_new_tokens)  # greedy
    keys, texts, seeds = [p.id for p in prompts], [p.text for p in prompts], [0] * len(prompts)
    results: dict[int, dict] = {}
    try:
        for i, t in enumerate(iterations):
            t0 = time.perf_counter()
            if i > 0:
                pool.load_weights_from_path(str(folders[t].policy))
            responses = [g.responses[0] for g in pool.generate(keys, texts, seeds, spec).generations]
            source = problems_path or f"held-out {cfg.task.family} (task.seed {cfg.task.seed})"
            grades = grade(prompts, responses)
            results[t] = {
                "iteration": t,
                "kind": "task",
                "problems": source,
                "levels": task_accuracy(levels, grades),
                "seconds": round(time.perf_counter() - t0, 2),
                "grades": grades,
                "responses": responses,
            }
    finally:
        ray.kill(engine)
    for t, result in results.items():
        if 0 in results and t != 0:
            result["initial"] = results[0]["levels"]
        atomic_write_json(run.eval_path(t), result)
        run.log_event("eval", iteration=t, task=cfg.task.family, accuracy=result["levels"]["all"]["accuracy"])
        result["path"] = str(run.eval_path(t))
    return results
