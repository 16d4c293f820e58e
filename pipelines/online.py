"""The online form of eva (issue 15, run.mode: online): a policy-gradient solver that learns from
every minibatch and a creator that evolves the prompts just seen, on the offline loop's actors,
stages and run directory (pipelines.loop). One committed iteration t reads top to bottom:

    steps (K = online.steps_per_commit times: draw -> rollout -> record -> train -> sync)
      -> evolve -> admit -> save -> commit

- draw: `PriorityBuffer.sample(step, online.minibatch_prompts)` (eva.online.buffer: seed prompts
  and children by priority; the draw is a function of the buffer's state and the step).
- rollout: solver.n_responses responses per prompt from the policy's engines, seeded per request by
  (run seed, "step", step, prompt), scored by the task grader or the reward actor: the group. It is
  both the training signal and the prompt's informativeness estimate: no extra generation.
- record: the group's informativeness (creator.metric) becomes the prompt's priority.
- train: one optimizer step of the trainer on the groups (PolicyTrainer.train_step).
- sync: the trainer's weights to the engines every online.sync_every steps.
- evolve: creator.sample_frac of the prompts drawn since the last commit, picked by the
  informativeness of their last group (creator.sample_method), get children by the offline loop's
  evolve stage (the family's mutations or the creator LLM), online.children_per_commit of them;
  `admit` scores each once and gates it when online.buffer.admit_threshold is set.
- save, commit: the policy with its fp32 masters and the optimizer state, the buffer version (every
  group counts as an estimate), the prioritized buffer's table, the steps' rollouts, the pairs
  (online_dpo), metrics.json with one record per step; then the MANIFEST (pipelines.loop.commit).

Resume: the unit is the iteration. The trainer's weights and optimizer change at every step and are
saved only at a commit, so a killed iteration is redone from the last commit: its folder is
cleared, the engines and the trainer start from the committed policy and optimizer state and the
prioritized buffer from its table, and the seeded draws and rollouts reproduce the uninterrupted
run's steps.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import ray

from eva.config import RunConfig
from eva.iteration import PRIORITY
from eva.online.batch import StepBatch, step_batch
from eva.online.buffer import PriorityBuffer, PrioritySettings
from eva.pairs import build_pairs
from eva.results import IterationResults, TrainingDivergedError, TrainResult
from eva.sampling import sample_prompts, sample_size
from eva.seeding import derive_seed
from eva.types import FilterReport, IterationMetrics, Prompt, ScoredPrompt
from pipelines.loop import Ctx, Interrupted, commit, evolve, fault_point, push_policy, rollout_chunked, stage

ONLINE_STAGES = ("steps", "evolve", "admit", "save", "commit")


def priority_settings(cfg: RunConfig) -> PrioritySettings:
    """The prioritized buffer's settings: online.buffer, the run seed and creator.metric."""
    b = cfg.online.buffer
    return PrioritySettings(
        seed=cfg.run.seed,
        metric=cfg.creator.metric,
        decay=b.decay,
        alpha=b.alpha,
        eps=b.eps,
        seed_ratio=b.seed_ratio,
        warmup_steps=b.warmup_steps,
        admit_threshold=b.admit_threshold,
    )


def start_online(ctx: Ctx, last: int) -> None:
    """The prioritized buffer and the trainer's optimizer as iteration `last` committed them (for
    iteration 0: the seed prompts, a fresh optimizer at step 0)."""
    folder = ctx.run.iteration(last)
    settings = priority_settings(ctx.cfg)
    if folder.has_priority():
        ctx.priority = PriorityBuffer.from_table(folder.priority_table(), settings, str(folder.file(PRIORITY)))
    else:
        ctx.priority = PriorityBuffer(settings, ctx.buffer.prompts())
    path = str(folder.policy) if last > 0 else None
    ctx.step = ray.get(ctx.actors.trainer.start_online.remote(path), timeout=ctx.timeout)
    done = sum(len(ctx.run.iteration(k).metrics().steps) for k in range(1, last + 1))
    if ctx.step != done:
        raise RuntimeError(
            f"{folder.policy}: the optimizer state is at step {ctx.step}, but iterations 1-{last} record {done} steps"
        )


def online_iteration(ctx: Ctx, t: int) -> IterationMetrics:
    """K optimizer steps, the creator, and the commit of iteration t (module docstring)."""
    ctx.started = time.time()
    ctx.actors.drain_busy(ctx.timeout)  # spans from before this iteration are not its work
    if ctx.run.iteration_dir(t).exists():  # a killed attempt: everything after the last commit is redone
        ctx.run.clear_iteration(t)
        ctx.report(f"[{t}] redoing the iteration from the commit of iteration {t - 1}")
    groups, steps = run_steps(ctx, t)
    seen = list({g.prompt.id: g for g in groups}.values())  # each prompt's last group: the creator's view
    parents = [g.prompt.parent_id for g in seen if g.prompt.parent_id is not None]
    parents_info = dict(zip(parents, ctx.buffer.info_array(parents).tolist(), strict=True))
    sampled, evolve_report, admit_tokens = create_children(ctx, t, seen)
    save_s = save_policy(ctx, t)
    built, pairs_report = build_pairs(groups, ctx.cfg.solver.min_margin, t)  # the groups with a signal
    if ctx.cfg.online.algorithm == "online_dpo":
        ctx.run.iteration(t).write_pairs(built)  # what the steps trained on
    t_commit = time.perf_counter()
    markers = {name: ctx.run.stage_info(t, name) for name in ctx.run.stages_done(t)}
    accuracy = [r["reward_accuracy"] for r in steps if r.get("reward_accuracy") is not None]
    results = IterationResults(
        iteration=t,
        estimated=seen,
        sampled=sampled,
        evolve_report=evolve_report,
        solved=groups,
        pairs=built,
        pairs_report=pairs_report,
        train=TrainResult(
            steps=len(steps),
            train_loss=statistics.fmean(r["loss"] for r in steps) if steps else None,
            reward_accuracy=statistics.fmean(accuracy) if accuracy else None,
            save_s=save_s,
            sync_s=sum(r["sync_s"] for r in steps),
        ),
        stage_seconds={name: m.get("seconds", 0.0) for name, m in markers.items()},
        tokens_generated={
            "solve": sum(r["new_tokens"] for r in steps),
            "estimate": admit_tokens,
            "evolve": int(markers.get("evolve", {}).get("new_tokens", 0)),
        },
        parents_info={k: (None if math.isnan(v) else v) for k, v in parents_info.items()},
    )
    return commit(ctx, t, ctx.buffer, results, t_commit, online_steps=steps)


def run_steps(ctx: Ctx, t: int) -> tuple[list[ScoredPrompt], list[dict[str, Any]]]:
    """The K optimizer steps of iteration t; their groups go to rollouts.parquet, the prompts drawn to
    train_prompts.json (each once, in draw order)."""
    k = ctx.cfg.online.steps_per_commit
    folder = ctx.run.iteration(t)
    groups: list[ScoredPrompt] = []
    records: list[dict[str, Any]] = []
    with stage(ctx, t, "steps") as counts:
        first = ctx.step
        for s in range(first, first + k):
            if ctx.stop_requested:
                raise Interrupted
            step_groups, record = one_step(ctx, t, s)
            groups += step_groups
            records.append(record)
            ctx.step = s + 1
            fault_point(t, f"step:{s}")
        folder.write_scored("solve", groups)
        folder.write_train_ids(list(dict.fromkeys(g.prompt.id for g in groups)))
        counts.update(
            steps=k,
            first_step=first,
            groups=len(groups),
            new_tokens=sum(r["new_tokens"] for r in records),
            loss=round(statistics.fmean(r["loss"] for r in records), 6),
            reward=_mean([r["reward_mean"] for r in records]),
        )
    return groups, records


def one_step(ctx: Ctx, t: int, s: int) -> tuple[list[ScoredPrompt], dict[str, Any]]:
    """Draw, rollout, record, train, sync: optimizer step `s` (global, 0-based) of iteration t."""
    o = ctx.cfg.online
    assert ctx.priority is not None
    prompts = ctx.priority.sample(s, o.minibatch_prompts)
    t0 = time.perf_counter()
    groups, stats = rollout_chunked(ctx, prompts, "step", s, tokens=True)
    ctx.priority.record(groups, s)
    rollout_s = time.perf_counter() - t0
    batch = step_batch(s, t, groups, ctx.cfg.solver.min_margin)
    trained = train_step(ctx, batch)
    sync_s = push_weights(ctx, s) if (s + 1) % o.sync_every == 0 else 0.0
    record = {
        "step": s,
        "prompts": len(groups),
        "seed_prompts": sum(1 for g in groups if g.prompt.is_seed),
        "reward_mean": _mean([r for g in groups for r in g.finite_rewards]),
        "info_mean": _mean([g.info for g in groups]),
        "signal_groups": len(batch.pairs),
        "new_tokens": stats.new_tokens,
        **{k: v for k, v in trained.items() if k not in ("step", "seconds")},
        "rollout_s": round(rollout_s, 3),
        "train_s": round(trained["seconds"], 3),
        "sync_s": round(sync_s, 3),
    }
    reward = record["reward_mean"]
    ctx.report(
        f"[{t}] step {s:<5} loss={trained['loss']:+.4f} reward={'-' if reward is None else f'{reward:.3f}'} "
        f"signal={len(batch.pairs)}/{len(groups)} tokens={stats.new_tokens} "
        f"({rollout_s:.1f}s rollout, {trained['seconds']:.1f}s train)"
    )
    return groups, record


def train_step(ctx: Ctx, batch: StepBatch) -> dict[str, Any]:
    """The trainer's step; liveness is ray.train_step_timeout_s per step, a divergence its own error."""
    try:
        return ray.get(ctx.actors.trainer.train_step.remote(batch), timeout=ctx.cfg.ray.train_step_timeout_s)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, TrainingDivergedError):  # the actor's message, without Ray's wrapping
            raise TrainingDivergedError(str(e.cause)) from None
        raise


def push_weights(ctx: Ctx, s: int) -> float:
    """Weight sync after step s: the trainer's weights into every policy engine replica (ray.weight_sync)."""
    return push_policy(ctx, f"step-{s + 1}", None)


def create_children(ctx: Ctx, t: int, seen: list[ScoredPrompt]) -> tuple[list[Prompt], FilterReport | None, int]:
    """The creator every K steps: parents from the prompts just seen by informativeness, their
    children (the offline evolve stage) into both buffers. Returns (parents, the evolve report, the
    tokens admission scoring generated). No creator in the baseline or with children_per_commit 0."""
    o, c = ctx.cfg.online, ctx.cfg.creator
    if ctx.cfg.run.baseline or o.children_per_commit == 0 or not seen:
        return [], None, 0
    picks = sample_prompts(
        [g.info for g in seen],
        sample_size(len(seen), c.sample_frac),
        c.sample_method,
        derive_seed(ctx.cfg.run.seed, "sample", t),
    )
    parents = [seen[i] for i in picks]
    ctx.run.iteration(t).write_sampled_ids([p.prompt.id for p in parents])
    children, report = evolve(ctx, t, ctx.buffer, parents, o.children_per_commit)
    return [p.prompt for p in parents], report, admit(ctx, t, children)


def admit(ctx: Ctx, t: int, children: list[Prompt]) -> int:
    """Children into the prioritized buffer (and the buffer version): unscored, or with admission
    gating scored once (seeded by "admit", t) and admitted above the threshold. Returns the tokens
    the scoring generated."""
    assert ctx.priority is not None
    if ctx.cfg.online.buffer.admit_threshold is None or not children:
        ctx.priority.add(children)
        ctx.buffer.add(children)
        return 0
    with stage(ctx, t, "admit") as counts:
        scored, stats = rollout_chunked(ctx, children, "admit", t)
        report = ctx.priority.admit(scored, ctx.step)  # scored with the weights the next step starts from
        ctx.buffer.add(children)
        ctx.buffer.update_stats(scored, t)
        counts.update(children=len(children), admitted=report.kept, dropped=report.dropped, **stats.marker(len(scored)))
    return stats.new_tokens


def save_policy(ctx: Ctx, t: int) -> float:
    """The trainer's policy (fp32 masters and optimizer state included) as iteration t's policy/."""
    with stage(ctx, t, "save") as counts:
        t0 = time.perf_counter()
        ray.get(ctx.actors.trainer.save.remote(str(ctx.run.iteration(t).policy)), timeout=ctx.timeout)
        counts["save_s"] = round(time.perf_counter() - t0, 3)
        fault_point(t, "saved")
    return counts["save_s"]


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return round(statistics.fmean(finite), 6) if finite else None
