"""Estimate and evolve against real engine, reward and trainer actors (tiny model): the rollout that
estimate and solve share, through the policy's engines and the reward actor, and evolve with the
creator model's own engine. And the check that children are prompts with the real packaged MiniLM."""

from __future__ import annotations

import math

import pytest

from actors.cluster import start_actors
from actors.creator import evolve_prompts, minilm_embed, prompt_check
from actors.engine import SamplingSpec
from actors.models import TINY_MODEL, resolve_model_path
from actors.rollout import rollout
from eva.buffer import load_seed_prompts
from eva.child_filter import PromptCheck, child_reason, prompt_reason
from eva.config import CreatorSection, load_config
from eva.evolve import instruction


@pytest.mark.ray
def test_rollout_and_evolve_with_the_creators_own_model_keep_lineage(ray_session, tmp_path):
    ray = ray_session
    cfg = load_config(
        None,
        [
            "creator.model=builtin:tiny",  # a builtin name: resolved offline, a separate engine
            "creator.num_variants=4",
            "ray.creator.num_cpus=0.25",
            "ray.trainer.num_cpus=0.25",  # five actors on two CPUs
            f"run.dir={tmp_path / 'run'}",
        ],
        preset="tiny",
    )
    tiny = resolve_model_path(TINY_MODEL)
    actors = start_actors(cfg, tiny, tiny)
    try:
        assert actors.creator_engines is not actors.policy and len(actors.nodes["creator_engine"]) == 1
        assert set(actors.nodes) == {
            "engine",
            "creator_engine",
            "reward",
            "trainer",
        }  # no creator actor: evolve is a function
        seeds = load_seed_prompts("builtin:seed", limit=8)
        s = cfg.solver
        spec = SamplingSpec(s.n_responses, s.temperature, s.top_p, s.max_new_tokens)
        task = ray.remote(num_cpus=0)(rollout)
        scored, stats = ray.get(
            task.remote(actors.policy, actors.reward, seeds, spec, 0, "estimate", 1, 600), timeout=600
        )
        assert [p.prompt.id for p in scored] == [p.id for p in seeds]
        assert all(len(p.responses) == len(p.rewards) == s.n_responses for p in scored)
        assert all(math.isfinite(r) for p in scored for r in p.rewards) and stats.new_tokens > 0 and stats.retries == ()
        assert len({r for p in scored for r in p.rewards}) > len(seeds)  # continuous scores, not a few levels
        # in the driver: same seeds, same rollouts
        again, _ = rollout(actors.policy, actors.reward, seeds, spec, 0, "estimate", 1, 600)
        assert again == scored

        parents = seeds[:4]
        children, report, stats = evolve_prompts(
            actors.creator_engines, parents, [p.text for p in seeds], cfg.creator, 0, 1
        )
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


def test_minilm_check_drops_a_paraphrase_of_the_meta_prompt_and_keeps_rewrites():
    check = prompt_check(CreatorSection())  # the defaults: wording cues and the packaged MiniLM
    assert check is not None and check.embed is minilm_embed()
    meta = instruction("constraints")
    parent = "Write a haiku about rain."
    paraphrase = "Make it harder by adding one or two concrete constraints, such as a word limit or a required format."
    rewrite = "Write a haiku about rain on a tin roof at night, and use the word 'silver' exactly once."
    # no wording cue gives the paraphrase away (an instruction, no "prompt"): the similarities do
    assert (
        prompt_reason(paraphrase, parent, PromptCheck(check.max_meta_similarity, check.min_parent_similarity)) is None
    )
    assert child_reason(paraphrase, parent, meta, check) == "meta_paraphrase"
    assert child_reason(rewrite, parent, meta, check) is None
    assert child_reason("Describe the history of the Roman Empire's tax system.", parent, meta, check) == "off_topic"
    # a prompt about writing a reply sits near the instruction ("Reply with only ..."), and so does
    # its rewrite (cosine 0.41 here), but the rewrite is much closer to its parent: kept
    out_of_office = "Write a brief out-of-office reply for a two-week holiday that tells people who to contact instead."
    embed = check.embed
    assert float(embed(out_of_office + " Keep it under 50 words.") @ embed(meta)) >= check.max_meta_similarity
    assert child_reason(out_of_office + " Keep it under 50 words.", out_of_office, meta, check) is None
    vector = embed(parent)
    # cached, unit, shared
    assert vector is embed(parent) and abs(float(vector @ vector) - 1) < 1e-5 and not vector.flags.writeable
    assert (
        prompt_check(CreatorSection(prompt_filter="text")).embed is None
        and prompt_check(CreatorSection(prompt_filter="off")) is None
    )


@pytest.mark.ray
def test_evolve_after_a_creator_replica_restarts_serves_the_current_policy(ray_session, tmp_path):
    """Issue 18, item 9 (the creator is a function over the policy's engine pool): a replica of that
    pool that crashed and that Ray restarted comes back with its start weights; evolve still gets the
    children of the current policy (the pool re-pushes policy-1), the same ones as before the crash."""
    import torch
    from safetensors.torch import load_file

    from actors.engine import GenerationEngine
    from actors.pool import EnginePool
    from eva.config import ModelSection

    ray = ray_session
    tiny = resolve_model_path(TINY_MODEL)
    creator = CreatorSection(num_variants=2, max_new_tokens=32, prompt_filter="off", min_prompt_chars=1)
    model = ModelSection(path=tiny, dtype="float32", max_model_len=512)
    engine = ray.remote(num_cpus=0.5, max_restarts=1)(GenerationEngine).remote(
        tiny, model, str(tmp_path), 0, "policy-0"
    )
    pool = EnginePool([engine], timeout_s=300, retries=2, version="policy-0", restart_timeout_s=300)
    try:
        seeds = load_seed_prompts("builtin:seed", limit=4)
        gen = torch.Generator().manual_seed(3)
        weights = {
            k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in load_file(f"{tiny}/model.safetensors").items()
        }
        start_children, _, _ = evolve_prompts(pool, seeds, [], creator, 0, 1)
        pool.update_weights(ray.put(weights), "policy-1")
        before, _, stats = evolve_prompts(pool, seeds, [], creator, 0, 1)
        assert stats.retries == () and [c.text for c in before] != [c.text for c in start_children]
        pid = ray.get(engine.ready.remote(), timeout=120)["pid"]
        ray.kill(engine, no_restart=False)  # a crash: Ray restarts it with policy-0's weights
        after, _, stats = evolve_prompts(pool, seeds, [], creator, 0, 1)
        assert [c.text for c in after] == [c.text for c in before]  # policy-1's children, not policy-0's
        assert stats.retries and "policy-1" in stats.retries[-1]
        info = ray.get(engine.ready.remote(), timeout=120)
        assert info["pid"] != pid and info["weights_version"] == "policy-1"
    finally:
        ray.kill(engine)
