"""The eva loop (Algorithm 1 of DESIGN.md) and the fixed-prompt baseline, on top of the actors.

One iteration t reads top to bottom:

    estimate -> sample -> evolve -> mix -> solve -> pairs -> train -> commit

Each stage takes actor handles, returns typed records, writes its output into iterations/<t>/ and
then its stage marker. A resumed iteration loads the outputs of finished stages instead of redoing
them; generation is seeded per request, so redone stages reproduce what an uninterrupted run does.
The baseline runs the same code with the creator stages skipped: it trains on the seed prompts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import pyarrow as pa
import ray

from actors.cluster import Actors, init_ray, start_actors
from actors.creator import RolloutStats, rollout, with_informativeness
from actors.engine import SamplingSpec
from actors.models import resolve_model_path
from eva.buffer import PromptBuffer, load_prompts_table, load_seed_prompts, save_pairs, load_pairs, save_prompts_table
from eva.checkpoint import POLICY, RunDir, atomic_write_json
from eva.config import RunConfig, flatten
from eva.metrics import busy_summary, summarize
from eva.pairs import build_pairs, pair_stats
from eva.seeding import derive_seed
from eva.tables import read_table, write_table
from eva.types import IterationMetrics, Prompt, ScoredPrompt

STAGES = ("estimate", "sample", "evolve", "mix", "solve", "pairs", "train", "commit")
BASELINE_STAGES = ("solve", "pairs", "train", "commit")
TRAIN_PROMPTS = "train_prompts.json"
SCORED_FILES = {"estimate": "estimate.parquet", "solve": "rollouts.parquet"}

SCORED_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("responses", pa.list_(pa.string())),
        ("rewards", pa.list_(pa.float64())),
        ("info", pa.float64()),
    ]
)


class Interrupted(Exception):
    """Ctrl-C arrived; the loop stopped at a safe point and the run is resumable."""


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
    started: float = 0.0  # time.time() when this process began the current iteration
    tensorboard: object = None  # SummaryWriter when tensorboard is installed
    metrics: IterationMetrics = field(default_factory=lambda: IterationMetrics(iteration=-1))

    @property
    def timeout(self) -> float:
        return self.cfg.ray.timeout_s


# --- scored-prompt tables -------------------------------------------------------------------------


def save_scored(path: Path, scored: list[ScoredPrompt]) -> None:
    # Non-finite rewards are stored as they are (null would hide that the scorer failed).
    write_table(
        pa.Table.from_pydict(
            {
                "prompt_id": [s.prompt.id for s in scored],
                "prompt": [s.prompt.text for s in scored],
                "responses": [list(s.responses) for s in scored],
                "rewards": [list(s.rewards) for s in scored],
                "info": [s.info for s in scored],
            },
            schema=SCORED_SCHEMA,
        ),
        path,
    )


def load_scored(path: Path, buffer: PromptBuffer) -> list[ScoredPrompt]:
    rows = read_table(path, SCORED_SCHEMA).to_pylist()
    return [ScoredPrompt(buffer.get(r["prompt_id"]), tuple(r["responses"]), tuple(r["rewards"]), r["info"]) for r in rows]


def _read_ids(path: Path) -> list[str]:
    return json.loads(path.read_text())["ids"]


# --- stages ---------------------------------------------------------------------------------------


def fault_point(t: int, where: str) -> None:
    """Crash here, like a power cut, when EVA_FAULT_AT=<t>:<where> (the resume tests use it).

    Kills the whole process group (the driver and the Ray cluster it started) with SIGKILL: nothing
    gets to clean up, which is exactly what resume must survive.
    """
    if os.environ.get("EVA_FAULT_AT") == f"{t}:{where}":
        os.killpg(os.getpgrp(), signal.SIGKILL) if os.getpgrp() == os.getpid() else os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def stage(ctx: Ctx, t: int, name: str) -> Iterator[dict]:
    """Time a stage, log start/end to events.jsonl, mark it done; `info` collects its counts."""
    if ctx.stop_requested:
        raise Interrupted
    info: dict = {}
    ctx.run.log_event("stage_start", iteration=t, stage=name)
    fault_point(t, name)
    t0 = time.perf_counter()
    yield info
    seconds = time.perf_counter() - t0
    ctx.metrics.stage_seconds[name] = round(seconds, 3)
    ctx.run.mark_stage(t, name, {**info, "seconds": seconds})
    ctx.run.log_event("stage_end", iteration=t, stage=name, seconds=round(seconds, 3), counts=info)
    counts = ", ".join(f"{k}={v}" for k, v in info.items() if not isinstance(v, (dict, list)))
    ctx.report(f"[{t}] {name:<8} {seconds:7.1f}s  {counts}")


def _done(ctx: Ctx, t: int, name: str) -> dict | None:
    """The info of a finished stage (resume), else None."""
    if not ctx.run.stage_done(t, name):
        return None
    info = ctx.run.stage_info(t, name)
    ctx.metrics.stage_seconds[name] = round(info.get("seconds", 0.0), 3)
    ctx.report(f"[{t}] {name:<8} (done before, resumed)")
    return info


def _rollout_chunked(ctx: Ctx, prompts: list[Prompt], stage_name: str, t: int, via_creator: bool) -> tuple[list[ScoredPrompt], RolloutStats]:
    """Rollout + scoring in chunks, two in flight, so generation of one overlaps scoring of another."""
    size = max(4, math.ceil(len(prompts) / 8))
    chunks = [prompts[i : i + size] for i in range(0, len(prompts), size)]
    s = ctx.cfg.solver
    spec = SamplingSpec(s.n_responses, s.temperature, s.top_p, s.max_new_tokens)
    task = ray.remote(num_cpus=0)(rollout)

    def submit(chunk: list[Prompt]):
        if via_creator:
            return ctx.actors.creator.estimate.remote(chunk, t)
        return task.remote(ctx.actors.policy, ctx.actors.reward, chunk, spec, ctx.cfg.run.seed, stage_name, t, ctx.timeout)

    results: list[tuple[list[ScoredPrompt], RolloutStats]] = []
    ctx.report.progress(f"[{t}] {stage_name}", 0, len(prompts), "prompts")
    inflight = [submit(c) for c in chunks[:2]]
    nxt = 2
    while inflight:
        results.append(ray.get(inflight.pop(0), timeout=ctx.timeout))
        if nxt < len(chunks):
            inflight.append(submit(chunks[nxt]))
            nxt += 1
        ctx.report.progress(f"[{t}] {stage_name}", sum(len(r[0]) for r in results), len(prompts), "prompts")
    scored = [sp for r, _ in results for sp in r]
    stats = RolloutStats(
        generate_seconds=sum(st.generate_seconds for _, st in results),
        score_seconds=sum(st.score_seconds for _, st in results),
        new_tokens=sum(st.new_tokens for _, st in results),
        nonfinite_rewards=sum(st.nonfinite_rewards for _, st in results),
        retries=[line for _, st in results for line in st.retries],
    )
    log_retries(ctx, t, stage_name, stats.retries)
    return with_informativeness(scored, ctx.cfg.creator.metric), stats


def log_retries(ctx: Ctx, t: int, stage_name: str, lines: list[str]) -> None:
    """Batches that had to be resent (a replica or the scorer died, or came back stale): they happen
    in actors and tasks whose logs the driver does not show, so they are reported here."""
    for line in lines:
        ctx.run.log_event("retry", iteration=t, stage=stage_name, message=line)
        ctx.report(f"[{t}] {stage_name:<8} retried: {line}")


def _scored_stage(ctx: Ctx, t: int, name: str, buffer: PromptBuffer, prompts: list[Prompt], via_creator: bool) -> list[ScoredPrompt]:
    """estimate and solve are one operation (rollout + score) on different prompts and actors."""
    path = ctx.run.iteration_dir(t) / SCORED_FILES[name]
    if _done(ctx, t, name) is not None:
        return load_scored(path, buffer)
    with stage(ctx, t, name) as info:
        scored, stats = _rollout_chunked(ctx, prompts, name, t, via_creator=via_creator)
        save_scored(path, scored)
        info.update(prompts=len(scored), new_tokens=stats.new_tokens, nonfinite=stats.nonfinite_rewards, retries=len(stats.retries),
                    generate_s=round(stats.generate_seconds, 2), score_s=round(stats.score_seconds, 2))
    return scored


def estimate(ctx: Ctx, t: int, buffer: PromptBuffer, current: list[Prompt]) -> list[ScoredPrompt]:
    """Step 1: n responses of pi_{t-1} per prompt of X_{t-1}, their rewards (by the creator actor)."""
    return _scored_stage(ctx, t, "estimate", buffer, current, via_creator=True)


def sample(ctx: Ctx, t: int, buffer: PromptBuffer, scored: list[ScoredPrompt]) -> list[Prompt]:
    """Step 2: k = ceil(sample_frac |X|) prompts, by informativeness."""
    path = ctx.run.iteration_dir(t) / "sampled.json"
    if _done(ctx, t, "sample") is not None:
        return buffer.prompts(_read_ids(path))
    with stage(ctx, t, "sample") as info:
        picked: list[Prompt] = ray.get(ctx.actors.creator.sample.remote(scored, t), timeout=ctx.timeout)
        atomic_write_json(path, {"ids": [p.id for p in picked]})
        info.update(sampled=len(picked), of=len(scored))
    return picked


def evolve(ctx: Ctx, t: int, buffer: PromptBuffer, parents: list[Prompt]) -> list[Prompt]:
    """Step 3: rewrites of the sampled prompts, parsed, filtered, with lineage."""
    path = ctx.run.iteration_dir(t) / "evolved.parquet"
    if (info := _done(ctx, t, "evolve")) is not None:
        ctx.metrics.filter_counts = info.get("dropped", {})
        return load_prompts_table(path)
    with stage(ctx, t, "evolve") as info:
        ctx.report.progress(f"[{t}] evolve", 0, len(parents), "parents")  # one creator call: the bar shows it runs
        children, report, stats = ray.get(ctx.actors.creator.evolve.remote(parents, buffer.texts(), t), timeout=ctx.timeout)
        log_retries(ctx, t, "evolve", stats.retries)
        save_prompts_table(path, children)
        info.update(requested=report.total, kept=report.kept, new_tokens=stats.new_tokens, dropped=report.dropped)
        ctx.metrics.filter_counts = report.dropped
    return children


def mix(ctx: Ctx, t: int, buffer: PromptBuffer, evolved: list[Prompt], current: list[Prompt]) -> list[Prompt]:
    """Step 4: evolved prompts plus a uniform sample of the buffer (creator.evolved_ratio)."""
    path = ctx.run.iteration_dir(t) / TRAIN_PROMPTS
    if _done(ctx, t, "mix") is not None:
        return buffer.prompts(_read_ids(path))
    with stage(ctx, t, "mix") as info:
        ids = buffer.mix([p.id for p in evolved], ctx.cfg.creator.evolved_ratio, derive_seed(ctx.cfg.run.seed, "mix", t), fallback_size=len(current))
        atomic_write_json(path, {"ids": ids})
        info.update(train_prompts=len(ids), evolved=len(evolved))
    return buffer.prompts(ids)


def fixed_prompts(ctx: Ctx, t: int, buffer: PromptBuffer) -> list[Prompt]:
    """The baseline's training prompts: the fixed set, or a fresh uniform sample of
    prompts.baseline_sample of it (seeded per iteration, so a resumed iteration draws the same)."""
    k = ctx.cfg.prompts.baseline_sample
    ids = buffer.ids() if k is None else buffer.mix([], 1.0, derive_seed(ctx.cfg.run.seed, "baseline", t), fallback_size=k)
    atomic_write_json(ctx.run.iteration_dir(t) / TRAIN_PROMPTS, {"ids": ids})
    return buffer.prompts(ids)


def solve(ctx: Ctx, t: int, buffer: PromptBuffer, train_prompts: list[Prompt]) -> list[ScoredPrompt]:
    """Step 5: n responses of pi_{t-1} per training prompt, scored."""
    return _scored_stage(ctx, t, "solve", buffer, train_prompts, via_creator=False)


def pairs(ctx: Ctx, t: int, solved: list[ScoredPrompt]) -> list:
    """chosen = argmax reward, rejected = argmin; ties and small margins dropped."""
    path = ctx.run.iteration_dir(t) / "pairs.parquet"
    if (info := _done(ctx, t, "pairs")) is not None:
        ctx.metrics.pairs_dropped = info.get("dropped", {})
        return load_pairs(path)
    with stage(ctx, t, "pairs") as info:
        built, report = build_pairs(solved, ctx.cfg.solver.min_margin, t)
        save_pairs(path, built)
        info.update(pairs=len(built), dropped=report.dropped)
        ctx.metrics.pairs_dropped = report.dropped
    return built


def train(ctx: Ctx, t: int, built: list) -> dict:
    """Step 6: preference-optimize pi_{t-1} -> pi_t; save it as the iteration's policy; sync engines."""
    policy_dir = ctx.run.iteration_dir(t) / POLICY
    trainer = ctx.actors.trainer
    if (info := _done(ctx, t, "train")) is not None:
        ray.get(trainer.load.remote(str(policy_dir), t), timeout=ctx.timeout)
        sync_engines(ctx, t, from_path=policy_dir)
        return info
    with stage(ctx, t, "train") as info:
        result = _wait_training(ctx, t, trainer.train.remote(built, t))  # no pairs: pi_t = pi_{t-1}, steps 0
        info.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if not built:
            info["skipped"] = "no pairs"
        t_save = time.perf_counter()
        ray.get(trainer.save.remote(str(policy_dir), t), timeout=ctx.timeout)
        info["save_s"] = round(time.perf_counter() - t_save, 3)
        fault_point(t, "train:saved")
        info["sync_s"] = round(sync_engines(ctx, t), 3)
    return info


def _wait_training(ctx: Ctx, t: int, ref) -> dict:
    """The training round's result; meanwhile the trainer's step count feeds the progress bar."""
    deadline = time.monotonic() + ctx.timeout
    while not ray.wait([ref], timeout=2.0)[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"iteration {t}: training took longer than ray.timeout_s = {ctx.timeout:g}s")
        done, total = ray.get(ctx.actors.trainer.progress.remote(), timeout=60)
        ctx.report.progress(f"[{t}] train", done, total or None, "steps")
    return ray.get(ref)


def sync_engines(ctx: Ctx, t: int, from_path: Path | None = None) -> float:
    """Weight sync: the trainer's state dict, put once in the object store, to every engine replica;
    the creator's copy of the engine pool learns the new weights' label (actors.pool)."""
    version = f"policy-{t}"
    if from_path is not None:
        weights: object = str(from_path)
        seconds = ctx.actors.policy.load_weights_from_path(weights, version)
    else:
        weights = ctx.actors.trainer.state_dict.remote(t)
        seconds = ctx.actors.policy.update_weights(weights, version)
    ray.get(ctx.actors.creator.adopt_policy_weights.remote([weights], version), timeout=ctx.timeout)
    ctx.engines_hold = t
    return seconds


def commit(ctx: Ctx, t: int, buffer: PromptBuffer, estimated: list[ScoredPrompt], sampled: list[Prompt], solved: list[ScoredPrompt], built: list, train_info: dict) -> None:
    """Step 7: the new buffer version, metrics.json, then MANIFEST.json (the commit) and LATEST."""
    folder = ctx.run.iteration_dir(t)
    t_commit = time.perf_counter()
    with stage(ctx, t, "commit") as info:
        buffer.update_stats(estimated, t)
        buffer.update_stats(solved, t)
        buffer.mark_sampled([p.id for p in sampled])
        buffer.mark_trained([s.prompt.id for s in solved])
        buffer.save(folder / "prompts.parquet")
        m = ctx.metrics
        m.num_sampled, m.num_train_prompts, m.num_pairs = len(sampled), len(solved), len(built)
        m.num_evolved = sum(1 for p in buffer.prompts([s.prompt.id for s in solved]) if p.iteration == t and not p.is_seed)
        m.info_summary = summarize([s.info for s in estimated] if estimated else [s.info for s in solved])
        m.reward_summary = summarize([r for s in solved for r in s.finite_rewards])
        m.nonfinite_rewards = sum(s.num_nonfinite for s in [*estimated, *solved])
        ps = pair_stats(built)
        m.mean_margin = ps.get("mean_margin")
        m.train_loss = train_info.get("train_loss")
        m.reward_accuracy = train_info.get("reward_accuracy")
        m.train_steps = int(train_info.get("steps", 0))
        m.tokens_generated = {"estimate": _info(ctx, t, "estimate", "new_tokens"), "evolve": _info(ctx, t, "evolve", "new_tokens"), "solve": _info(ctx, t, "solve", "new_tokens")}
        m.extra = {"buffer_size": len(buffer), "sync_s": float(train_info.get("sync_s", 0.0)), "save_s": float(train_info.get("save_s", 0.0))}
        # Orchestration overhead: the iteration's wall time (in this process, up to here) that no actor
        # spent generating, scoring or training. The manifest below adds a little that this misses.
        m.extra.update(busy_summary(ctx.actors.drain_busy(ctx.timeout), ctx.started, time.time()))
        info.update(buffer=len(buffer))
        # metrics.json is part of the commit, so it records the commit's time up to this write.
        m.stage_seconds["commit"] = round(time.perf_counter() - t_commit, 3)
        atomic_write_json(folder / "metrics.json", m.to_dict())
    fault_point(t, "commit:manifest")
    ctx.run.commit(t)
    ctx.run.prune_policies(ctx.cfg.checkpoint.keep_policies)
    if ctx.tensorboard is not None:
        log_scalars(ctx.tensorboard, t, m.to_dict())


def tensorboard_writer(run: RunDir):
    """A TensorBoard SummaryWriter on <run>/tensorboard/ if the tensorboard package is installed
    (optional: `pip install tensorboard`), else None. Outside iterations/: never part of a commit."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run.root / "tensorboard"))


def log_scalars(writer, t: int, metrics: dict) -> None:
    """Every finite number of an iteration's metrics.json as a scalar at step t (tag: the key path)."""
    for key, value in flatten(metrics).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and key != "iteration":
            writer.add_scalar(key.replace(".", "/"), value, t)
    writer.flush()


def _info(ctx: Ctx, t: int, name: str, key: str) -> int:
    return int(ctx.run.stage_info(t, name).get(key, 0)) if ctx.run.stage_done(t, name) else 0


# --- iterations -----------------------------------------------------------------------------------


def run_iteration(ctx: Ctx, t: int) -> None:
    """One iteration of Algorithm 1 (or of the baseline), resuming from its finished stages."""
    ctx.metrics = IterationMetrics(iteration=t)
    ctx.started = time.time()
    ctx.actors.drain_busy(ctx.timeout)  # spans from before this iteration (actor start-up, an earlier resume) are not its work
    prev = ctx.run.iteration_dir(t - 1)
    buffer = PromptBuffer.load(prev / "prompts.parquet")
    if ctx.engines_hold != t - 1 and not ctx.run.stage_done(t, "train"):
        raise RuntimeError(f"engines serve the policy of iteration {ctx.engines_hold}, iteration {t} needs {t - 1}")
    if ctx.cfg.run.baseline:
        estimated, sampled = [], []
        train_prompts = fixed_prompts(ctx, t, buffer)
    else:
        current = buffer.prompts(_read_ids(prev / TRAIN_PROMPTS))  # X_{t-1}: what iteration t-1 trained on
        estimated = estimate(ctx, t, buffer, current)
        sampled = sample(ctx, t, buffer, estimated)
        evolved = evolve(ctx, t, buffer, sampled)
        buffer.add(evolved)
        train_prompts = mix(ctx, t, buffer, evolved, current)
    solved = solve(ctx, t, buffer, train_prompts)
    built = pairs(ctx, t, solved)
    train_info = train(ctx, t, built)
    commit(ctx, t, buffer, estimated, sampled, solved, built, train_info)


def init_iteration_zero(cfg: RunConfig, run: RunDir, policy_path: str) -> None:
    """Iteration 0: the seed buffer and the initial policy, committed like any other iteration."""
    if run.committed(0):
        return
    folder = run.iteration_dir(0)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = load_seed_prompts(cfg.prompts.path, cfg.prompts.column, cfg.prompts.limit)
    PromptBuffer.from_prompts(seeds).save(folder / "prompts.parquet")
    atomic_write_json(folder / TRAIN_PROMPTS, {"ids": [p.id for p in seeds]})
    target = folder / POLICY
    if not target.exists():
        tmp = folder / f".{POLICY}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(policy_path, tmp, ignore=shutil.ignore_patterns("EVA_SOURCE", ".*"))
        tmp.rename(target)
    atomic_write_json(folder / "metrics.json", IterationMetrics(iteration=0, extra={"buffer_size": len(seeds)}).to_dict())
    run.commit(0)
    run.log_event("init", seeds=len(seeds), policy=policy_path)


def run_loop(cfg: RunConfig, run: RunDir, report: Reporter) -> int:
    """Run (or resume) iterations until `run.iterations` are committed; returns the last committed."""
    problems = run.verify_all()
    if problems:
        from eva.checkpoint import CorruptCheckpointError

        raise CorruptCheckpointError(f"{run.root}: committed iterations fail verification:\n  " + "\n  ".join(problems), problems)
    initial = resolve_model_path(cfg.model.path)
    init_iteration_zero(cfg, run, initial)
    last = max(t for t in run.iterations() if run.committed(t))
    if last >= cfg.run.iterations:
        report(f"nothing to do: {last} iterations committed (run.iterations = {cfg.run.iterations})")
        return last
    init_ray(cfg)
    report("starting actors (vLLM engines, reward, trainer, creator) ...")
    t0 = time.perf_counter()
    start_policy = str(run.iteration_dir(last) / POLICY)
    actors = start_actors(cfg, start_policy, str(run.iteration_dir(0) / POLICY), start_iteration=last)
    report(f"actors up in {time.perf_counter() - t0:.1f}s")
    run.log_event("actors_up", seconds=round(time.perf_counter() - t0, 2), nodes=actors.nodes)
    ctx = Ctx(cfg=cfg, run=run, actors=actors, report=report, engines_hold=last, tensorboard=tensorboard_writer(run))
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
            run_iteration(ctx, t)
            run.log_event("iteration_end", iteration=t, seconds=round(time.perf_counter() - t_iter, 2))
            last = t
    finally:
        signal.signal(signal.SIGINT, previous)
        actors.shutdown()
        if ctx.tensorboard is not None:
            ctx.tensorboard.close()
    return last
