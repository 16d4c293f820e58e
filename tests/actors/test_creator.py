"""The creator as a real Ray actor beside real engine, reward and trainer actors (tiny model):
estimate through the policy's engines and the reward actor, evolve with its own creator model."""

from __future__ import annotations

import math

import pytest

from actors.cluster import start_actors
from actors.models import TINY_MODEL, resolve_model_path
from eva.buffer import load_seed_prompts
from eva.config import load_config

pytestmark = pytest.mark.ray


def test_creator_with_its_own_model_estimates_and_evolves_with_lineage(ray_session, tmp_path):
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
        seeds = load_seed_prompts("builtin:seed", limit=8)
        scored, stats = ray.get(actors.creator.estimate.remote(seeds, 1), timeout=600)
        assert [s.prompt.id for s in scored] == [p.id for p in seeds]
        assert all(len(s.responses) == len(s.rewards) == cfg.solver.n_responses for s in scored)
        assert all(math.isfinite(r) for s in scored for r in s.rewards) and stats.new_tokens > 0 and stats.retries == []
        assert len({r for s in scored for r in s.rewards}) > len(seeds)  # continuous scores, not a few levels

        parents = seeds[:4]
        children, report, stats = ray.get(actors.creator.evolve.remote(parents, [p.text for p in seeds], 1), timeout=600)
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
