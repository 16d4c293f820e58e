"""Experiment tracking the way TRL does it: `run.report_to` names the trackers (tensorboard, wandb)
that get every committed iteration's metrics.json as scalars (iteration metrics, creator health,
stage times: one tag per key path) and, on W&B, a table of sampled evolved prompts per iteration.

Trackers are optional packages: the default reports to TensorBoard when it is installed; a tracker the
config names but the environment lacks is a config error before anything starts. Their files live in
the run directory beside iterations/ (tensorboard/, wandb/), never part of a commit.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

from eva.checkpoint import RunDir
from eva.config import ConfigError, RunConfig, flatten
from eva.types import Prompt

# tracker -> (module that must import, pip package that provides it)
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
SAMPLE_PROMPTS = 16  # evolved prompts per iteration in W&B's table


def installed(tracker: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[tracker][0]) is not None


def check_trackers(cfg: RunConfig) -> list[str]:
    """The run's trackers; ConfigError naming run.report_to and the package when one is missing."""
    names = cfg.run.trackers(installed)
    missing = [n for n in names if not installed(n)]
    if missing:
        packages = " ".join(_PACKAGES[n][1] for n in missing)
        raise ConfigError(
            f"run.report_to names {', '.join(missing)}, but its package is not installed: pip install {packages} "
            f"(or pip install 'eva-rlhf[{missing[0]}]'), or drop it from run.report_to"
        )
    return names


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Every finite number of an iteration's metrics.json by its key path (a/b/c), `iteration` left out."""
    return {
        key.replace(".", "/"): float(value)
        for key, value in flatten(metrics).items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and key != "iteration"
    }


class Trackers:
    """The open trackers of one run: `log_iteration` after each commit, `close` at the end."""

    def __init__(self, cfg: RunConfig, run: RunDir) -> None:
        self.tensorboard: Any = None
        self.wandb: Any = None
        names = check_trackers(cfg)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run.root / "tensorboard"))
        if "wandb" in names:
            import wandb

            # One W&B run per run directory and config: a resumed run continues it (resume="allow").
            run_id = f"{cfg.run.name}-{cfg.fingerprint()[:12]}"
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "eva"),
                name=cfg.run.name,
                id=run_id,
                resume="allow",
                dir=str(run.root),
                config=cfg.to_dict(),
            )

    def log_iteration(self, t: int, metrics: dict[str, Any], evolved: list[Prompt]) -> None:
        """Iteration t's metrics (and a sample of the prompts it evolved) to every tracker, at step t."""
        values = scalars(metrics)
        if self.tensorboard is not None:
            for tag, value in values.items():
                self.tensorboard.add_scalar(tag, value, t)
            self.tensorboard.flush()
        if self.wandb is not None:
            import wandb

            logged: dict[str, Any] = {"iteration": t, **values}
            if evolved:
                columns: list[str | int] = ["id", "parent_id", "operator", "depth", "text"]
                rows = [[p.id, p.parent_id, p.operator, p.depth, p.text] for p in evolved[:SAMPLE_PROMPTS]]
                logged["evolved_prompts"] = wandb.Table(columns=columns, data=rows)
            self.wandb.log(logged, step=t)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
