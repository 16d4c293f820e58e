"""The loop's training stage with a real trainer actor (issue 18, items 3 and 4): a round that stops
finishing steps fails after ray.train_step_timeout_s (not a wall clock for the round), and a trainer
that crashes mid-round is restarted by Ray, given pi_{t-1} again and continues from the round's last
step checkpoint, with the retry in events.jsonl."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from actors.cluster import Actors
from actors.trainer import PolicyTrainer
from eva.checkpoint import RunDir
from eva.config import load_config
from eva.types import PreferencePair
from pipelines.loop import Ctx, train_round

pytestmark = pytest.mark.ray

PAIRS = [
    PreferencePair(f"p{i}", f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.", "Figure it out.", 1.0, 0.0, 1)
    for i in range(24)
]


class Quiet:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        self.lines.append(message)

    def progress(self, description: str, done: int, total: int | None, unit: str = "") -> None:
        pass


def setup(ray, tiny_model_path, tmp_path, overrides: list[str], max_restarts: int = 0):
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", *overrides], preset="tiny")
    run = RunDir(cfg.run.run_dir)
    run.init(cfg)
    shutil.copytree(tiny_model_path, run.iteration(0).policy)
    policy = str(run.iteration(0).policy)
    trainer = ray.remote(num_cpus=0.5, max_concurrency=2, max_restarts=max_restarts)(PolicyTrainer).remote(
        policy, policy, cfg.solver, cfg.model.dtype, str(tmp_path / "work"), 0, iteration=0
    )
    ray.get(trainer.ready.remote(), timeout=300)
    actors = Actors(policy=None, creator_engines=None, reward=None, trainer=trainer)  # type: ignore[arg-type]
    return Ctx(cfg=cfg, run=run, actors=actors, report=Quiet()), trainer


def test_a_round_that_finishes_no_step_fails_after_train_step_timeout_s(ray_session, tiny_model_path, tmp_path):
    def stall_steps(trainer_self):  # runs inside the actor: a closure, so Ray ships it by value
        """Every optimizer step of the next rounds first sleeps 60 s (a hung collective, a stuck data
        loader), however fast the machine: far above the 0.5 s allowed (the driver looks every 2 s)."""
        from transformers import TrainerCallback

        make = trainer_self._make_trainer

        class Stall(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                time.sleep(60)

        def stalled(*args, **kwargs):
            made = make(*args, **kwargs)
            made.add_callback(Stall())
            return made

        trainer_self._make_trainer = stalled
        return True

    ctx, trainer = setup(ray_session, tiny_model_path, tmp_path, ["ray.train_step_timeout_s=0.5"])
    assert ray_session.get(trainer.__ray_call__.remote(stall_steps), timeout=60)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"finished no step for 0.5s .*ray.train_step_timeout_s"):
            train_round(ctx, 1, PAIRS)
        assert time.monotonic() - t0 < 60  # not ray.timeout_s (3600 s)
    finally:
        ray_session.kill(trainer)


def test_a_crashed_trainer_is_restarted_and_the_round_continues_from_its_step_checkpoint(
    ray_session, tiny_model_path, tmp_path
):
    ray = ray_session
    overrides = [
        "solver.per_device_batch_size=1",
        "solver.gradient_accumulation_steps=2",
        "solver.checkpoint_steps=2",
        "ray.restart_timeout_s=300",
    ]
    ctx, trainer = setup(ray, tiny_model_path, tmp_path, overrides, max_restarts=1)

    def crash_after_step_5() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if ray.get(trainer.progress.remote(), timeout=60)[0] >= 5:
                ray.kill(trainer, no_restart=False)  # a crash: Ray restarts it with iteration 0's policy
                return
            time.sleep(0.05)

    killer = threading.Thread(target=crash_after_step_5)
    killer.start()
    try:
        result = train_round(ctx, 1, PAIRS)
        killer.join(timeout=60)
        assert result["steps"] == 12 and 4 <= result["resumed_at_step"] < 12 and result["resumed_at_step"] % 2 == 0
        [retry] = [e for e in ctx.run.events() if e["kind"] == "retry"]
        assert retry["stage"] == "train" and "step checkpoint" in retry["message"]
        assert (ctx.run.iteration(1).train_checkpoints).is_dir()  # until the stage saves the policy
    finally:
        ray.kill(trainer)
