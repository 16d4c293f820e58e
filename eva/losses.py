"""Preference losses by name (DESIGN.md step 6): which TRL trainer runs each one, with which TRL
`loss_type`, whether it needs a reference model, and which solver parameters it reads.

One small name -> spec table, `LOSSES`, in the manner of `eva.metrics.METRICS`: the config checks
`solver.loss_type` against it and the training actor builds its TRL config from the entry, so a loss
name is spelled here and nowhere else. No TRL import: the entries hold TRL 1.16's names as strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from eva.config import SolverSection

# TRL trainer families: dpo = trl.DPOTrainer, cpo = trl.experimental.cpo.CPOTrainer,
# orpo = trl.experimental.orpo.ORPOTrainer (actors/trainer.py maps them to the classes).
Family = Literal["dpo", "cpo", "orpo"]


@dataclass(frozen=True)
class LossSpec:
    """One preference loss.

    `params` maps a solver config field to the TRL config argument it is passed as (SimPO's beta is
    `solver.simpo_beta` here and `CPOConfig.beta` in TRL); `fixed` are TRL config arguments with a
    value that makes the loss what its name says (SimPO: CPO without the BC term, `cpo_alpha=0`).
    """

    name: str
    family: Family
    trl_loss_type: str | None  # the TRL config's `loss_type`; None where the trainer has one loss (ORPO)
    reference_free: bool
    params: dict[str, str]
    fixed: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


LOSSES: dict[str, LossSpec] = {}


def register(spec: LossSpec) -> LossSpec:
    """Add a loss to `LOSSES` under `spec.name`."""
    if spec.name in LOSSES:
        raise ValueError(f"loss {spec.name!r} is already registered")
    LOSSES[spec.name] = spec
    return spec


_DPO = {"beta": "beta"}
register(LossSpec("sigmoid", "dpo", "sigmoid", False, _DPO, summary="DPO (Rafailov et al. 2023)"))
register(LossSpec("ipo", "dpo", "ipo", False, _DPO, summary="IPO (Azar et al. 2023); beta is its tau"))
register(LossSpec("hinge", "dpo", "hinge", False, _DPO, summary="SLiC hinge loss"))
register(LossSpec("robust", "dpo", "robust", False, _DPO, summary="robust DPO (Chowdhury et al. 2024)"))
register(
    LossSpec(
        "simpo",
        "cpo",
        "simpo",
        True,
        {"simpo_beta": "beta", "simpo_gamma": "simpo_gamma"},
        {"cpo_alpha": 0.0},
        summary="SimPO (Meng et al. 2024): CPO's simpo loss without the BC term",
    )
)
register(LossSpec("orpo", "orpo", None, True, {"orpo_lambda": "beta"}, summary="ORPO (Hong et al. 2024)"))


def loss_names() -> tuple[str, ...]:
    return tuple(LOSSES)


def loss_spec(name: str) -> LossSpec:
    """The spec of loss `name`; ValueError listing the known names for any other."""
    if name not in LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; known: {', '.join(repr(n) for n in LOSSES)}")
    return LOSSES[name]


def loss_parameters(solver: SolverSection) -> dict[str, float]:
    """The solver fields the configured loss reads, with their values (e.g. {'beta': 0.05})."""
    return {name: getattr(solver, name) for name in loss_spec(solver.loss_type).params}


def trl_arguments(solver: SolverSection) -> dict[str, Any]:
    """The loss's arguments of the TRL config (DPOConfig / CPOConfig / ORPOConfig), under TRL's names."""
    spec = loss_spec(solver.loss_type)
    args: dict[str, Any] = {} if spec.trl_loss_type is None else {"loss_type": spec.trl_loss_type}
    args.update({spec.params[name]: value for name, value in loss_parameters(solver).items()})
    args.update(spec.fixed)
    return args
