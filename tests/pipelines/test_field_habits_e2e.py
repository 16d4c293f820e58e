"""End to end, offline, on the tiny model: a run whose policy and seed prompts are named by Hugging
Face Hub name (a model and a chat-message dataset in hand-filled caches, HF_HUB_OFFLINE=1), started
through the Python API with W&B offline; then `eva eval` keeps the held-out responses, `eva eval-diff`
lists them, and the Python API reads it all back as datasets and a metrics table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from hubcache import cache_hub_dataset, cache_hub_model
from wandb_log import history

from eva.buffer import load_seed_prompts
from pipelines import api
from pipelines.tracking import scalars

REPO = Path(__file__).resolve().parents[2]


def test_hub_names_wandb_eval_responses_and_the_python_api(tiny_model_path: str, tmp_path: Path, eva):
    hf = tmp_path / "hf"
    cache_hub_model(hf / "hub", "acme/tiny-chat", Path(tiny_model_path))
    texts = [p.text for p in load_seed_prompts("builtin:seed", limit=30)]
    chats = [{"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": x}]} for x in texts]
    cache_hub_dataset(hf / "datasets", "acme/instructions", {"chat": {"train": chats[:20], "test": chats[20:]}})
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"prompt": x}) + "\n" for x in texts[20:26]))
    env = {"HF_HOME": str(hf), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    run_dir = tmp_path / "run"
    sets = [
        "model.path=acme/tiny-chat",
        "prompts.path=acme/instructions",
        "prompts.subset=chat",
        "prompts.split=train",
        "prompts.column=messages",
        "prompts.limit=12",
        "run.report_to=[wandb]",
    ]
    code = (
        "from pipelines import api; "
        f"r = api.run(preset='tiny', overrides={sets!r}, run_dir={str(run_dir)!r}, iterations=1); "
        "print('ITERATIONS', r.iterations)"
    )
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ITERATIONS [0, 1]" in proc.stdout

    run = api.open_run(run_dir)
    # the seed prompts: the last user turns of the Hub dataset's chat split, in order, up to the limit
    assert run.prompts(0)["text"] == texts[:12]
    # the policy: a copy of the cached snapshot of the Hub name
    snapshot = next((hf / "hub" / "models--acme--tiny-chat" / "snapshots").iterdir())
    policy0 = run.root / "iterations" / "0000" / "policy"
    assert (policy0 / "model.safetensors").read_bytes() == (snapshot / "model.safetensors").read_bytes()
    # metrics as a table, and the same numbers in W&B's offline log at step 1
    table = run.metrics()
    metrics = json.loads((run.root / "iterations" / "0001" / "metrics.json").read_text())
    assert list(table["iteration"]) == [0, 1] and table.loc[1, "num_pairs"] == metrics["num_pairs"]
    assert table.loc[1, "stage_seconds.solve"] == pytest.approx(metrics["stage_seconds"]["solve"])
    logged = history(run.root)[1]
    for key, value in scalars(metrics).items():
        assert logged[key] == pytest.approx(value, rel=1e-9), key
    assert {"health/pair_yield", "stage_seconds/evolve"} <= logged.keys()
    evolved = run.evolved(1)
    assert logged["evolved_prompts/nrows"] == min(len(evolved), 16) and len(evolved) > 0
    assert set(run.pairs(1).column_names) >= {"prompt", "chosen", "rejected", "margin"}
    child = evolved[0]
    assert [p.id for p in run.lineage(child["id"][:10], 1)][-1] == child["id"]

    # held-out evaluation keeps the responses; their outcomes give the reported win rate
    out = eva("eval", str(run_dir), "--prompts", str(heldout), env=env).stdout
    assert "biggest wins of iteration 1" in out and "biggest losses of iteration 1" in out
    result = json.loads((run.root / "eval" / "iteration_0001.json").read_text())
    responses = datasets.load_dataset("parquet", data_files=str(run.root / result["responses"]), split="train")
    assert responses.num_rows == 6 and responses["prompt"] == texts[20:26]
    points = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    scored = [points[o] for o in responses["outcome"] if o != "nonfinite"]
    assert len(scored) == result["n"] and sum(scored) / len(scored) == pytest.approx(result["win_rate"])
    assert sum(responses["reward"]) / 6 == pytest.approx(result["mean_reward"])
    assert run.eval_responses(1)["response"] == responses["response"]
    diff = eva("eval-diff", str(run_dir), "--top", "3", "--losses", env=env).stdout
    losses = sorted((r for r in responses if r["delta"] < 0), key=lambda r: r["delta"])[:3]
    assert f"biggest losses of iteration 1 over the initial policy ({len(losses)} shown)" in diff
    for r in losses:
        assert r["prompt_id"] in diff
