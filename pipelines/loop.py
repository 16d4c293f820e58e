"""The eva loop (Algorithm 1 of DESIGN.md) and the fixed-prompt baseline, on top of the actors.

One iteration t reads top to bottom:

    estimate -> sample -> evolve -> mix -> solve -> pairs -> train -> commit

Each stage returns typed records, writes its output into iterations/<t>/ (`eva.iteration`) and then
its stage marker with its counts. A resumed iteration loads the outputs of finished stages instead
of redoing them; generation is seeded per request, so redone stages reproduce what an uninterrupted
run does. `commit` writes the buffer and the metrics that `eva.results.iteration_metrics` computes
from the stages' results. The baseline runs the same code with the creator stages skipped: it
trains on the seed prompts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import ray

from actors.cluster import Actors, engines_sleep, init_ray, start_actors, transfer_backend
from actors.creator import evolve_prompts
from actors.engine import SamplingSpec
from actors.models import model_folder
from actors.pool import LOST, wait_until_available
from actors.rollout import rollout
from eva.atomic import atomic_folder
from eva.buffer import PromptBuffer, load_seed_prompts
from eva.checkpoint import CorruptCheckpointError, RunDir
from eva.config import RunConfig
from eva.dedup import BufferIndex
from eva.metrics import busy_summary, with_informativeness
from eva.online.buffer import PriorityBuffer
from eva.pairs import build_pairs
from eva.results import (
    GENERATING_STAGES,
    IterationResults,
    RolloutStats,
    TrainingDivergedError,
    TrainResult,
    filter_report_from_marker,
    iteration_metrics,
)
from eva.sampling import sample_prompts, sample_size
from eva.seeding import derive_seed
from eva.tasks.evolve import mutate_prompts
from eva.tasks.prompts import seed_prompts
from eva.types import FilterReport, IterationMetrics, PreferencePair, Prompt, ScoredPrompt
from pipelines.tracking import Trackers

STAGES = ("estimate", "sample", "evolve", "mix", "solve", "pairs", "train", "commit")
BASELINE_STAGES = ("solve", "pairs", "train", "commit")


class Interrupted(Exception):
    """Ctrl-C arrived; the loop stopped at a safe point and the run is resumable."""


class RunStalled(Exception):
    """Too many iterations in a row built no preference pair (run.max_iterations_without_pairs): the
    loop stops after committing the last of them; the message says what to change. Resumable."""


class Reporter(Protocol):
    """Where the loop tells what it does: a summary line per stage, progress while one runs."""

    def __call__(self, message: str) -> None: ...

    def progress(self, description: str, done: int, total: int | None, unit: str = "") -> None: ...


@dataclass
class Ctx:
    """What every stage needs: the config, the run directory, the actors and a reporter."""

    cfg: RunConfig
    run: RunDir
    actors: Actors
    report: Reporter
    stop_requested: bool = False
    engines_hold: int = -1  # iteration whose policy the engines serve now
    trainer_asleep: bool = False  # model.sleep: the trainer freed its policy after the last round
    started: float = 0.0  # time.time() when this process began the current iteration
    trackers: Trackers | None = None  # run.report_to (pipelines.tracking)
    # The buffer version of the last committed iteration, kept in memory across iterations (read
    # from disk once, when the loop starts), and the near-duplicate index of its texts, grown with it.
    buffer: PromptBuffer = dataclasses.field(default_factory=PromptBuffer)
    known_texts: BufferIndex | None = None
    # run.mode online (pipelines.online): the prioritized buffer the minibatches are drawn from, and
    # the global optimizer step the next minibatch trains (both as of the last commit on resume).
    priority: PriorityBuffer | None = None
    step: int = 0

    @property
    def timeout(self) -> float:
        return self.cfg.ray.timeout_s


# --- stage plumbing -------------------------------------------------------------------------------


def fault_point(t: int, where: str) -> None:
    """Crash here, like a power cut, when EVA_FAULT_AT=<t>:<where> (the resume tests use it).

    Kills the whole process group (the driver and the Ray cluster it started) with SIGKILL: nothing
    gets to clean up, which is exactly what resume must survive.
    """
    if os.environ.get("EVA_FAULT_AT") == f"{t}:{where}":
        os.killpg(os.getpgrp(), signal.SIGKILL) if os.getpgrp() == os.getpid() else os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def stage(ctx: Ctx, t: int, name: str) -> Iterator[dict[str, Any]]:
    """Time a stage, log start/end to events.jsonl, mark it done; the caller fills in its counts."""
    if ctx.stop_requested:
        raise Interrupted
    counts: dict[str, Any] = {}
    ctx.run.log_event("stage_start", iteration=t, stage=name)
    fault_point(t, name)
    t0 = time.perf_counter()
    yield counts
    seconds = time.perf_counter() - t0
    ctx.run.mark_stage(t, name, {**counts, "seconds": seconds}, config_hash=ctx.cfg.fingerprint())
    ctx.run.log_event("stage_end", iteration=t, stage=name, seconds=round(seconds, 3), counts=counts)
    shown = ", ".join(f"{k}={v}" for k, v in counts.items() if not isinstance(v, (dict, list)))
    ctx.report(f"[{t}] {name:<8} {seconds:7.1f}s  {shown}")


def finished(ctx: Ctx, t: int, name: str) -> dict[str, Any] | None:
    """The counts of a stage that finished before (resume), else None."""
    if not ctx.run.stage_done(t, name):
        return None
    ctx.report(f"[{t}] {name:<8} (done before, resumed)")
    return ctx.run.stage_info(t, name)


def in_thread(fn: Callable[..., Any], *args: Any) -> Future:
    """`fn(*args)` in a daemon thread; its result (or exception) in the returned Future. Daemon: an
    interrupted driver exits without waiting for a chunk's generation to finish."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # handed to the caller, which re-raises it
            future.set_exception(e)

    threading.Thread(target=run, name=f"eva-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return future


def log_retries(ctx: Ctx, t: int, stage_name: str, lines: tuple[str, ...]) -> None:
    """Batches that had to be resent (a replica or the scorer died, or came back stale): they happen
    in actors and tasks whose logs the driver does not show, so they are reported here."""
    for line in lines:
        ctx.run.log_event("retry", iteration=t, stage=stage_name, message=line)
        ctx.report(f"[{t}] {stage_name:<8} retried: {line}")


def log_rollouts(ctx: Ctx, t: int, stage_name: str, stats: RolloutStats) -> None:
    """A generating stage's retries, and the prompts the engines had to cut: a prompt longer than
    model.max_model_len leaves (minus the new tokens) loses its beginning, which the user should know."""
    log_retries(ctx, t, stage_name, stats.retries)
    if stats.truncated_prompts:
        cut = stats.truncated_prompts
        ctx.run.log_event("truncated", iteration=t, stage=stage_name, prompts=cut, longest=stats.longest_tokens)
        ctx.report(
            f"[{t}] {stage_name:<8} {cut} prompt(s) left-truncated to fit model.max_model_len "
            f"({ctx.cfg.model.max_model_len} tokens with the new ones): raise it to keep them whole"
        )


# --- stages ---------------------------------------------------------------------------------------


def scored_stage(ctx: Ctx, t: int, name: str, buffer: PromptBuffer, prompts: list[Prompt]) -> list[ScoredPrompt]:
    """estimate (step 1, on X_{t-1}) and solve (step 5, on X'_t): n responses of pi_{t-1} per prompt,
    each scored, informativeness attached. One operation on different prompts."""
    folder = ctx.run.iteration(t)
    if finished(ctx, t, name) is not None:
        return folder.scored(name, buffer)
    with stage(ctx, t, name) as counts:
        scored, stats = rollout_chunked(ctx, prompts, name, t)
        folder.write_scored(name, scored)
        counts.update(stats.marker(len(scored)))
    return scored


def rollout_chunked(
    ctx: Ctx, prompts: list[Prompt], name: str, t: int, tokens: bool = False
) -> tuple[list[ScoredPrompt], RolloutStats]:
    """Rollout + scoring in chunks, two in flight, so generation of one overlaps scoring of another.
    Seeds are keyed by (`name`, `t`, prompt); `tokens`: the groups carry the engine's token ids.

    Each chunk runs in a driver thread: a rollout only sends Ray calls to the engines and the reward
    actor and waits on them, so a Ray task per chunk bought nothing but a worker process to start
    (importing eva and torch: ~3 s of CPU each, and ~0.2-0.4 GB of PSS beside the engines)."""
    size = max(4, math.ceil(len(prompts) / 8))
    chunks = [prompts[i : i + size] for i in range(0, len(prompts), size)]
    s = ctx.cfg.solver
    spec = SamplingSpec(s.n_responses, s.temperature, s.top_p, s.max_new_tokens, token_ids=tokens)

    def submit(chunk: list[Prompt]) -> Future:
        args = (ctx.actors.policy, ctx.actors.reward, chunk, spec, ctx.cfg.run.seed, name, t, ctx.timeout)
        return in_thread(rollout, *args)

    results: list[tuple[list[ScoredPrompt], RolloutStats]] = []
    ctx.report.progress(f"[{t}] {name}", 0, len(prompts), "prompts")
    inflight = [submit(c) for c in chunks[:2]]
    for nxt in range(2, len(chunks) + 2):
        results.append(inflight.pop(0).result())  # rollout's own Ray calls carry ctx.timeout
        if nxt < len(chunks):
            inflight.append(submit(chunks[nxt]))
        ctx.report.progress(f"[{t}] {name}", sum(len(r) for r, _ in results), len(prompts), "prompts")
    stats = RolloutStats.merge([st for _, st in results])
    log_rollouts(ctx, t, name, stats)
    return with_informativeness([sp for r, _ in results for sp in r], ctx.cfg.creator.metric), stats


def sample(ctx: Ctx, t: int, buffer: PromptBuffer, scored: list[ScoredPrompt]) -> list[Prompt]:
    """Step 2: k = ceil(sample_frac |X|) prompts by informativeness (creator.sample_method)."""
    folder = ctx.run.iteration(t)
    if finished(ctx, t, "sample") is not None:
        return buffer.prompts(folder.sampled_ids())
    with stage(ctx, t, "sample") as counts:
        c = ctx.cfg.creator
        picks = sample_prompts(
            [s.info for s in scored],
            sample_size(len(scored), c.sample_frac),
            c.sample_method,
            derive_seed(ctx.cfg.run.seed, "sample", t),
        )
        picked = [scored[i].prompt for i in picks]
        folder.write_sampled_ids([p.id for p in picked])
        counts.update(sampled=len(picked), of=len(scored))
    return picked


def evolve(
    ctx: Ctx, t: int, buffer: PromptBuffer, parents: list[ScoredPrompt], wanted: int
) -> tuple[list[Prompt], FilterReport]:
    """Step 3: `wanted` children of the sampled prompts, parsed, filtered, with lineage: rewrites by
    the creator LLM, or the task family's mutations (creator.kind)."""
    folder = ctx.run.iteration(t)
    if (done := finished(ctx, t, "evolve")) is not None:
        return folder.evolved(), filter_report_from_marker(done, "kept")
    with stage(ctx, t, "evolve") as counts:
        # one generate call per round: the bar shows it runs
        ctx.report.progress(f"[{t}] evolve", 0, len(parents), "parents")
        children, report, stats, rounds = create_children(ctx, t, buffer, parents, wanted)
        log_rollouts(ctx, t, "evolve", stats)
        folder.write_evolved(children)
        counts.update(
            requested=report.total,
            kept=report.kept,
            wanted=wanted,
            rounds=rounds,
            new_tokens=stats.new_tokens,
            longest_tokens=stats.longest_tokens,
            truncated=stats.truncated_prompts,
            dropped=report.dropped,
        )
    return children, report


def create_children(
    ctx: Ctx, t: int, buffer: PromptBuffer, parents: list[ScoredPrompt], wanted: int
) -> tuple[list[Prompt], FilterReport, RolloutStats, int]:
    """Population control: rounds of `num_variants` children per parent until `wanted` survive the
    filters (or `max_evolve_rounds` are spent); children past `wanted` are dropped as "surplus"."""
    c, seed = ctx.cfg.creator, ctx.cfg.run.seed
    kept: list[Prompt] = []
    reports: list[FilterReport] = []
    stats: list[RolloutStats] = []
    rounds = 0
    while c.kind != "select" and len(kept) < wanted and parents and rounds < c.max_evolve_rounds:
        if c.kind == "program":
            known = KnownIds(buffer, {p.id for p in kept})
            got, report = mutate_prompts(parents, c.num_variants, c.direction_rule, seed, t, known, rounds)
            stat = RolloutStats()
        else:
            if ctx.known_texts is None:
                ctx.known_texts = BufferIndex(c.near_duplicate_threshold)
            existing = ctx.known_texts.sync(buffer)  # the buffer's texts, indexed once per run
            parent_prompts = [p.prompt for p in parents]
            accepted = [p.text for p in kept]  # earlier rounds: not in the buffer (surplus ones never will be)
            got, report, stat = evolve_prompts(
                ctx.actors.creator_engines, parent_prompts, existing, c, seed, t, rounds, accepted
            )
        kept, rounds = kept + got, rounds + 1
        reports.append(report)
        stats.append(stat)
    dropped: dict[str, int] = {}
    for report in reports:
        for reason, n in report.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
    dropped["surplus"] = max(0, len(kept) - wanted)
    return kept[:wanted], FilterReport(kept=min(len(kept), wanted), dropped=dropped), RolloutStats.merge(stats), rounds


class KnownIds:
    """The ids of the buffer and of the children kept in earlier evolve rounds, looked up in place
    (copying the buffer's ids every round would cost a pass over the whole buffer)."""

    def __init__(self, buffer: PromptBuffer, kept: set[str]) -> None:
        self.buffer, self.kept = buffer, kept

    def __contains__(self, pid: object) -> bool:
        return pid in self.kept or pid in self.buffer


def mix(ctx: Ctx, t: int, buffer: PromptBuffer, evolved: list[Prompt]) -> list[Prompt]:
    """Step 4: the population X'_t: the evolved prompts (creator.kind select: the sampled ones, up to
    the evolved share) plus a uniform sample of the buffer."""
    folder = ctx.run.iteration(t)
    if finished(ctx, t, "mix") is not None:
        return buffer.prompts(folder.train_ids())
    with stage(ctx, t, "mix") as counts:
        size = population(ctx)
        first = [p.id for p in evolved][: round(ctx.cfg.creator.evolved_ratio * size)]
        ids = buffer.mix(first, size, derive_seed(ctx.cfg.run.seed, "mix", t))
        folder.write_train_ids(ids)
        counts.update(train_prompts=len(ids), evolved=len(evolved))
    return buffer.prompts(ids)


def population(ctx: Ctx) -> int:
    """|X'_t|, the same every iteration: creator.population, else the size of the seed set."""
    return ctx.cfg.creator.population or len(ctx.run.iteration(0).train_ids())


def fixed_prompts(ctx: Ctx, t: int, buffer: PromptBuffer) -> list[Prompt]:
    """The baseline's training prompts: the fixed set, or a fresh uniform sample of
    prompts.baseline_sample of it (seeded per iteration, so a resumed iteration draws the same)."""
    k = ctx.cfg.prompts.baseline_sample
    ids = buffer.ids() if k is None else buffer.mix([], k, derive_seed(ctx.cfg.run.seed, "baseline", t))
    ctx.run.iteration(t).write_train_ids(ids)
    return buffer.prompts(ids)


def pairs(ctx: Ctx, t: int, solved: list[ScoredPrompt]) -> tuple[list[PreferencePair], FilterReport]:
    """chosen = argmax reward, rejected = argmin; ties and small margins dropped."""
    folder = ctx.run.iteration(t)
    if (done := finished(ctx, t, "pairs")) is not None:
        return folder.pairs(), filter_report_from_marker(done, "pairs")
    with stage(ctx, t, "pairs") as counts:
        built, report = build_pairs(solved, ctx.cfg.solver.min_margin, t)
        folder.write_pairs(built)
        counts.update(pairs=len(built), dropped=report.dropped)
    return built, report


def train(ctx: Ctx, t: int, built: list[PreferencePair]) -> TrainResult:
    """Step 6: preference-optimize pi_{t-1} -> pi_t; save it as the iteration's policy; sync engines."""
    folder = ctx.run.iteration(t)
    policy_dir = folder.policy
    trainer = ctx.actors.trainer
    if (done := finished(ctx, t, "train")) is not None:
        load_trainer(ctx, t)
        sync_engines(ctx, t, from_path=str(policy_dir))
        return TrainResult.from_marker(done)
    with stage(ctx, t, "train") as counts:
        # model.sleep: the engines' memory is the trainer's for the round; they come back serving pi_t
        sleeping = engines_sleep(ctx.cfg)
        engines_asleep = sleeping and bool(built)  # no pairs: nothing trains, nothing to make room for
        if engines_asleep:
            counts["sleep_s"] = round(ctx.actors.sleep(ctx.timeout), 3)
        # pi_{t-1} back from its folder and fp32 masters, as on resume: after the engines went to sleep, not
        # before (the loaded trainer beside awake engines was the job's peak: 6.02 GB, cpu-default) nor
        # while they do (overlapping the two saved 1-2.5 s but raised the trainer's peak in the round:
        # 3.82 against 3.53 GB). benchmarks/RESULTS.md
        if ctx.trainer_asleep:
            t_load = time.perf_counter()
            load_trainer(ctx, t - 1)
            counts["trainer_load_s"] = round(time.perf_counter() - t_load, 3)
        try:
            result = train_round(ctx, t, built)  # no pairs: pi_t = pi_{t-1}, steps 0
        except ray.exceptions.RayTaskError as e:
            # the actor's message, without Ray's wrapping and remote traceback
            if isinstance(e.cause, TrainingDivergedError):
                raise TrainingDivergedError(str(e.cause)) from None
            raise
        counts.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if not built:
            counts["skipped"] = "no pairs"
        t_save = time.perf_counter()
        ray.get(trainer.save.remote(str(policy_dir), t), timeout=ctx.timeout)
        folder.drop_train_checkpoints()  # the policy is saved: a redone stage needs none of them
        counts["save_s"] = round(time.perf_counter() - t_save, 3)
        fault_point(t, "train:saved")
        # GPU engines in vLLM's sleep mode with a collective path (nccl, ipc): the policy's weights wake
        # alone and the trainer pushes into them in GPU memory before it frees its own copy
        push_into_sleep = engines_asleep and ctx.cfg.ray.engine.num_gpus > 0 and transfer_backend(ctx.cfg) is not None
        sync_s = 0.0
        if push_into_sleep:
            sync_s += ctx.actors.policy.wake_weights()
        if not engines_asleep or push_into_sleep:  # awake engines (or woken weights) get the trainer's
            sync_s += sync_engines(ctx, t, policy_dir=str(policy_dir))
        if sleeping:  # the policy is in its folder: the trainer's copy waits there until the next round,
            ray.get(trainer.sleep.remote(), timeout=ctx.timeout)  # out of the way before the engines return
            ctx.trainer_asleep = True
        if engines_asleep:
            sync_s += wake_engines(ctx, t, None if push_into_sleep else str(policy_dir))
        counts["sync_s"] = round(sync_s, 3)
    return TrainResult.from_marker(counts)


def train_round(ctx: Ctx, t: int, built: list[PreferencePair]) -> dict[str, Any]:
    """The training round, its step checkpoints (solver.checkpoint_steps) in the iteration folder.

    A trainer that crashed and that Ray restarted (ray.trainer.max_restarts; waited for up to
    ray.restart_timeout_s) holds its start policy: it is given pi_{t-1} again and the round goes on
    from its last step checkpoint (from the start without one), up to ray.retries times."""
    checkpoints = str(ctx.run.iteration(t).train_checkpoints) if ctx.cfg.solver.checkpoint_steps else None
    trainer, retries = ctx.actors.trainer, ctx.cfg.ray.retries
    for attempt in range(retries + 1):
        try:
            return wait_training(ctx, t, trainer.train.remote(built, t, checkpoints))
        except LOST as e:
            if attempt == retries or not wait_until_available(trainer, ctx.cfg.ray.restart_timeout_s):
                raise
            line = (
                f"trainer failed ({type(e).__name__}); retry {attempt + 1}/{retries} on the restarted trainer, "
                f"from the policy of iteration {t - 1}"
                + (" and the round's last step checkpoint" if checkpoints else " (no step checkpoints: from step 0)")
            )
            log_retries(ctx, t, "train", (line,))
            load_trainer(ctx, t - 1)
    raise AssertionError("unreachable")


def load_trainer(ctx: Ctx, s: int) -> None:
    """Give the trainer the policy of committed iteration `s` from its folder (weights and fp32 masters):
    on resume, after a restart, or back from model.sleep."""
    ray.get(ctx.actors.trainer.load.remote(str(ctx.run.iteration(s).policy), s), timeout=ctx.timeout)
    ctx.trainer_asleep = False


def wait_training(ctx: Ctx, t: int, ref) -> dict[str, Any]:
    """The training round's result; meanwhile the trainer's step count feeds the progress bar.

    Liveness is progress, not a wall clock: the round fails when no optimizer step finishes for
    ray.train_step_timeout_s (a large round may take many hours, and that is fine)."""
    limit = ctx.cfg.ray.train_step_timeout_s
    last_done, last_change = -1, time.monotonic()
    while not ray.wait([ref], timeout=2.0)[0]:
        done, total = ray.get(ctx.actors.trainer.progress.remote(), timeout=60)
        if done != last_done:
            last_done, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > limit:
            raise TimeoutError(
                f"iteration {t}: training finished no step for {limit:g}s (at step {done} of {total}; "
                "ray.train_step_timeout_s): the stage fails, resume continues from the last step checkpoint"
            )
        ctx.report.progress(f"[{t}] train", done, total or None, "steps")
    return ray.get(ref)


def sync_engines(ctx: Ctx, t: int, from_path: str | None = None, policy_dir: str | None = None) -> float:
    """Weight sync: the trainer's policy to every policy engine replica (`push_policy`; a replica Ray
    restarts later reloads `policy_dir`, the folder it was saved to), or, on resume, each replica
    reloads the committed policy folder `from_path`."""
    version = f"policy-{t}"
    if from_path is not None:
        seconds = ctx.actors.policy.load_weights_from_path(from_path, version)
    else:
        seconds = push_policy(ctx, version, t)
        if policy_dir is not None and transfer_backend(ctx.cfg) is not None:
            ctx.actors.policy.adopt(policy_dir, version)  # not the trainer: it may sleep from now on
    ctx.engines_hold = t
    return seconds


def push_policy(ctx: Ctx, version: str, iteration: int | None) -> float:
    """The trainer's weights into every policy engine replica as `version`, by ray.weight_sync: its state
    dict put once in the object store, or a collective (nccl, ipc, gloo: actors.weight_transfer)."""
    pool, trainer = ctx.actors.policy, ctx.actors.trainer
    backend = transfer_backend(ctx.cfg)
    if backend is None:
        return pool.update_weights(trainer.state_dict.remote(iteration), version)
    return pool.send_from(trainer, backend, ctx.cfg.model.tensor_parallel_size, iteration, version)


def wake_engines(ctx: Ctx, t: int, policy_dir: str | None) -> float:
    """The engines back from their sleep through the round, the policy's serving pi_t from its saved
    folder (the weight sync of a sleeping run: no push, the folder was written anyway), or, with no
    folder, the weights pushed into them already (wake_weights, then a collective push)."""
    seconds = ctx.actors.wake_up(policy_dir, f"policy-{t}", ctx.timeout)
    ctx.engines_hold = t
    return seconds


def commit(
    ctx: Ctx,
    t: int,
    buffer: PromptBuffer,
    results: IterationResults,
    t_commit: float,
    online_steps: list[dict[str, Any]] | None = None,
) -> IterationMetrics:
    """Step 7: the new buffer version and metrics.json, then MANIFEST.json (the commit) and LATEST.

    Online (`online_steps`: one record per optimizer step): every step's groups count as estimates,
    in draw order (`results.estimated` is the creator's view of them, not more estimates), and the
    prioritized buffer's table is written too."""
    folder = ctx.run.iteration(t)
    with stage(ctx, t, "commit") as counts:
        if online_steps is None:
            buffer.update_stats(results.estimated, t)
        buffer.update_stats(results.solved, t)
        buffer.mark_sampled([p.id for p in results.sampled])
        buffer.mark_trained([s.prompt.id for s in results.solved])
        counts["buffer_rows_written"] = folder.write_buffer_changes(buffer)
        if ctx.priority is not None:
            folder.write_priority(ctx.priority.to_table())
        # Orchestration overhead: the iteration's wall time (in this process, up to here) that no actor
        # spent generating, scoring or training. The manifest below adds a little that this misses.
        timing = busy_summary(ctx.actors.drain_busy(ctx.timeout), ctx.started, time.time())
        timing.save_s, timing.sync_s = results.train.save_s, results.train.sync_s
        # metrics.json is part of the commit, so it records the commit's time up to this write.
        seconds = {**results.stage_seconds, "commit": time.perf_counter() - t_commit}
        metrics = iteration_metrics(dataclasses.replace(results, stage_seconds=seconds), len(buffer), timing)
        if online_steps is not None:  # the children are born at the commit: they train from the next step on
            children = results.evolve_report.kept if results.evolve_report else 0
            metrics = dataclasses.replace(metrics, steps=online_steps, num_evolved=children)
        folder.write_metrics(metrics)
        counts.update(buffer=len(buffer))
    fault_point(t, "commit:manifest")
    ctx.run.commit(t)
    ctx.run.prune_masters(t)
    ctx.run.prune_policies(ctx.cfg.checkpoint.keep_policies)
    if ctx.trackers is not None:
        ctx.trackers.log_iteration(t, metrics.to_dict(), folder.evolved() if folder.has_evolved() else [])
    return metrics


# --- iterations -----------------------------------------------------------------------------------


def redo_stale_stages(ctx: Ctx, t: int) -> list[str]:
    """Drop the markers of stages of iteration t that finished under another config (before an
    `--allow-change`) and of every stage after them, so they run again under this one; says so."""
    redo = ctx.run.stale_stages(t, ctx.cfg.fingerprint())
    if redo:
        ctx.run.drop_stages(t, redo)
        ctx.report(
            f"[{t}] stages {', '.join(redo)} ran under a different config (changed with --allow-change): redoing them"
        )
    return redo


def run_iteration(ctx: Ctx, t: int) -> IterationMetrics:
    """One iteration of Algorithm 1 (or of the baseline), resuming from its finished stages."""
    ctx.started = time.time()
    # spans from before this iteration (actor start-up, an earlier resume) are not its work
    ctx.actors.drain_busy(ctx.timeout)
    prev = ctx.run.iteration(t - 1)
    buffer = ctx.buffer  # version t - 1
    redo_stale_stages(ctx, t)
    if ctx.engines_hold != t - 1 and not ctx.run.stage_done(t, "train"):
        raise RuntimeError(f"engines serve the policy of iteration {ctx.engines_hold}, iteration {t} needs {t - 1}")
    estimated: list[ScoredPrompt] = []
    sampled: list[Prompt] = []
    evolve_report: FilterReport | None = None
    parents_info: dict[str, float] = {}
    if ctx.cfg.run.baseline:
        train_prompts = fixed_prompts(ctx, t, buffer)
    else:
        current = buffer.prompts(prev.train_ids())  # X_{t-1}: what iteration t-1 trained on
        estimated = scored_stage(ctx, t, "estimate", buffer, current)
        sampled = sample(ctx, t, buffer, estimated)
        by_id = {s.prompt.id: s for s in estimated}
        wanted = round(ctx.cfg.creator.evolved_ratio * population(ctx))
        evolved, evolve_report = evolve(ctx, t, buffer, [by_id[p.id] for p in sampled], wanted)
        parents = [s.prompt.parent_id for s in estimated if s.prompt.parent_id is not None]
        # as last estimated (iteration t-1)
        parents_info = dict(zip(parents, buffer.info_array(parents).tolist(), strict=True))
        buffer.add(evolved)
        train_prompts = mix(ctx, t, buffer, sampled if ctx.cfg.creator.kind == "select" else evolved)
    solved = scored_stage(ctx, t, "solve", buffer, train_prompts)
    built, pairs_report = pairs(ctx, t, solved)
    trained = train(ctx, t, built)
    t_commit = time.perf_counter()
    markers = {name: ctx.run.stage_info(t, name) for name in ctx.run.stages_done(t)}
    results = IterationResults(
        iteration=t,
        estimated=estimated,
        sampled=sampled,
        evolve_report=evolve_report,
        solved=solved,
        pairs=built,
        pairs_report=pairs_report,
        train=trained,
        stage_seconds={name: m.get("seconds", 0.0) for name, m in markers.items()},
        tokens_generated={name: markers[name].get("new_tokens", 0) for name in GENERATING_STAGES if name in markers},
        parents_info={k: (None if math.isnan(v) else v) for k, v in parents_info.items()},
    )
    return commit(ctx, t, buffer, results, t_commit)


def pairless_streak(run: RunDir, t: int) -> int:
    """How many committed iterations up to t, counting back from t, built no preference pair."""
    streak = 0
    while t - streak >= 1 and run.iteration(t - streak).metrics().num_pairs == 0:
        streak += 1
    return streak


def check_not_stalled(run: RunDir, t: int, cfg: RunConfig) -> None:
    """Raise RunStalled when the last run.max_iterations_without_pairs committed iterations up to t built no pair."""
    streak, limit = pairless_streak(run, t), cfg.run.max_iterations_without_pairs
    if streak < limit:
        return
    run.log_event("stalled", iteration=t, iterations_without_pairs=streak)
    raise RunStalled(
        f"iterations {t - streak + 1}-{t} built no preference pair ({streak} in a row; "
        f"run.max_iterations_without_pairs is {limit}): "
        f"every prompt's {cfg.solver.n_responses} responses scored alike, or their margins were at most "
        f"solver.min_margin "
        f"({cfg.solver.min_margin:g}), so nothing was trained. The run stopped with iteration {t} committed. "
        f"Change what starves "
        "it (a lower solver.min_margin, more solver.n_responses, a higher solver.temperature, a finer reward) with "
        f"`eva run CONFIG --run-dir {run.root} --allow-change FIELD --set FIELD=VALUE`, or raise "
        f"run.max_iterations_without_pairs "
        f"the same way; `eva resume {run.root}` continues as it is and stops again after the next iteration "
        f"without pairs"
    )


def init_iteration_zero(cfg: RunConfig, run: RunDir, policy_path: str) -> None:
    """Iteration 0: the seed buffer and the initial policy, committed like any other iteration."""
    if run.committed(0):
        return
    folder = run.iteration(0)
    folder.path.mkdir(parents=True, exist_ok=True)
    task = cfg.task
    if task.family is not None:
        seeds = seed_prompts(task.family, task.levels, task.per_level, task.seed, task.problems)
    else:
        p = cfg.prompts
        seeds = load_seed_prompts(p.path, p.column, p.limit, split=p.split, subset=p.subset, streaming=p.streaming)
    folder.write_buffer(PromptBuffer.from_prompts(seeds))
    folder.write_train_ids([p.id for p in seeds])
    # a copy fsynced before and after its rename (eva.atomic); a killed copy's temp folder goes at commit
    if not folder.policy.exists():
        with atomic_folder(folder.policy) as tmp:
            shutil.copytree(policy_path, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("EVA_SOURCE", ".*"))
    folder.write_metrics(IterationMetrics(iteration=0, buffer_size=len(seeds)))
    run.commit(0)
    run.log_event("init", seeds=len(seeds), policy=policy_path)


def run_loop(cfg: RunConfig, run: RunDir, report: Reporter, verified: bool = False) -> int:
    """Run (or resume) iterations until `run.iterations` are committed; returns the last committed.
    `verified`: the caller ran `run.verify_for_resume()` on this run directory already."""
    problems = [] if verified else run.verify_for_resume()
    if problems:
        raise CorruptCheckpointError(
            f"{run.root}: committed iterations fail verification:\n  " + "\n  ".join(problems), problems
        )
    initial = model_folder(cfg.model.path)  # a Hub name: its snapshot, copied into iteration 0
    init_iteration_zero(cfg, run, initial)
    run.sync_latest()  # a kill between an iteration's MANIFEST and LATEST: it is committed (and verified above)
    last = run.last_committed()
    assert last is not None  # iteration 0 is committed now
    run.prune_masters(last)  # a kill between the last commit and its pruning left the previous ones
    if last >= cfg.run.iterations:
        report(f"nothing to do: {last} iterations committed (run.iterations = {cfg.run.iterations})")
        return last
    init_ray(cfg)
    report("starting actors (vLLM engines, reward scorer, trainer) ...")
    t0 = time.perf_counter()
    start_policy = str(run.iteration(last).policy)
    actors = start_actors(cfg, start_policy, str(run.iteration(0).policy), start_iteration=last)
    report(f"actors up in {time.perf_counter() - t0:.1f}s")
    run.log_event("actors_up", seconds=round(time.perf_counter() - t0, 2), nodes=actors.nodes)
    ctx = Ctx(cfg=cfg, run=run, actors=actors, report=report, engines_hold=last, trackers=Trackers(cfg, run))
    ctx.buffer = run.iteration(last).buffer()
    if engines_sleep(cfg):  # model.sleep: the trainer's policy waits in its folder until the first round
        ray.get(actors.trainer.sleep.remote(), timeout=ctx.timeout)
        ctx.trainer_asleep = True
    iterate = run_iteration
    if cfg.run.mode == "online":  # never asleep (engines_sleep): the trainer steps between every rollout
        from pipelines.online import online_iteration, start_online

        start_online(ctx, last)
        iterate = online_iteration
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # first Ctrl-C: stop at the next stage boundary
        if ctx.stop_requested:
            raise KeyboardInterrupt
        ctx.stop_requested = True
        report("Ctrl-C: stopping after the current stage (press again to abort now)")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        for t in range(last + 1, cfg.run.iterations + 1):
            run.log_event("iteration_start", iteration=t, baseline=cfg.run.baseline)
            t_iter = time.perf_counter()
            iterate(ctx, t)
            run.log_event("iteration_end", iteration=t, seconds=round(time.perf_counter() - t_iter, 2))
            last = t
            if t < cfg.run.iterations:
                check_not_stalled(run, t, cfg)
    finally:
        signal.signal(signal.SIGINT, previous)
        actors.shutdown()
        if ctx.trackers is not None:
            ctx.trackers.close()
    return last
