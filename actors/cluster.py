"""Start Ray and the actors of a run from its config: engines, reward scorer, creator, trainer.

Each actor declares the resources its config section asks for. Requests must fit the cluster: Ray
waits forever, silently, for an actor it cannot place, so every wait here has a timeout and the
sizes are checked against the cluster before anything starts.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray

from actors.creator import Creator
from actors.engine import GenerationEngine
from actors.pool import EnginePool
from eva.config import ActorResources, RunConfig

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
}


class ClusterError(RuntimeError):
    """The cluster cannot host the run as configured (the message says what to change)."""


def init_ray(cfg: RunConfig) -> None:
    """Join `ray.address` / RAY_ADDRESS, else start a local cluster of `ray.num_cpus` CPUs."""
    if ray.is_initialized():
        return
    env = dict(ACTOR_ENV)
    for passthrough in ("EVA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH"):
        if os.environ.get(passthrough):
            env[passthrough] = os.environ[passthrough]
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(runtime_env={"env_vars": env}, log_to_driver=False, configure_logging=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **kwargs)
    else:  # "local": a fresh cluster, never silently joining one that `ray start` left running
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)


def _check_fits(cfg: RunConfig, with_creator_engine: bool) -> None:
    wanted = {"CPU": 0.0, "GPU": 0.0}
    groups: list[tuple[str, ActorResources]] = [("engine", cfg.ray.engine), ("reward", cfg.ray.reward), ("trainer", cfg.ray.trainer), ("creator", cfg.ray.creator)]
    for name, res in groups:
        count = res.replicas if name == "engine" else 1
        if name == "creator" and with_creator_engine:
            count += res.replicas  # the creator's own engine replicas
        wanted["CPU"] += res.num_cpus * count
        wanted["GPU"] += res.num_gpus * count
    have = ray.cluster_resources()
    for key, need in wanted.items():
        if need > have.get(key, 0.0) + 1e-9:
            raise ClusterError(
                f"the actors ask for {need:g} {key} in all but the Ray cluster has {have.get(key, 0.0):g}: "
                f"lower ray.<actor>.num_{key.lower()}s / replicas, or give the cluster more (ray.num_cpus)"
            )


def _remote(cls, res: ActorResources, **options):
    return ray.remote(cls).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_restarts=res.max_restarts, **options)


@dataclass
class Actors:
    policy: EnginePool
    creator_engines: EnginePool
    creator: object  # ActorHandle[Creator]
    reward: object  # ActorHandle[RewardActor]
    trainer: object  # ActorHandle[PolicyTrainer]

    def shutdown(self) -> None:
        for handle in [*self.policy.engines, *self.creator_engines.engines, self.creator, self.reward, self.trainer]:
            try:
                ray.kill(handle)
            except Exception:  # already gone
                pass


def workdir_for(cfg: RunConfig) -> str:
    """Node-local scratch (vLLM/inductor caches, trainer output): never the shared run directory."""
    path = Path(tempfile.gettempdir()) / f"eva-{cfg.run.name}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def start_actors(cfg: RunConfig, policy_path: str, initial_path: str) -> Actors:
    """Create every actor and wait until all are up (the slow part is importing vLLM)."""
    from actors.reward import RewardActor  # heavy imports (transformers, trl) only when starting a run
    from actors.trainer import PolicyTrainer

    own_creator = cfg.creator.model != "policy"
    _check_fits(cfg, own_creator)
    work = workdir_for(cfg)
    timeout = cfg.ray.timeout_s
    engine_cls = _remote(GenerationEngine, cfg.ray.engine)
    policy = EnginePool([engine_cls.remote(policy_path, cfg.model, work, cfg.run.seed) for _ in range(cfg.ray.engine.replicas)], timeout)
    if own_creator:
        creator_path = initial_path if cfg.creator.model == "initial" else cfg.creator.model
        cengine = _remote(GenerationEngine, cfg.ray.creator)
        creator_engines = EnginePool([cengine.remote(creator_path, cfg.model, work, cfg.run.seed) for _ in range(cfg.ray.creator.replicas)], timeout)
    else:
        creator_engines = policy
    reward = _remote(RewardActor, cfg.ray.reward).remote(cfg.reward, initial_path, work)
    trainer = _remote(PolicyTrainer, cfg.ray.trainer).remote(policy_path, initial_path, cfg.solver, cfg.model.dtype, work, cfg.run.seed, threads=cfg.ray.trainer.threads)
    creator = _remote(Creator, cfg.ray.creator, max_concurrency=4).remote(
        policy, creator_engines, reward, cfg.creator, cfg.solver, cfg.run.seed, timeout
    )
    actors = Actors(policy, creator_engines, creator, reward, trainer)
    pending = [e.ready.remote() for e in {*policy.engines, *creator_engines.engines}]
    pending += [reward.info.remote(), creator.ready.remote(), trainer.ready.remote()]
    try:
        ray.get(pending, timeout=timeout)
    except Exception:
        actors.shutdown()
        raise
    return actors
