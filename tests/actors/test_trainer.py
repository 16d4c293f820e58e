"""The TRL training actor on the tiny model: losses, LoRA merge, which weights the reference really
holds in a second round, atomic save/load, and weight sync into a real vLLM engine through Ray."""

from __future__ import annotations

import gc
import json
import math
import time
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from actors.trainer import PolicyTrainer
from eva.config import SolverSection
from eva.types import PreferencePair

LN2 = math.log(2)
# 8 fixed pairs: a short correct answer is preferred to a fixed rude one.
PAIRS = [
    PreferencePair(
        f"p{i}", f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.", "Figure it out yourself.", 1.0, 0.0, 1
    )
    for i in range(8)
]


def solver(**overrides) -> SolverSection:
    base = dict(learning_rate=1e-3, epochs=1, per_device_batch_size=2, max_length=128, max_prompt_length=64)
    return SolverSection(**{**base, **overrides})


def make(path: str, tmp_path: Path, dtype: str = "float32", **overrides) -> PolicyTrainer:
    return PolicyTrainer(path, path, solver(**overrides), dtype, str(tmp_path / "work"), seed=0, capture_reference=True)


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_one_step_changes_the_parameters(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path)
    before = trainer.state_dict()
    metrics = trainer.train(PAIRS[:2], iteration=1)  # 2 pairs, batch 2, 1 epoch = one step
    assert metrics["steps"] == 1 and metrics["num_pairs"] == 2
    # step 1: policy == reference, so the DPO margin is 0 and the sigmoid loss is exactly ln 2
    assert metrics["losses"][0] == pytest.approx(LN2, abs=1e-6)
    after = trainer.state_dict()
    assert len(changed(before, after)) == len(before)  # Adam moves every tensor that got a gradient
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in after.values())


def test_gradient_checkpointing_gives_the_same_round(tiny_model_path, tmp_path):
    """Recomputing activations in the backward pass trades compute for memory, never the result: two
    rounds with and without it end in bit-identical weights and losses (fp32, no dropout)."""
    runs = []
    for on in (False, True):
        trainer = make(tiny_model_path, tmp_path / str(on), gradient_checkpointing=on)
        metrics = trainer.train(PAIRS, iteration=1)
        metrics2 = trainer.train(PAIRS[::-1], iteration=2)
        runs.append((metrics["losses"] + metrics2["losses"], trainer.state_dict()))
    (losses_off, off), (losses_on, on) = runs
    assert losses_on == losses_off and not changed(off, on)
    assert losses_off[0] == pytest.approx(LN2, abs=1e-6) and losses_off[-1] < LN2  # it trained


def test_empty_pairs_train_nothing(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path)
    before = trainer.state_dict()
    assert trainer.train([], iteration=1)["steps"] == 0
    assert not changed(before, trainer.state_dict())


def test_dpo_sigmoid_loss_goes_down(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path, epochs=3)
    m = trainer.train(PAIRS, iteration=1)
    assert m["steps"] == 12 and len(m["losses"]) == 12  # 8 pairs / batch 2 x 3 epochs
    first, last = sum(m["losses"][:4]) / 4, sum(m["losses"][-4:]) / 4
    assert m["losses"][0] == pytest.approx(LN2, abs=1e-6)
    assert last < first and last < LN2
    assert m["train_loss"] == pytest.approx(sum(m["losses"]) / 12)
    assert m["reward_accuracy"] > 0.5 and m["reward_margin"] > 0
    assert m["seconds_per_step"] > 0


# First-step loss where policy == reference (margin 0), by hand, beta = 0.05:
# ipo (margin - 1/(2 beta))^2 = 100; hinge relu(1 - beta*0) = 1. SimPO/ORPO have no reference: finite only.
# And which TRL trainer ran, with which arguments under TRL's names: SimPO is CPO with loss simpo and
# cpo_alpha 0 (no BC term), its beta CPOConfig.beta; ORPO's lambda is ORPOConfig.beta. The other
# losses' parameters are set to values of their own, to show each loss reads only its own.
OTHERS = dict(beta=0.05, simpo_beta=2.0, simpo_gamma=1.0, orpo_lambda=0.2)


@pytest.mark.parametrize(
    "loss_type, first, trl_trainer, trl_args",
    [
        ("ipo", 100.0, "DPOTrainer", {"loss_type": ["ipo"], "beta": 0.05}),
        ("hinge", 1.0, "DPOTrainer", {"loss_type": ["hinge"], "beta": 0.05}),
        ("simpo", None, "CPOTrainer", {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0}),
        ("orpo", None, "ORPOTrainer", {"beta": 0.2}),
    ],
)
def test_other_losses_run_one_round(tiny_model_path, tmp_path, loss_type, first, trl_trainer, trl_args):
    trainer = make(tiny_model_path, tmp_path, loss_type=loss_type, **OTHERS)
    before = trainer.state_dict()
    m = trainer.train(PAIRS, iteration=1)
    assert m["steps"] == 4 and all(math.isfinite(x) for x in m["losses"])
    assert m["trl_trainer"] == trl_trainer and m["trl_args"] == trl_args
    if first is not None:
        assert m["losses"][0] == pytest.approx(first, rel=1e-5)
    else:
        assert trainer.reference_state() == {}  # reference-free
    assert changed(before, trainer.state_dict())


# 8 pairs, batch 2: 4 steps, learning rate 1e-3, linear schedule (TRL's default). Logged per step is
# the rate that step trained with. warmup_ratio 0.5 warms up over 2 of the 4 steps (0, lr/2), peaks
# at step 3, then decays linearly to 0 over the remaining 2; without warmup it decays from the start.
@pytest.mark.parametrize(
    "warmup_ratio, rates",
    [(0.5, [0.0, 0.5e-3, 1e-3, 0.5e-3]), (0.0, [1e-3, 0.75e-3, 0.5e-3, 0.25e-3])],
)
def test_warmup_ratio_is_a_share_of_the_round_steps(tiny_model_path, tmp_path, warmup_ratio, rates):
    trainer = make(tiny_model_path, tmp_path, warmup_ratio=warmup_ratio)
    m = trainer.train(PAIRS, iteration=1)
    assert m["steps"] == 4 and m["learning_rates"] == pytest.approx(rates, abs=1e-12)


def test_lora_merges_into_the_base_names(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path, finetune="lora", learning_rate=1e-2)
    before = trainer.state_dict()
    m = trainer.train(PAIRS, iteration=1)
    after = trainer.state_dict()
    assert m["losses"][0] == pytest.approx(LN2, abs=1e-6) and m["last_loss"] < LN2
    assert not any("lora" in k or "base_layer" in k for k in after)
    # exactly the adapted projections moved: q/k/v/o of both layers
    assert changed(before, after) == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qkvo"}


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("reference", ["previous", "initial"])
def test_second_round_reference_is_the_configured_policy(tiny_model_path, tmp_path, finetune, reference):
    # bf16 as in the default config: the policy kept in memory must equal what is served and saved
    trainer = make(tiny_model_path, tmp_path, dtype="bfloat16", finetune=finetune, reference=reference)
    initial = trainer.state_dict()
    trainer.train(PAIRS, iteration=1)
    assert trainer.reference_state().keys() == initial.keys()
    round1 = trainer.state_dict()
    trainer.train(PAIRS, iteration=2)
    ref = trainer.reference_state()  # read back from the TRL trainer of round 2
    assert ref.keys() == initial.keys()
    expected, other = (round1, initial) if reference == "previous" else (initial, round1)
    assert all(torch.equal(ref[k], expected[k].float()) for k in ref)
    assert any(not torch.equal(ref[k], other[k].float()) for k in ref)


@pytest.mark.parametrize("reference", ["previous", "initial"])
@pytest.mark.parametrize("precompute", [True, False], ids=["precompute", "per-step"])
def test_a_precomputed_reference_is_freed_before_the_first_step(
    tiny_model_path, tmp_path, monkeypatch, reference, precompute
):
    """With precomputed reference log-probs the TRL trainer, once built, holds the reference's numbers
    (dataset columns, in files of the round's scratch folder), and nothing holds the reference module;
    without, TRL holds it for its per-step forward. capture_reference copied it before it went."""
    trainer = make(tiny_model_path, tmp_path, reference=reference, precompute_ref_log_probs=precompute)
    start = trainer.state_dict()
    built: list[weakref.ref] = []
    reference_model = trainer._reference_model

    def spy():
        module = reference_model()
        built.append(weakref.ref(module))
        return module

    monkeypatch.setattr(trainer, "_reference_model", spy)
    scratch = tmp_path / "scratch"
    trl = trainer._round_trainer(PAIRS, 1, None, scratch)
    gc.collect()
    held = built[0]()
    columns = {"ref_chosen_logps", "ref_rejected_logps"}
    if precompute:
        assert held is None and trl.ref_model is None and trainer._initial is None
        assert columns <= set(trl.train_dataset.column_names)
        # datasets' cache files (the precomputed columns among them) are in the round's scratch folder
        assert trl.train_dataset.cache_files and all(
            Path(f["filename"]).parent == scratch for f in trl.train_dataset.cache_files
        )
    else:
        assert held is not None and trl.ref_model is held and held in trl.accelerator._models
        assert not columns & set(trl.train_dataset.column_names)
    assert not changed(trainer.reference_state(), start)  # round 1: the reference is pi_0 = pi_{t-1}


# Precompute on vs off, measured (fp32, CPU): the tiny model, 2 rounds of 8 steps at lr 1e-3, each case
# below: losses within 4e-7, weights within 6e-7; SmolLM2-135M, a round of 10 steps: identical. The
# precompute runs the reference over other batches (dataset order, other padding): float rounding only.
# The tolerances are 5-10x that, and far below what one step moves.
@pytest.mark.parametrize(("finetune", "reference"), [("full", "previous"), ("full", "initial"), ("lora", "previous")])
def test_precomputed_reference_log_probs_train_the_same_rounds(tiny_model_path, tmp_path, finetune, reference):
    runs = []
    lr = 1e-3 if finetune == "full" else 1e-2  # a LoRA delta B @ A starts from B = 0
    for precompute in (False, True):
        trainer = make(
            tiny_model_path,
            tmp_path / str(precompute),
            finetune=finetune,
            reference=reference,
            precompute_ref_log_probs=precompute,
            learning_rate=lr,
        )
        start = trainer.state_dict()
        first, second = trainer.train(PAIRS, iteration=1), trainer.train(PAIRS[::-1], iteration=2)
        runs.append((first["losses"] + second["losses"], trainer.state_dict(), trainer.reference_state()))
        assert not list((tmp_path / str(precompute) / "work").glob("pairs-*"))  # the round's scratch is gone
    (losses_off, off, ref_off), (losses_on, on, ref_on) = runs
    assert len(losses_on) == 8 and losses_on == pytest.approx(losses_off, abs=2e-6)
    assert max(float((off[k] - on[k]).abs().max()) for k in off) < 5e-6
    assert not changed(ref_off, ref_on)  # round 2's reference: the same weights either way
    # it trained: the weights moved by far more than the tolerance
    assert losses_off[-1] < LN2 and max(float((off[k] - start[k]).abs().max()) for k in off) > 1e-3


def test_save_then_fresh_trainer_has_identical_weights(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path, dtype="bfloat16")
    trainer.train(PAIRS, iteration=1)
    folder = tmp_path / "iterations" / "0001" / "policy"
    trainer.save(str(folder))
    trainer.save(str(folder))  # overwriting a committed-looking folder works too
    assert [p.name for p in folder.parent.iterdir()] == ["policy"]  # no temp leftovers
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert (folder / "tokenizer.json").is_file()
    weights = trainer.state_dict()
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the names vLLM loads from disk
        assert set(f.keys()) == set(weights)
    fresh = PolicyTrainer(str(folder), tiny_model_path, solver(), "bfloat16", str(tmp_path / "w2"), seed=0)
    restored = fresh.state_dict()
    assert not changed(weights, restored) and all(t.dtype == torch.bfloat16 for t in restored.values())
    other = make(tiny_model_path, tmp_path)
    other.load(str(folder))
    assert not changed({k: v.float() for k, v in weights.items()}, other.state_dict())


def test_save_crash_leaves_no_folder(tiny_model_path, tmp_path, monkeypatch):
    trainer = make(tiny_model_path, tmp_path)
    folder = tmp_path / "it" / "policy"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(trainer.tokenizer, "save_pretrained", boom)
    with pytest.raises(OSError):
        trainer.save(str(folder))
    assert list(folder.parent.iterdir()) == []


def test_save_refuses_to_replace_a_committed_policy(tiny_model_path, tmp_path):
    from eva.checkpoint import MANIFEST

    trainer = make(tiny_model_path, tmp_path)
    folder = tmp_path / "iterations" / "0001" / "policy"
    trainer.save(str(folder))
    before = (folder / "model.safetensors").read_bytes()
    (folder.parent / MANIFEST).write_text(json.dumps({"iteration": 1, "files": {}}))  # committed
    trainer.train(PAIRS[:2], iteration=1)
    with pytest.raises(RuntimeError, match="committed iteration: its policy/ is never replaced"):
        trainer.save(str(folder))
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.parent.iterdir()) == [MANIFEST, "policy"]


def test_save_fsyncs_every_file_and_folder_before_the_rename(tiny_model_path, tmp_path, durable_writes):
    trainer = make(tiny_model_path, tmp_path)
    folder = tmp_path / "it" / "policy"
    trainer.save(str(folder))
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    durable_writes.assert_folder(folder)


def test_non_finite_training_fails_the_round_and_the_trainer(tiny_model_path, tmp_path):
    from eva.results import TrainingDivergedError

    trainer = make(tiny_model_path, tmp_path)
    with torch.no_grad():
        trainer.policy.model.norm.weight.fill_(float("nan"))  # every logit nan: so is every loss
    with pytest.raises(
        TrainingDivergedError,
        match=r"iteration 1: training diverged: non-finite loss at step 1, 2, 3, 4 of 4; \d+ parameter tensors hold "
        r"non-finite",
    ):
        trainer.train(PAIRS, iteration=1)
    with pytest.raises(RuntimeError, match="unusable"):  # nothing of it can be saved or synced
        trainer.save(str(tmp_path / "policy"))
    with pytest.raises(RuntimeError, match="unusable"):
        trainer.state_dict()
    assert not (tmp_path / "policy").exists()
    trainer.load(tiny_model_path)  # a policy from disk makes it usable again
    assert trainer.train(PAIRS[:2], iteration=1)["steps"] == 1


def test_divergence_names_steps_and_parameters():
    from actors.trainer import _divergence

    model = torch.nn.Linear(2, 2)
    assert _divergence([0.7, 0.6], model) is None
    with torch.no_grad():
        model.bias[0] = float("inf")
    assert (
        _divergence([0.7, float("nan"), 0.5], model)
        == "non-finite loss at step 2 of 3; 1 parameter tensors hold non-finite values (bias)"
    )


@pytest.mark.parametrize("trl_seeds", [True, False], ids=["trl-seeds", "trl-does-not-seed"])
def test_lora_adapter_depends_on_the_iteration_not_the_process_history(
    tiny_model_path, tmp_path, monkeypatch, trl_seeds
):
    """A resumed run's trainer drew other random numbers before (other rounds, another process):
    round 2 on the same policy and pairs must still start from the same adapter and end identical.
    TRL 1.16's DPOTrainer seeds (args.seed) before it builds the PEFT model; the trainer seeds itself
    too, so this holds without that (trl-does-not-seed)."""
    if not trl_seeds:
        import trl.trainer.dpo_trainer

        monkeypatch.setattr(trl.trainer.dpo_trainer, "set_seed", lambda seed: None)
    first = make(tiny_model_path, tmp_path, finetune="lora", learning_rate=1e-2)
    first.train(PAIRS, iteration=1)
    saved = tmp_path / "iterations" / "0001" / "policy"
    first.save(str(saved))
    torch.manual_seed(123)  # whatever this process did before
    first.train(PAIRS[:4], iteration=2)
    resumed = PolicyTrainer(
        str(saved),
        tiny_model_path,
        solver(finetune="lora", learning_rate=1e-2),
        "float32",
        str(tmp_path / "w2"),
        seed=0,
    )
    torch.manual_seed(456)
    torch.rand(1000)
    resumed.train(PAIRS[:4], iteration=2)
    a, b = first.state_dict(), resumed.state_dict()
    assert not changed(a, b)
    other_iteration = PolicyTrainer(
        str(saved),
        tiny_model_path,
        solver(finetune="lora", learning_rate=1e-2),
        "float32",
        str(tmp_path / "w3"),
        seed=0,
    )
    other_iteration.train(PAIRS[:4], iteration=3)  # another adapter init: the seed really is per iteration
    assert changed(a, other_iteration.state_dict())


def test_trust_remote_code_reaches_every_load(tiny_model_path, tmp_path, monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def record(klass, path, *args, _real=real, **kwargs):
            seen.append((klass.__name__, kwargs.get("trust_remote_code")))
            return _real(klass, path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(record))
    trainer = PolicyTrainer(
        tiny_model_path,
        tiny_model_path,
        solver(reference="initial"),
        "float32",
        str(tmp_path / "w"),
        seed=0,
        trust_remote_code=True,
    )
    trainer.train(PAIRS[:2], iteration=1)  # loads the initial policy as the reference too
    trainer.load(tiny_model_path)
    assert seen == [
        ("AutoTokenizer", True),
        ("AutoModelForCausalLM", True),
        ("AutoModelForCausalLM", True),
        ("AutoModelForCausalLM", True),
    ]


@pytest.mark.ray
def test_trainer_actor_weights_reach_a_vllm_engine_actor(ray_session, tiny_model_path, tmp_path):
    """Trainer and engine in their own Ray actors: the state dict goes through the object store into
    vLLM's reload_weights, greedy output changes, and pushing the start weights back restores it."""
    from actors.engine import GenerationEngine, SamplingSpec
    from eva.config import ModelSection

    ray = ray_session
    greedy = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_tokens=12)
    model = ModelSection(path=tiny_model_path, dtype="float32", max_model_len=256)
    engine = ray.remote(num_cpus=0.5)(GenerationEngine).remote(tiny_model_path, model, str(tmp_path / "engine"))
    trainer = ray.remote(num_cpus=0.5)(PolicyTrainer).remote(
        tiny_model_path, tiny_model_path, solver(learning_rate=1e-2, epochs=2), "float32", str(tmp_path / "trainer"), 0
    )
    try:
        assert ray.get(trainer.ready.remote(), timeout=120)["threads"] == 1
        ray.get(engine.ready.remote(), timeout=300)
        texts = [PAIRS[0].prompt, PAIRS[5].prompt]

        def generate() -> list[tuple[str, ...]]:
            batch = ray.get(engine.generate.remote(["a", "b"], texts, [0, 0], greedy), timeout=120)
            return [g.responses for g in batch.generations]

        before = generate()
        start = ray.get(trainer.state_dict.remote(), timeout=60)
        m = ray.get(trainer.train.remote(PAIRS, 1), timeout=300)
        assert m["steps"] == 8 and m["last_loss"] < LN2
        assert ray.get(engine.update_weights.remote(trainer.state_dict.remote()), timeout=120) > 0
        assert generate() != before
        ray.get(engine.update_weights.remote(ray.put(start)), timeout=120)
        assert generate() == before
    finally:
        ray.kill(engine)
        ray.kill(trainer)


@pytest.mark.ray
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_round_resumed_from_a_step_checkpoint_ends_where_an_uninterrupted_round_ends(
    ray_session, tiny_model_path, tmp_path, finetune
):
    """A trainer actor killed (SIGKILL, mid-round) after some step checkpoints; a fresh trainer given
    the same folder continues from the last complete one and ends with exactly the weights and
    per-step losses of a round that was never interrupted."""
    from actors.trainer import CHECKPOINT_MARKER, last_step_checkpoint

    ray = ray_session
    pairs = PAIRS * 3  # 24 pairs, batch 1 x 2 accumulated: 12 optimizer steps
    args = dict(per_device_batch_size=1, gradient_accumulation_steps=2, checkpoint_steps=2, learning_rate=1e-2)
    args["finetune"] = finetune
    whole = make(tiny_model_path, tmp_path / "whole", **args)
    expected = whole.train(pairs, iteration=1, checkpoint_dir=str(tmp_path / "whole-ckpt"))
    assert expected["steps"] == 12 and expected["resumed_at_step"] == 0

    folder = tmp_path / "crashed-ckpt"
    actor = ray.remote(num_cpus=0.5, max_concurrency=2)(PolicyTrainer).remote(
        tiny_model_path, tiny_model_path, solver(**args), "float32", str(tmp_path / "crashed"), 0
    )
    ray.get(actor.ready.remote(), timeout=120)
    ref = actor.train.remote(pairs, 1, str(folder))
    deadline = time.monotonic() + 300
    while ray.get(actor.progress.remote(), timeout=60)[0] < 5:
        assert time.monotonic() < deadline and not ray.wait([ref], timeout=0.05)[0], "the round ended too soon"
    ray.kill(actor)  # a crash in the middle of the round
    resumed = make(tiny_model_path, tmp_path / "resumed", **args)
    at = last_step_checkpoint(folder, resumed.round_key(pairs, 1))
    assert at is not None and (Path(at) / CHECKPOINT_MARKER).is_file()
    step = int(at.rsplit("-", 1)[1])
    assert 4 <= step < 12 and step % 2 == 0
    # a round on other pairs, of another iteration, or with another setting never resumes from it
    assert last_step_checkpoint(folder, resumed.round_key(pairs[:-1], 1)) is None
    assert last_step_checkpoint(folder, resumed.round_key(pairs, 2)) is None
    other = make(tiny_model_path, tmp_path / "other", **{**args, "learning_rate": 2e-2})
    assert last_step_checkpoint(folder, other.round_key(pairs, 1)) is None
    got = resumed.train(pairs, iteration=1, checkpoint_dir=str(folder))
    assert got["resumed_at_step"] == step and got["steps"] == 12
    assert got["losses"] == expected["losses"]  # the steps before the crash come from the checkpoint's history
    a, b = whole.state_dict(), resumed.state_dict()
    assert not changed(a, b), sorted(changed(a, b))[:5]
    assert changed(a, make(tiny_model_path, tmp_path / "start", **args).state_dict())  # the round did train


def test_gradient_checkpointing_switch_recomputes_activations_and_trains_the_same(tiny_model_path, tmp_path):
    off = make(tiny_model_path, tmp_path / "off")
    on = make(tiny_model_path, tmp_path / "on", gradient_checkpointing=True)
    m_off, m_on = off.train(PAIRS[:4], iteration=1), on.train(PAIRS[:4], iteration=1)
    assert on.policy.is_gradient_checkpointing and not off.policy.is_gradient_checkpointing
    assert m_on["steps"] == m_off["steps"] == 2
    assert m_on["losses"] == pytest.approx(m_off["losses"], abs=1e-5)  # the same maths, recomputed
    a, b = off.state_dict(), on.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_updates_below_half_a_bf16_ulp_are_kept_in_fp32_masters_and_saved(tiny_model_path, tmp_path, finetune):
    """lr 1e-6 moves the weights (~0.02) by far less than half a bf16 ulp (~6e-5): rounded to bf16
    after the round, as eva did, the round would be lost. The fp32 masters keep it, the served bf16
    weights are its rounding, and a save/load (resume) restores the masters exactly."""
    from actors.trainer import MASTERS

    lr = 1e-6 if finetune == "full" else 1e-5  # a LoRA delta B @ A starts from B = 0: it needs more to show at all
    trainer = make(tiny_model_path, tmp_path / "a", dtype="bfloat16", finetune=finetune, learning_rate=lr)
    start = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    served_before = trainer.state_dict()
    trainer.train(PAIRS, iteration=1)
    served_after = trainer.state_dict()
    if finetune == "full":
        masters = {k: v.detach() for k, v in trainer.policy.state_dict().items()}
    else:
        masters = trainer._masters
        assert masters and all(k.rsplit(".", 2)[1] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in masters)
    moved = [k for k in masters if not torch.equal(masters[k], start[k]) and k in served_after]  # tied: once
    assert len(moved) >= len(masters) // 2, (len(moved), len(masters))
    # most of the update is below half an ulp of the weights: it does not show in the served bf16
    # weights (their rounding), it lives in the masters
    kept = sum(int((masters[k] != start[k]).sum()) for k in moved)
    shown = sum(int((served_after[k].float() != served_before[k].float()).sum()) for k in moved)
    assert kept > 1000 and shown < 0.2 * kept, (shown, kept)
    assert all(torch.equal(served_after[k], masters[k].to(torch.bfloat16)) for k in moved)

    folder = tmp_path / "iterations" / "0001" / "policy"
    trainer.save(str(folder))
    assert (folder / MASTERS).is_file()
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # what vLLM loads: bf16, top level only
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    fresh = PolicyTrainer(str(folder), tiny_model_path, trainer.solver, "bfloat16", str(tmp_path / "b"), seed=0)
    restored = fresh.policy.state_dict() if finetune == "full" else fresh._masters
    assert restored.keys() >= masters.keys()
    assert all(torch.equal(restored[k], masters[k].to(restored[k].device)) for k in masters)
    assert not changed(fresh.state_dict(), served_after)


def test_a_sleeping_trainer_holds_no_policy_and_load_brings_back_the_masters(tiny_model_path, tmp_path):
    """model.sleep: between rounds the trainer frees its policy; load() of the saved folder restores the
    fp32 masters exactly, and the next round trains as the one that never slept."""
    awake = make(tiny_model_path, tmp_path / "a", dtype="bfloat16", learning_rate=1e-6)
    slept = make(tiny_model_path, tmp_path / "b", dtype="bfloat16", learning_rate=1e-6)
    for trainer in (awake, slept):
        trainer.train(PAIRS, iteration=1)
    folder = tmp_path / "iterations" / "0001" / "policy"
    slept.save(str(folder))
    masters = {k: v.clone() for k, v in slept.policy.state_dict().items()}
    slept.sleep()
    assert slept.policy is None
    with pytest.raises(RuntimeError, match="sleeps"):
        slept.state_dict()
    slept.load(str(folder), 1)
    assert all(torch.equal(v, masters[k]) for k, v in slept.policy.state_dict().items())
    for trainer in (awake, slept):
        trainer.train(PAIRS, iteration=2)
    after = {k: v for k, v in awake.policy.state_dict().items()}
    assert all(torch.equal(v, after[k]) for k, v in slept.policy.state_dict().items())
