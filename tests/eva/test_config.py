import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from eva.config import (
    DEFAULT_PRESET,
    ConfigError,
    RunConfig,
    config_from_dict,
    load_config,
    parse_override,
    preset_names,
)


def test_defaults_follow_design():
    cfg = RunConfig()
    assert cfg.solver.n_responses == 6
    assert cfg.creator.sample_frac == 0.25
    assert cfg.creator.num_variants == 4
    assert cfg.creator.evolved_ratio == 0.8
    assert cfg.solver.beta == 0.05
    assert cfg.solver.temperature == 0.7 and cfg.solver.top_p == 0.9
    assert cfg.creator.metric == "gap"


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(RunConfig)


def test_presets_ship_and_load():
    assert {"cpu-default", "tiny"} <= set(preset_names())
    default = load_config()
    assert default.run.name == DEFAULT_PRESET
    assert default.model.path == "builtin:smollm2-135m-instruct"
    assert default.run.iterations == 2
    tiny = load_config(preset="tiny")
    assert tiny.model.path == "builtin:tiny"


def test_frozen_and_extra_forbidden():
    cfg = RunConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.run.seed = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown field"):
        config_from_dict({"run": {"nmae": "x"}}, "x.yaml")


def test_layering_file_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  seed: 7\ncreator:\n  sample_frac: 0.5\n")
    cfg = load_config(path, ["creator.sample_frac=0.1", "solver.loss_type=ipo"], preset="tiny")
    assert cfg.run.seed == 7
    assert cfg.creator.sample_frac == 0.1
    assert cfg.solver.loss_type == "ipo"
    assert cfg.model.path == "builtin:tiny"  # from the preset
    # A file without a preset starts from the schema defaults, not cpu-default.
    assert load_config(path).model.max_model_len == RunConfig().model.max_model_len


def test_error_names_file_field_and_expectation(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("creator:\n  sample_frac: 1.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "creator.sample_frac" in msg and "less than or equal to 1" in msg and "1.5" in msg


def test_error_names_the_override():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["solver.loss_type=dpo"], preset="tiny")
    msg = str(e.value)
    assert "--set solver.loss_type=dpo" in msg and "solver.loss_type" in msg and "'sigmoid'" in msg


def test_unknown_field_lists_known_ones(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text("solver:\n  n_respones: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "solver.n_respones: unknown field" in str(e.value) and "n_responses" in str(e.value)


@pytest.mark.parametrize(
    "text, fragment",
    [("- a\n- b\n", "expected a mapping"), ("run: [\n", "not valid YAML")],
)
def test_malformed_files(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_missing_file_and_unknown_preset(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*cpu-default"):
        load_config(preset="huge")


@pytest.mark.parametrize("item", ["novalue", "=3", "a..b=1"])
def test_bad_override_syntax(item: str):
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override(item)


def test_cross_field_validation(tmp_path: Path):
    with pytest.raises(ConfigError, match="max_prompt_length"):
        load_config(None, ["solver.max_prompt_length=900", "solver.max_length=512"], preset="tiny")
    # The error blames what set the section last, not the preset that created it.
    with pytest.raises(ConfigError, match=r"--set solver.max_prompt_length=900: solver: .*max_prompt_length \(900\)"):
        load_config(None, ["solver.max_prompt_length=900"], preset="cpu-default")
    path = tmp_path / "c.yaml"
    path.write_text("creator:\n  min_prompt_chars: 2000\n")
    with pytest.raises(ConfigError, match=rf"{path}: creator: .*min_prompt_chars \(2000\)"):
        load_config(path, [], preset="tiny")
    with pytest.raises(ConfigError, match="needs `function"):
        load_config(None, ["reward.kind=function"], preset="tiny")


def test_fingerprint_ignores_mutable_fields_only():
    a = load_config(preset="tiny")
    more = load_config(None, ["run.iterations=5"], preset="tiny")
    other = load_config(None, ["solver.beta=0.1"], preset="tiny")
    assert a.fingerprint() == more.fingerprint()
    assert a.fingerprint() != other.fingerprint()
    assert a.changed_fields(other) == ["solver.beta"]
    assert config_from_dict(a.to_dict(), "run.yaml") == a


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["reward.kind=rm"],
            r"--set reward.kind=rm: reward.kind: .*unknown scorer kind 'rm'; known: judge, reward_model, "
            r"function, task, combined",
        ),
        (
            ["reward.kind=wellformed"],
            r"reward.kind: .*'wellformed' cannot be the whole reward .*allowed here: judge, reward_model, "
            r"function, task, combined",
        ),
        (
            ['reward.components=[{"kind": "combined"}]'],
            r"reward.components.0.kind: .*'combined' cannot be a component of combined; allowed here: judge, "
            r"reward_model, function, relevance, wellformed",
        ),
        (
            ["reward.judge_template=nope"],
            r"reward.judge_template: .*unknown judge template 'nope'; known: plain, rubric, fewshot, yesno, "
            r"yesno_plain",
        ),
        (
            ['reward.components=[{"kind": "judge", "judge_template": "Rubric"}]'],
            r"reward.components.0.judge_template: .*unknown judge template 'Rubric'; known: plain, rubric",
        ),
    ],
)
def test_scorer_kinds_and_judge_templates_are_checked_when_the_config_loads(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets, preset="tiny")


def test_known_scorer_kinds_and_templates_load():
    cfg = load_config(None, ["reward.kind=judge", "reward.judge_template=yesno"], preset="tiny")
    assert (cfg.reward.kind, cfg.reward.judge_template) == ("judge", "yesno")
    components = '[{"kind": "judge", "judge_template": "rubric", "weight": 0.5}, {"kind": "wellformed", "weight": 0.5}]'
    cfg = load_config(None, [f"reward.components={components}"], preset="tiny")
    assert [(c.kind, c.judge_template) for c in cfg.reward.components] == [("judge", "rubric"), ("wellformed", None)]


# --- degenerate values refused at load ----------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "reward.components=[{kind: judge, weight: .nan}, {kind: wellformed, weight: 1}]",
            r"reward\.components\.0\.weight: Input should be a finite number",
        ),
        (
            "reward.components=[{kind: judge, weight: 0}, {kind: wellformed, weight: 0.0}]",
            r"reward: .*judge 0, wellformed 0\) sum to 0; they must sum to a positive number",
        ),
        ("reward.components=[{kind: judge, weight: 1}, {kind: wellformed, weight: -2}]", r"sum to -1"),
        ("ray.timeout_s=.inf", r"ray\.timeout_s: Input should be a finite number"),
        ("ray.placement_timeout_s=.inf", r"ray\.placement_timeout_s: Input should be a finite number"),
        ("solver.temperature=.nan", r"solver\.temperature: Input should be a finite number"),
        ("solver.max_new_tokens=512", r"solver\.max_new_tokens \(512\) must be below model\.max_model_len \(512\)"),
        ("creator.max_new_tokens=4096", r"creator\.max_new_tokens \(4096\) must be below model\.max_model_len \(512\)"),
        (
            "run.max_iterations_without_pairs=0",
            r"run\.max_iterations_without_pairs: Input should be greater than or equal to 1",
        ),
    ],
)
def test_degenerate_values_are_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(overrides=[override], preset="tiny")
    assert f"--set {override}" in str(err.value)


def test_weights_of_an_unused_combination_and_a_positive_sum_are_fine():
    cfg = load_config(
        overrides=["reward.components=[{kind: judge, weight: 2}, {kind: wellformed, weight: -1}]"], preset="tiny"
    )
    assert sum(c.weight for c in cfg.reward.components) == 1
    assert load_config(overrides=["solver.max_new_tokens=511"], preset="tiny").solver.max_new_tokens == 511


def test_reward_functions_lists_every_user_function():
    cfg = load_config(overrides=["reward.kind=function", "reward.function=m:f"], preset="tiny")
    assert cfg.reward.functions() == [("reward.function", "m:f")]
    cfg = load_config(
        overrides=[
            "reward.function=m:default",
            "reward.components=[{kind: function, function: a:b}, {kind: function}, {kind: wellformed}]",
        ],
        preset="tiny",
    )
    assert cfg.reward.functions() == [("reward.components.0.function", "a:b"), ("reward.function", "m:default")]
    assert load_config(preset="tiny").reward.functions() == []


def test_the_pairless_limit_is_mutable():
    a = load_config(preset="tiny")
    b = load_config(overrides=["run.max_iterations_without_pairs=9"], preset="tiny")
    assert a.fingerprint() == b.fingerprint()


def test_a_task_reward_has_no_component_fields_and_no_user_function():
    cfg = load_config(None, ["task.family=arithmetic", "creator.kind=program", "reward.kind=task"], preset="tiny")
    assert cfg.reward.kind == "task" and cfg.reward.functions() == []


@pytest.mark.parametrize(
    "item",
    [
        "solver.checkpoint_steps=0",
        "solver.attn_implementation=fast",
        "solver.gradient_checkpointing=sometimes",
        "ray.train_step_timeout_s=0",
        "ray.restart_timeout_s=-5",
        "reward.batch_tokens=8",
        "model.enforce_eager=maybe",
        "model.seeded_sampling=3",
        "model.batch_invariant=perhaps",
    ],
)
def test_issue_18_fields_refuse_bad_values_naming_the_field(item: str) -> None:
    field = item.split("=")[0]
    with pytest.raises(ConfigError, match=rf"--set {re.escape(item)}: {re.escape(field)}: "):
        load_config(None, [item], preset="tiny")


ONLINE = ["run.mode=online"]


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        (["model.sleep=true"], "model.sleep is true"),
        (["solver.finetune=lora"], "solver.finetune is lora"),
        (["solver.temperature=0"], "solver.temperature is 0"),
        (["online.sync_every=3"], "online.sync_every (3) must divide online.steps_per_commit (8)"),
        (["online.sync_every=2"], "online.sync_every is 2 with the reinforce loss"),
        (["online.algorithm=online_dpo", "online.policy_loss=clip"], "online.policy_loss is for rloo/grpo"),
        (["online.algorithm=online_dpo", "online.kl_beta=0.1"], "online.kl_beta is for rloo/grpo"),
        (["online.algorithm=online_dpo", "solver.loss_type=ipo"], "solver.loss_type is ipo"),
        (["creator.kind=select"], "creator.kind is select"),
        (["creator.metric=mean_inv"], "creator.metric mean_inv is normalized per batch"),
    ],
)
def test_online_mode_refuses_combinations_naming_the_field(items: list[str], fragment: str):
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        load_config(None, [*ONLINE, *items], preset="tiny")
    assert "run.mode is online" in str(info.value)
    load_config(None, items if items != ["model.sleep=true"] else [], preset="tiny")  # offline: not the online check


@pytest.mark.parametrize(
    "item",
    [
        "online.algorithm=ppo",
        "online.policy_loss=kl",
        "online.agg=mean",
        "online.minibatch_prompts=0",
        "online.clip_eps_low=1",
        "online.buffer.decay=0",
        "online.buffer.eps=0",
        "online.buffer.seed_ratio=1.5",
        "online.max_grad_norm=0",
    ],
)
def test_online_fields_refuse_bad_values_naming_the_field(item: str) -> None:
    field = item.split("=")[0]
    with pytest.raises(ConfigError, match=rf"--set {re.escape(item)}: {re.escape(field)}: "):
        load_config(None, [*ONLINE, item], preset="tiny")


def test_online_names_are_the_registries_and_defaults_resolve():
    from eva.online.algos import ADV_ESTIMATORS, AGG_MODES, POLICY_LOSSES
    from eva.online.buffer import PrioritySettings
    from pipelines.online import priority_settings

    section = RunConfig().online
    fields = type(section).model_fields
    assert set(fields["policy_loss"].annotation.__args__[0].__args__) == set(POLICY_LOSSES)  # type: ignore[union-attr]
    assert set(fields["agg"].annotation.__args__[0].__args__) == set(AGG_MODES)  # type: ignore[union-attr]
    assert set(ADV_ESTIMATORS) < set(fields["algorithm"].annotation.__args__)  # type: ignore[union-attr]
    assert (section.resolved_loss(), section.resolved_agg()) == ("reinforce", "seq-mean-token-sum")
    grpo = section.model_copy(update={"algorithm": "grpo"})
    assert (grpo.resolved_loss(), grpo.resolved_agg()) == ("clip", "seq-mean-token-mean")
    cfg = load_config(preset="cpu-arithmetic-online")
    assert cfg.run.mode == "online" and cfg.creator.metric == "learnability"
    assert priority_settings(cfg) == PrioritySettings(seed=0, metric="learnability")  # the buffer's own defaults
    for preset in ("cpu-arithmetic", "cpu-default", "tiny"):  # any preset runs online with one override
        assert load_config(None, ONLINE, preset=preset).run.mode == "online"


def test_precompute_ref_log_probs_is_on_by_default_and_round_trips_through_run_yaml():
    import yaml

    default = load_config(preset="tiny")
    assert RunConfig().solver.precompute_ref_log_probs is True and default.solver.precompute_ref_log_probs is True
    off = load_config(None, ["solver.precompute_ref_log_probs=false"], preset="tiny")
    assert off.solver.precompute_ref_log_probs is False
    assert config_from_dict(yaml.safe_load(off.to_yaml()), "run.yaml") == off
    # it moves the numbers by float rounding: part of what a run computes, not switched silently on resume
    assert default.changed_fields(off) == ["solver.precompute_ref_log_probs"]
    assert default.fingerprint() != off.fingerprint()
    item = "solver.precompute_ref_log_probs=sometimes"
    with pytest.raises(ConfigError, match=rf"--set {re.escape(item)}: solver.precompute_ref_log_probs: "):
        load_config(None, [item], preset="tiny")
