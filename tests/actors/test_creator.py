"""Estimate and evolve against real engine, reward and trainer actors (tiny model): the rollout that
estimate and solve share, through the policy's engines and the reward actor, and evolve with the
creator model's own engine."""

from __future__ import annotations

import math

import pytest

from actors.cluster import start_actors
from actors.creator import evolve_prompts
from actors.engine import SamplingSpec
from actors.models import TINY_MODEL, resolve_model_path
from actors.rollout import rollout
from eva.buffer import load_seed_prompts
from eva.config import load_config

pytestmark = pytest.mark.ray


def test_rollout_and_evolve_with_the_creators_own_model_keep_lineage(ray_session, tmp_path):
    ray = ray_session
    cfg = load_config(None, [
        "creator.model=builtin:tiny",  # a builtin name: resolved offline, a separate engine
        "creator.num_variants=4",
        "ray.creator.num_cpus=0.25", "ray.trainer.num_cpus=0.25",  # five actors on two CPUs
        f"run.dir={tmp_path / 'run'}",
    ], preset="tiny")
    tiny = resolve_model_path(TINY_MODEL)
    actors = start_actors(cfg, tiny, tiny)
    try:
        assert actors.creator_engines is not actors.policy and len(actors.nodes["creator_engine"]) == 1
        assert set(actors.nodes) == {"engine", "creator_engine", "reward", "trainer"}  # no creator actor: evolve is a function
        seeds = load_seed_prompts("builtin:seed", limit=8)
        s = cfg.solver
        spec = SamplingSpec(s.n_responses, s.temperature, s.top_p, s.max_new_tokens)
        task = ray.remote(num_cpus=0)(rollout)
        scored, stats = ray.get(task.remote(actors.policy, actors.reward, seeds, spec, 0, "estimate", 1, 600), timeout=600)
        assert [p.prompt.id for p in scored] == [p.id for p in seeds]
        assert all(len(p.responses) == len(p.rewards) == s.n_responses for p in scored)
        assert all(math.isfinite(r) for p in scored for r in p.rewards) and stats.new_tokens > 0 and stats.retries == ()
        assert len({r for p in scored for r in p.rewards}) > len(seeds)  # continuous scores, not a few levels
        again, _ = rollout(actors.policy, actors.reward, seeds, spec, 0, "estimate", 1, 600)  # in the driver: same seeds, same rollouts
        assert again == scored

        parents = seeds[:4]
        children, report, stats = evolve_prompts(actors.creator_engines, parents, [p.text for p in seeds], cfg.creator, 0, 1)
        assert report.total == len(parents) * 4 and report.kept == len(children) > 0 and stats.new_tokens > 0
        by_id = {p.id: p for p in parents}
        seen = {p.id for p in seeds}  # ids hash the normalized text: equal ids = exact duplicates
        for child in children:
            parent = by_id[child.parent_id]
            assert (child.root_id, child.depth, child.iteration) == (parent.root_id, 1, 1)
            assert child.operator in cfg.creator.operators
            assert cfg.creator.min_prompt_chars <= len(child.text) <= cfg.creator.max_prompt_chars
            assert child.id not in seen  # no duplicate of the buffer or of a sibling
            seen.add(child.id)
    finally:
        actors.shutdown()
