"""Start Ray and the actors of a run from its config: engines (the policy's, and the creator model's when
it has its own), the reward scorer and the trainer.

Each actor declares the resources its config section asks for. Requests must fit the cluster: Ray
waits forever, silently, for an actor it cannot place, so every wait here has a timeout and the
sizes are checked against the cluster before anything starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.engine import GenerationEngine
from actors.models import hub_models, resolve_model_path
from actors.pool import EnginePool
from eva.config import ActorResources, RunConfig
from eva.scorers import SCORER_KINDS

# Environment every actor process gets: one thread each (two cores are easily oversubscribed),
# offline hub, quiet tokenizers.
ACTOR_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "RAY_DEDUP_LOGS": "1",
    # The trainer's state dict travels out-of-band: every engine maps the object store's one copy
    # instead of unpickling a private one (benchmarks/weight_sync.py, 2 GB to 2 receivers: 1.9 vs
    # 5.5 s/GB, receiver PSS 0.91 vs 2.99 GB). Only the trainer returns tensors; engines only read them.
    "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1",
}
# Variables of the launching shell that actors need too, when set: where converted models are
# cached (actors.models.cache_dir) and where eva's code is.
# Also the Hugging Face caches, so that actors find the models and datasets the driver found.
PASSTHROUGH_ENV = ("EVA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE")
# Offline switches of ACTOR_ENV that a run naming Hugging Face Hub models leaves to the shell.
HUB_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def actor_env(environ: Mapping[str, str] | None = None, hub: bool = False) -> dict[str, str]:
    """The environment variables every actor gets: ACTOR_ENV plus those of PASSTHROUGH_ENV that are
    set (non-empty) in `environ` (default os.environ). The one source for `init_ray`, `eva submit`'s
    job runtime_env and the tests' Ray session. `hub`: the config names a Hub model (org/name) the
    actors may have to download, so the offline switches are the shell's own (unset: online)."""
    environ = os.environ if environ is None else environ
    env = {**ACTOR_ENV, **{name: environ[name] for name in PASSTHROUGH_ENV if environ.get(name)}}
    if hub:
        for name in HUB_OFFLINE_ENV:
            env.pop(name)
            if environ.get(name):
                env[name] = environ[name]
    return env


def env_missing_from_job(job_config_json: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Inside a Ray Job: the variables of actor_env() that the job's runtime_env does not set.

    Ray merges ray.init's runtime_env into the job's and refuses (ValueError) any variable both set,
    even to the same value; a job submitted by `eva submit` carries all of actor_env() already, one
    from a RayJob manifest or a plain `ray job submit` may carry some or none. Passing only the
    missing ones gives every actor all of them either way."""
    job_env = (json.loads(job_config_json).get("runtime_env") or {}).get("env_vars") or {}
    return {k: v for k, v in actor_env(environ).items() if k not in job_env}


class ClusterError(RuntimeError):
    """The cluster cannot host the run as configured (the message says what to change)."""


def init_ray(cfg: RunConfig) -> None:
    """Join `ray.address` / RAY_ADDRESS, else start a local cluster of `ray.num_cpus` CPUs."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(
        runtime_env={"env_vars": actor_env(hub=bool(hub_models(cfg)))},
        log_to_driver=False,
        configure_logging=True,
        logging_level="WARNING",
    )
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job_config:
        missing = env_missing_from_job(job_config)
        if missing:
            kwargs["runtime_env"] = {"env_vars": missing}
        else:
            del kwargs["runtime_env"]
    if address:
        ray.init(address=address, **kwargs)
    else:  # "local": a fresh cluster, never silently joining one that `ray start` left running
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)


def _check_fits(cfg: RunConfig, with_creator_engine: bool) -> None:
    wanted = {"CPU": 0.0, "GPU": 0.0}
    groups: list[tuple[ActorResources, int]] = [(cfg.ray.engine, cfg.ray.engine.replicas), (cfg.ray.trainer, 1)]
    if SCORER_KINDS[cfg.reward.kind].actor:
        groups.append((cfg.ray.reward, 1))
    if with_creator_engine:
        groups.append((cfg.ray.creator, cfg.ray.creator.replicas))  # the creator model's own engine replicas
    for res, count in groups:
        wanted["CPU"] += res.num_cpus * count
        wanted["GPU"] += res.num_gpus * count
    have = ray.cluster_resources()
    for key, need in wanted.items():
        if need > have.get(key, 0.0) + 1e-9:
            raise ClusterError(
                f"the actors ask for {need:g} {key} in all but the Ray cluster has {have.get(key, 0.0):g}: "
                f"lower ray.<actor>.num_{key.lower()}s / replicas, or give the cluster more (ray.num_cpus)"
            )


def engine_bundles(
    res: ActorResources, tensor_parallel: int, strategy: str, share: ActorResources | None = None
) -> list[tuple[list[dict[str, float]], str]]:
    """The placement groups of one kind of engine: (bundles, strategy) per group.

    Tensor parallel 1: one group, one {CPU, GPU} bundle per replica, placed by `ray.placement`.
    Tensor parallel k > 1: vLLM's Ray executor starts one worker per rank in the placement group of
    the actor that creates the engine (captured), each worker one whole GPU from its own bundle. So
    each replica gets a group of its own (vLLM takes the first k GPU bundles of the group it sees),
    STRICT_PACK (a replica's ranks on one node, on its fast interconnect): bundle 0 holds the engine
    actor's CPUs and rank 0's GPU, bundles 1..k-1 a GPU each.
    `share` (ray.colocate, tensor parallel 1): the trainer's resources join bundle 0, where it runs
    beside replica 0 on the same GPU.
    """
    if tensor_parallel == 1:
        bundle = {"CPU": res.num_cpus, **({"GPU": res.num_gpus} if res.num_gpus else {})}
        bundles = [dict(bundle) for _ in range(res.replicas)]
        if share is not None:  # ray.colocate: the trainer's CPUs and GPU share in the first replica's bundle
            bundles[0] = {"CPU": res.num_cpus + share.num_cpus, "GPU": res.num_gpus + share.num_gpus}
        return [(bundles, strategy)]
    ranks = [{"CPU": res.num_cpus, "GPU": 1.0}] + [{"GPU": 1.0} for _ in range(tensor_parallel - 1)]
    return [([dict(b) for b in ranks], "STRICT_PACK") for _ in range(res.replicas)]


def _engine_placement(
    res: ActorResources,
    tensor_parallel: int,
    strategy: str,
    timeout_s: float,
    what: str,
    share: ActorResources | None = None,
) -> list:
    """engine_bundles as placement groups, all ready within `timeout_s` (else none is left behind)."""
    groups = [
        placement_group(bundles, strategy=how, name=f"eva-{what}-{os.getpid()}-{i}")
        for i, (bundles, how) in enumerate(engine_bundles(res, tensor_parallel, strategy, share))
    ]
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
    if len(ready) < len(groups):
        for group in groups:
            remove_placement_group(group)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        layout = (
            f"{len(groups)} group(s) of {groups[0].bundle_specs} "
            f"({'STRICT_PACK per replica' if tensor_parallel > 1 else strategy})"
        )
        raise ClusterError(
            f"ray.{what}: {res.replicas} replica(s) as {layout} did not fit the cluster within {timeout_s:g}s "
            f"({len(nodes)} alive "
            f"node(s): {[n.get('Resources', {}) for n in nodes]}); lower replicas, num_cpus/num_gpus or "
            f"tensor_parallel_size, add "
            "nodes, or use placement PACK/SPREAD (STRICT_SPREAD needs one node per replica)"
        )
    return groups


def _engines(cls, res: ActorResources, groups: list, tensor_parallel: int, args: tuple) -> list:
    """One engine actor per replica, all created at once (see `_engine_options`)."""
    return [_remote(cls, res, **options).remote(*args) for options in _engine_options(res, groups, tensor_parallel)]


def _engine_options(res: ActorResources, groups: list, tensor_parallel: int) -> list[dict[str, Any]]:
    """Ray options of each engine replica: bundle i of the one group (TP 1), or bundle 0 of group i,
    asking no GPU itself and capturing its child tasks, so vLLM's rank workers land in the group (TP > 1)."""
    if tensor_parallel == 1:
        return [
            {"scheduling_strategy": PlacementGroupSchedulingStrategy(groups[0], placement_group_bundle_index=i)}
            for i in range(res.replicas)
        ]
    return [
        {
            "num_gpus": 0,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                g, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
        }
        for g in groups
    ]


def shares_gpu(res: ActorResources, tensor_parallel: int = 1) -> bool:
    """Whether an actor may share its GPU with another: a fraction of one (Ray packs fractions onto
    one card). A tensor-parallel engine's ranks take whole GPUs."""
    return tensor_parallel == 1 and 0 < res.num_gpus < 1


def engines_sleep(cfg: RunConfig) -> bool:
    """model.sleep resolved: auto is on when the engines run on CPU (they share the machine's memory
    with the trainer) or share GPUs with it (ray.colocate, or fractional ray.engine.num_gpus and
    ray.trainer.num_gpus: Ray may pack both onto one card). Never in run.mode online: the engines
    generate between every optimizer step (the config refuses model.sleep true there)."""
    if cfg.run.mode == "online":
        return False
    if cfg.model.sleep != "auto":
        return bool(cfg.model.sleep)
    engine = cfg.ray.engine
    fractions = shares_gpu(engine, cfg.model.tensor_parallel_size) and shares_gpu(cfg.ray.trainer)
    return engine.num_gpus == 0 or cfg.ray.colocate or fractions


def weight_sync(cfg: RunConfig) -> str:
    """ray.weight_sync resolved (actors.weight_transfer). auto is the object store everywhere for now:
    on CPU it is 1.3x faster than a gloo broadcast (benchmarks/RESULTS.md, issue 17), and the NCCL and
    CUDA IPC paths have not run on a GPU yet (tests/gpu/test_gpu_colocate.py), so they are chosen by
    name, not by default."""
    return "object_store" if cfg.ray.weight_sync == "auto" else cfg.ray.weight_sync


def transfer_backend(cfg: RunConfig) -> str | None:
    """The vLLM weight-transfer backend the policy's engines are built with; None for the object store."""
    return {"nccl": "nccl", "ipc": "ipc", "gloo": "eva_gloo"}.get(weight_sync(cfg))


@dataclass
class Launch:
    """One actor to start: `create()` makes it, `ready(handle)` is the call to wait on (an ObjectRef)."""

    create: Callable[[], Any]
    ready: Callable[[Any], Any]
    shares_gpu: bool


def launch(launches: list[Launch], timeout_s: float) -> list:
    """Start the actors, return their handles once every one is up (in order of `launches`).

    Actors that may share a GPU start one after another, each up before the next is created: vLLM
    sizes its KV cache from the device's free memory, measured before and after it profiles, so a
    neighbour's weights landing in that window are charged to it (start-up fails with "No available
    memory for the cache blocks", or the cache silently shrinks, depending on timing). The others
    start all at once, meanwhile. On any failure every actor created here is killed."""
    handles: list = []
    try:
        together = [(i, item) for i, item in enumerate(launches) if not item.shares_gpu]
        made = {i: item.create() for i, item in together}
        waits = [item.ready(made[i]) for i, item in together]
        handles.extend(made.values())
        for i, item in enumerate(launches):
            if item.shares_gpu:
                made[i] = item.create()
                handles.append(made[i])
                ray.get(item.ready(made[i]), timeout=timeout_s)
        ray.get(waits, timeout=timeout_s)
    except Exception:
        for handle in handles:
            ray.kill(handle)
        raise
    return [made[i] for i in range(len(launches))]


def _remote(cls, res: ActorResources, **options):
    return ray.remote(cls).options(
        **{"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_restarts": res.max_restarts, **options}
    )


@dataclass
class Actors:
    """The run's actors. One engine pool per model, owned by the driver: `creator_engines` is the
    policy pool itself when the creator generates with the policy (creator.model: policy), so a
    weight push reaches the creator with no second copy to keep in step."""

    policy: EnginePool
    creator_engines: EnginePool
    reward: Any  # ActorHandle[RewardActor]; None when the reward is graded in the rollouts (reward.kind: task)
    trainer: Any  # ActorHandle[PolicyTrainer]
    groups: list = field(default_factory=list)  # placement groups of the engines
    nodes: dict[str, list[str]] = field(default_factory=dict)  # actor kind -> Ray node id of each actor

    def drain_busy(self, timeout_s: float) -> list:
        """Every heavy actor's work spans since the last drain (actors.busy), for the overhead metric."""
        handles = [*{*self.policy.engines, *self.creator_engines.engines}, *self._scorers(), self.trainer]
        refs = [h.drain_busy.remote() for h in handles]
        return [span for spans in ray.get(refs, timeout=timeout_s) for span in spans]

    def _scorers(self) -> list:
        return [] if self.reward is None else [self.reward]

    def sleep(self, timeout_s: float) -> float:
        """Every engine gives its memory to the trainer (model.sleep): the policy's engines drop their
        weights, fixed models (the creator's own, the judge) keep them where vLLM can. Seconds, slowest."""
        refs = self.policy.sleep_async(keep_weights=False)
        if self.creator_engines is not self.policy:
            refs += self.creator_engines.sleep_async(keep_weights=True)
        refs += [r.sleep.remote() for r in self._scorers()]
        return max(ray.get(refs, timeout=timeout_s), default=0.0)

    def wake_up(self, policy_path: str | None, version: str, timeout_s: float) -> float:
        """Every engine back from `sleep`, the policy's serving the policy folder `policy_path` as
        `version` (the pool adopts it: a replica restarted later reloads it), or with None the weights
        pushed into them meanwhile (EnginePool.wake_weights). Seconds, slowest."""
        refs = self.policy.wake_up_async(policy_path, version)
        if self.creator_engines is not self.policy:
            refs += self.creator_engines.wake_up_async()
        refs += [r.wake_up.remote() for r in self._scorers()]
        return max(ray.get(refs, timeout=timeout_s), default=0.0)

    def shutdown(self) -> None:
        for handle in [*self.policy.engines, *self.creator_engines.engines, *self._scorers(), self.trainer]:
            try:
                ray.kill(handle)
            except Exception:  # already gone
                pass
        for group in self.groups:
            try:
                remove_placement_group(group)
            except Exception:
                pass


def workdir_for(cfg: RunConfig) -> str:
    """Node-local scratch (vLLM/inductor caches, trainer output): never the shared run directory."""
    path = Path(tempfile.gettempdir()) / f"eva-{cfg.run.name}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def start_actors(cfg: RunConfig, policy_path: str, initial_path: str, start_iteration: int = 0) -> Actors:
    """Create every actor and wait until all are up (the slow part is importing vLLM).

    Every actor gets a placement group first (engines: `engine_bundles`; reward and trainer: one
    bundle each; with ray.colocate the trainer runs in the first engine bundle), all of them
    reserved within `ray.placement_timeout_s` or the run stops saying what did not fit, instead of an
    actor waiting unplaced for `ray.timeout_s`. Actors that may share a GPU start one after another
    (`launch`).

    `policy_path` holds the policy of iteration `start_iteration`: the engines serve it labelled
    policy-<t> (actors.pool) and the trainer knows which iteration it holds."""
    from actors.reward import RewardActor  # heavy imports (transformers, trl) only when starting a run
    from actors.trainer import PolicyTrainer

    own_creator = cfg.creator.model != "policy"
    has_reward = SCORER_KINDS[cfg.reward.kind].actor  # a task grader is pure code: no process to hold it
    _check_fits(cfg, own_creator)
    work = workdir_for(cfg)
    timeout = cfg.ray.timeout_s
    wait_pg = min(timeout, cfg.ray.placement_timeout_s)
    tp = cfg.model.tensor_parallel_size
    colocate = cfg.ray.colocate  # the trainer's resources in the first engine bundle (engine_bundles)
    wanted = [("engine", cfg.ray.engine, tp, cfg.ray.placement, cfg.ray.trainer if colocate else None)]
    if own_creator:
        wanted.append(("creator", cfg.ray.creator, tp, cfg.ray.placement, None))
    if has_reward:
        wanted.append(("reward", cfg.ray.reward, 1, "PACK", None))
    if not colocate:
        wanted.append(("trainer", cfg.ray.trainer, 1, "PACK", None))
    groups: dict[str, list] = {}
    try:
        for what, res, k, strategy, share in wanted:
            groups[what] = _engine_placement(res, k, strategy, wait_pg, what, share)
    except ClusterError:
        for made in groups.values():
            for group in made:
                remove_placement_group(group)
        raise

    version = f"policy-{start_iteration}"
    sleeps = engines_sleep(cfg)
    transfer = transfer_backend(cfg)  # the policy's engines only: the trainer pushes to them
    launches = [
        _engine_launch(
            cfg.ray.engine, options, tp, (policy_path, cfg.model, work, cfg.run.seed, version, sleeps, transfer)
        )
        for options in _engine_options(cfg.ray.engine, groups["engine"], tp)
    ]
    if own_creator:
        creator_path = initial_path if cfg.creator.model == "initial" else resolve_model_path(cfg.creator.model)
        launches += [
            _engine_launch(
                cfg.ray.creator, options, tp, (creator_path, cfg.model, work, cfg.run.seed, "creator", sleeps)
            )
            for options in _engine_options(cfg.ray.creator, groups["creator"], tp)
        ]
    if has_reward:
        reward_actor = _remote(RewardActor, cfg.ray.reward, scheduling_strategy=_in(groups["reward"]))
        launches.append(
            Launch(
                lambda: reward_actor.remote(
                    cfg.reward, initial_path, work, trust_remote_code=cfg.model.trust_remote_code, sleep_mode=sleeps
                ),
                lambda h: h.info.remote(),
                shares_gpu(cfg.ray.reward),
            )
        )
    trainer_actor = _remote(  # max_concurrency 2: progress() answers while train() runs
        PolicyTrainer,
        cfg.ray.trainer,
        max_concurrency=2,
        scheduling_strategy=_in(groups["engine"] if colocate else groups["trainer"]),
    )
    launches.append(
        Launch(
            lambda: trainer_actor.remote(
                policy_path,
                initial_path,
                cfg.solver,
                cfg.model.dtype,
                work,
                cfg.run.seed,
                threads=cfg.ray.trainer.threads,
                iteration=start_iteration,
                trust_remote_code=cfg.model.trust_remote_code,
                online=cfg.online if cfg.run.mode == "online" else None,
            ),
            lambda h: h.ready.remote(),
            shares_gpu(cfg.ray.trainer),
        )
    )
    all_groups = [g for made in groups.values() for g in made]
    try:
        handles = launch(launches, timeout)
    except Exception:
        for group in all_groups:
            remove_placement_group(group)
        raise
    n_policy, n_creator = cfg.ray.engine.replicas, cfg.ray.creator.replicas if own_creator else 0
    restart = cfg.ray.restart_timeout_s
    policy = EnginePool(handles[:n_policy], timeout, cfg.ray.retries, version=version, restart_timeout_s=restart)
    creator_engines = (
        EnginePool(
            handles[n_policy : n_policy + n_creator], timeout, cfg.ray.retries, "creator", restart_timeout_s=restart
        )
        if own_creator
        else policy  # the creator generates with the policy's engines
    )
    reward = handles[-2] if has_reward else None
    trainer = handles[-1]
    actors = Actors(policy, creator_engines, reward, trainer, all_groups)
    kinds = {
        "engine": policy.engines,
        "creator_engine": creator_engines.engines if own_creator else [],
        "reward": actors._scorers(),
        "trainer": [trainer],
    }
    try:
        pending = {kind: [_node_of(h) for h in handles] for kind, handles in kinds.items()}
        actors.nodes = {kind: ray.get(refs, timeout=timeout) for kind, refs in pending.items() if refs}
    except Exception:
        actors.shutdown()
        raise
    return actors


def _in(groups: list) -> PlacementGroupSchedulingStrategy:
    """Bundle 0 of the first of `groups` (a one-bundle group of its own)."""
    return PlacementGroupSchedulingStrategy(groups[0], placement_group_bundle_index=0)


def _engine_launch(res: ActorResources, options: dict[str, Any], tensor_parallel: int, args: tuple) -> Launch:
    actor = _remote(GenerationEngine, res, **options)
    return Launch(lambda: actor.remote(*args), lambda h: h.ready.remote(), shares_gpu(res, tensor_parallel))


def _node_of(handle):
    """ObjectRef of the Ray node id the actor runs on (asked inside the actor itself)."""
    return handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
