"""The preference-loss table: every loss the config ever accepted is there, each spec reads real
solver fields, the config validates against it, and the TRL arguments carry TRL's names."""

from __future__ import annotations

import pytest

from eva.config import ConfigError, SolverSection, load_config
from eva.losses import LOSSES, LossSpec, loss_names, loss_parameters, loss_spec, register, trl_arguments

# The names solver.loss_type accepted before the table existed (the Literal LossType): none may go.
EARLIER_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "simpo", "orpo")


def test_every_earlier_loss_name_is_in_the_table():
    assert loss_names() == EARLIER_LOSS_TYPES
    for name in EARLIER_LOSS_TYPES:
        assert SolverSection(loss_type=name).loss_type == name


def test_specs_name_their_trainer_and_reference():
    assert {n: (s.family, s.trl_loss_type, s.reference_free) for n, s in LOSSES.items()} == {
        "sigmoid": ("dpo", "sigmoid", False),
        "ipo": ("dpo", "ipo", False),
        "hinge": ("dpo", "hinge", False),
        "robust": ("dpo", "robust", False),
        "simpo": ("cpo", "simpo", True),
        "orpo": ("orpo", None, True),
    }


@pytest.mark.parametrize("name", EARLIER_LOSS_TYPES)
def test_spec_params_are_solver_fields_with_descriptions(name):
    spec = LOSSES[name]
    assert spec.name == name and spec.params
    for field in spec.params:
        assert SolverSection.model_fields[field].description


def test_unknown_loss_is_refused_naming_the_field_and_the_known_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["solver.loss_type=dpo"], preset="tiny")
    msg = str(e.value)
    assert "--set solver.loss_type=dpo" in msg and "solver.loss_type" in msg
    assert all(repr(n) in msg for n in EARLIER_LOSS_TYPES)
    with pytest.raises(ValueError, match="unknown preference loss 'kto'"):
        loss_spec("kto")


def test_register_refuses_a_second_spec_under_a_name():
    with pytest.raises(ValueError, match="already registered"):
        register(LossSpec("sigmoid", "dpo", "sigmoid", False, {"beta": "beta"}))
    assert LOSSES["sigmoid"].summary.startswith("DPO")  # the original entry is untouched


def test_defaults_keep_what_simpo_and_orpo_got_before():
    # Before their own fields, simpo and orpo were passed solver.beta (default 0.05) as TRL's beta.
    s = SolverSection()
    assert s.beta == s.simpo_beta == s.orpo_lambda == 0.05 and s.simpo_gamma == 0.5


@pytest.mark.parametrize(
    "overrides, parameters, trl",
    [
        (
            dict(loss_type="sigmoid", beta=0.1, simpo_beta=2.0, orpo_lambda=0.3),
            {"beta": 0.1},
            {"loss_type": "sigmoid", "beta": 0.1},
        ),
        (dict(loss_type="ipo", beta=0.2), {"beta": 0.2}, {"loss_type": "ipo", "beta": 0.2}),
        (
            dict(loss_type="simpo", beta=0.1, simpo_beta=2.5, simpo_gamma=1.25),
            {"simpo_beta": 2.5, "simpo_gamma": 1.25},
            {"loss_type": "simpo", "beta": 2.5, "simpo_gamma": 1.25, "cpo_alpha": 0.0},
        ),
        (dict(loss_type="orpo", beta=0.1, orpo_lambda=0.3), {"orpo_lambda": 0.3}, {"beta": 0.3}),
    ],
)
def test_each_loss_passes_its_own_parameters_under_trl_names(overrides, parameters, trl):
    solver = SolverSection(**overrides)
    assert loss_parameters(solver) == parameters
    assert trl_arguments(solver) == trl
