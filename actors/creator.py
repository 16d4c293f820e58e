"""The creator's evolve step: rewrites of the sampled prompts from the creator LLM, parsed and filtered,
with lineage. A plain function over an engine pool (the policy's, or the creator model's own), called
by the loop: the engines are the actors, the rest is `eva.evolve`.

The check that children are prompts (`eva.child_filter`) embeds texts with the packaged MiniLM, in the
calling process (the driver): loaded once, on first use, and only with `creator.prompt_filter: embedding`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from actors.engine import SamplingSpec
from actors.models import MINILM_MODEL, resolve_model_path
from actors.pool import EnginePool
from actors.reward import RelevanceScorer
from eva.child_filter import Embed, PromptCheck
from eva.config import CreatorSection
from eva.dedup import NearDuplicateIndex
from eva.evolve import build_evolve_requests, filter_evolved, parse_evolved
from eva.results import RolloutStats
from eva.seeding import derive_seed
from eva.types import FilterReport, Prompt


@functools.cache
def minilm_embed() -> Embed:
    """The MiniLM embedding of a text (unit norm, numpy), as the relevance reward computes it;
    the model loads on the first call, and texts seen before (parents, instructions) are cached."""
    scorer = RelevanceScorer(resolve_model_path(MINILM_MODEL))

    @functools.lru_cache(maxsize=16384)
    def embed(text: str) -> np.ndarray:
        vector = scorer.embed(text).numpy()
        vector.flags.writeable = False  # shared by every caller through the cache
        return vector

    return embed


def prompt_check(cfg: CreatorSection) -> PromptCheck | None:
    """The check of `cfg.prompt_filter`: None when off; with embeddings only for `embedding`."""
    if cfg.prompt_filter == "off":
        return None
    embed = minilm_embed() if cfg.prompt_filter == "embedding" else None
    return PromptCheck(cfg.max_meta_similarity, cfg.min_parent_similarity, embed)


def evolve_prompts(
    engines: EnginePool,
    parents: list[Prompt],
    existing: NearDuplicateIndex | list[str],
    cfg: CreatorSection,
    seed: int,
    iteration: int,
    round_: int = 0,
    accepted: Sequence[str] = (),
) -> tuple[list[Prompt], FilterReport, RolloutStats]:
    """`cfg.num_variants` rewrites per parent, parsed and filtered against `existing` (the buffer:
    its near-duplicate index or its texts), the children `accepted` in earlier rounds and each
    other, and checked to be prompts (`cfg.prompt_filter`); each child records its parent, root,
    depth, operator and `iteration`. Round `round_` > 0 asks again with fresh seeds (population
    control: filters dropped too many)."""
    round_seed = (
        derive_seed(seed, "evolve", iteration) if round_ == 0 else derive_seed(seed, "evolve", iteration, round_)
    )
    requests = build_evolve_requests(parents, cfg.num_variants, cfg.operators, round_seed)
    spec = SamplingSpec(1, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    keys = [f"{r.parent.id}:{i}" for i, r in enumerate(requests)]
    batch = engines.generate(keys, [r.meta_prompt for r in requests], [r.seed for r in requests], spec)
    candidates = [(r, parse_evolved(g.responses[0])) for r, g in zip(requests, batch.generations, strict=True)]
    children, report = filter_evolved(
        candidates,
        existing,
        min_chars=cfg.min_prompt_chars,
        max_chars=cfg.max_prompt_chars,
        near_dup_threshold=cfg.near_duplicate_threshold,
        iteration=iteration,
        prompt_check=prompt_check(cfg),
        accepted=accepted,
    )
    return (
        children,
        report,
        RolloutStats(
            generate_seconds=batch.seconds,
            new_tokens=batch.new_tokens,
            retries=batch.retries,
            longest_tokens=batch.longest,
            truncated_prompts=batch.truncated,
        ),
    )
