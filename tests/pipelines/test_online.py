"""The online mode end to end through the CLI on the tiny model (real Ray, vLLM, the trainer actor):
two commits, what they hold, the commands that read a run directory; and the resume-equivalence
test: SIGKILL inside the steps, at the admission stage, after the policy is saved and before the
MANIFEST, each resumed in a fresh process, ends with the committed tables, policy weights and
optimizer state of the uninterrupted run.

The reward is a small user function (a module written into the test's folder, on PYTHONPATH for
the actors too): the tiny random model's answers differ in it, so every group carries a signal and
every step trains, which the arithmetic grader would not give it (it answers nothing right)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from eva.checkpoint import RunDir
from eva.iteration import POLICY_OPTIMIZER
from pipelines.online import ONLINE_STAGES

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
# any fixed function of the text whose values spread over [0, 1] (ties in a group are rare)
REWARD = "def score(prompts, responses):\n    return [sum(map(ord, r)) % 101 / 100 for r in responses]\n"
COMMON = [
    "run.mode=online",
    "reward.kind=function",
    "reward.function=online_reward:score",
    "solver.n_responses=3",
    "solver.max_new_tokens=12",
    "online.steps_per_commit=2",
    "online.minibatch_prompts=3",
    "online.children_per_commit=3",
    "prompts.limit=8",
]
# The resume test: the clipped loss with engines a step behind, a KL reference, a warm-up schedule
# that spans the commits, and admission gating (its own stage, its own rollouts).
RESUMED = [
    *COMMON,
    "online.algorithm=grpo",
    "online.sync_every=2",
    "online.kl_beta=0.05",
    "online.lr_warmup_steps=3",
    "online.buffer.admit_threshold=0.0",
]
FAULTS = ["1:step:0", "1:admit", "2:saved", "2:commit:manifest"]
COMPARED = ("prompts.changes.parquet", "rollouts.parquet", "evolved.parquet", "priority.parquet")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("reward")
    (folder / "online_reward.py").write_text(REWARD)
    return {"PYTHONPATH": os.pathsep.join([str(REPO), str(folder), os.environ.get("PYTHONPATH", "")])}


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def policy(run_dir: Path, t: int) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run_dir).iteration(t).policy / "model.safetensors"))


def test_online_dpo_run_commits_steps_and_every_reading_command_works(eva, env, tmp_path: Path):
    run_dir = tmp_path / "online"
    out = eva(
        "run", "--preset", "tiny", "--run-dir", str(run_dir), *sets([*COMMON, "online.algorithm=online_dpo"]), env=env
    )
    assert "step 3" in out.stdout and "done: 2 iteration(s) committed" in out.stdout
    run = RunDir(run_dir)
    assert run.latest() == 2 and run.verify_all() == []
    for t in (1, 2):
        folder, m = run.iteration(t), run.iteration(t).metrics()
        assert set(run.stages_done(t)) == {s for s in ONLINE_STAGES if s != "admit"}
        assert [r["step"] for r in m.steps] == [2 * t - 2, 2 * t - 1] and m.train_steps == 2
        # online DPO: at the first step of an iteration the reference is the policy itself: loss ln 2
        assert m.steps[0]["pairs"] > 0 and m.steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert m.num_pairs == len(folder.pairs()) == sum(r["pairs"] for r in m.steps)
        rollouts = folder.scored_table("solve").to_pylist()
        assert len(rollouts) == 6 and all(len(r["responses"]) == 3 for r in rollouts)
        assert folder.train_ids() == list(dict.fromkeys(r["prompt_id"] for r in rollouts))
        evolved = folder.evolved()
        assert 0 < m.num_evolved == len(evolved) <= 3 and all(p.iteration == t and p.depth >= 1 for p in evolved)
        priority = folder.priority_table()
        assert (
            priority.num_rows
            == len(folder.buffer())
            == 8 + sum(len(run.iteration(k).evolved()) for k in range(1, t + 1))
        )
    # the trainer's weights reached the committed policy; only the newest commit keeps the optimizer
    assert any(
        not torch.equal(a, b) for a, b in zip(policy(run_dir, 0).values(), policy(run_dir, 2).values(), strict=True)
    )
    assert (run.iteration(2).policy / POLICY_OPTIMIZER).is_file()
    assert not (run.iteration(1).policy / POLICY_OPTIMIZER).exists()

    assert "complete: 2 iterations committed" in eva("status", str(run_dir), env=env).stdout
    eva("inspect", str(run_dir), "--sort", "depth", env=env)
    eva("report", str(run_dir), env=env)
    assert (run_dir / "report" / "index.html").is_file()
    exported = tmp_path / "prompts.jsonl"
    eva("export", str(run_dir), "--what", "prompts", "--out", str(exported), env=env)
    assert len(exported.read_text().splitlines()) == len(run.iteration(2).buffer())
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(
        "".join(json.dumps({"prompt": f"Name {w} things that are blue."}) + "\n" for w in ("two", "three"))
    )
    eva("eval", str(run_dir), "--prompts", str(heldout), env=env)
    assert json.loads(run.eval_path(2).read_text())["n"] == 2


def test_sigkill_anywhere_then_resume_equals_the_uninterrupted_online_run(eva, env, tmp_path: Path):
    """Killed anywhere and resumed, an online run commits what an uninterrupted one commits, bit for bit.
    The killed run pushes its weights after every step over eva's gloo backend (ray.weight_sync, a new
    group with every resume), the reference through the object store: the path changes nothing."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    eva("run", "--preset", "tiny", "--run-dir", str(reference), *sets(RESUMED), env=env)
    gloo = sets([*RESUMED, "ray.weight_sync=gloo"])
    for i, fault in enumerate(FAULTS):
        args = ["run", "--preset", "tiny", "--run-dir", str(killed), *gloo] if i == 0 else ["resume", str(killed)]
        proc = eva(*args, env={**env, "EVA_FAULT_AT": fault}, check=False)
        assert proc.returncode == -9, f"{fault}: expected SIGKILL, got {proc.returncode}\n{proc.stderr[-3000:]}"
        assert not RunDir(killed).committed(int(fault.split(":")[0])), f"{fault}: must not be committed"
    eva("resume", str(killed), env=env)
    run = RunDir(killed)
    assert run.latest() == 2 and run.verify_all() == [] and run.config().ray.weight_sync == "gloo"
    # admission of iteration 1: killed in it, then done; of iteration 2: done, then redone twice
    assert [e["stage"] for e in run.events() if e["kind"] == "stage_start"].count("admit") == 5
    for t in (1, 2):
        for name in COMPARED:
            a = pq.read_table(RunDir(reference).iteration(t).file(name)).to_pylist()
            assert a == pq.read_table(run.iteration(t).file(name)).to_pylist(), f"{name} of iteration {t}"
        a, b = (RunDir(r).iteration(t).buffer().to_table() for r in (reference, killed))
        assert a.equals(b), f"buffer version {t}"
        mine, want = policy(killed, t), policy(reference, t)
        assert mine.keys() == want.keys() and all(torch.equal(mine[k], want[k]) for k in want), f"policy {t}"
        steps = [r["loss"] for r in run.iteration(t).metrics().steps]
        assert steps == [r["loss"] for r in RunDir(reference).iteration(t).metrics().steps]
    a, b = (
        torch.load(RunDir(r).iteration(2).policy / POLICY_OPTIMIZER, weights_only=True) for r in (reference, killed)
    )
    assert a["step"] == b["step"] == 4 and a["scheduler"] == b["scheduler"]
    for pa_, pb_ in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(pa_[k], pb_[k]) for k in pa_)
