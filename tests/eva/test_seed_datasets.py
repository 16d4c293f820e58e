"""Seed prompts by Hugging Face dataset name, offline: a dataset in the datasets cache exactly where a
first online `load_dataset("acme/prefs", ...)` leaves it (HF_HUB_OFFLINE=1, never a network call),
a local dataset repository folder, and columns of chat messages (the last user turn is the prompt)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hubcache import cache_hub_dataset  # tests/hubcache.py

from eva.buffer import load_seed_prompts
from eva.hub import is_hub_name
from eva.tables import DataError


def rows(subset: str, split: str, n: int = 6) -> list[dict]:
    return [
        {
            "prompt": f"{subset} {split} prompt {i}",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"first turn {i}"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": f"{subset} {split} last user turn {i}"},
                {"role": "assistant", "content": "another answer"},
            ],
        }
        for i in range(n)
    ]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    import datasets
    import huggingface_hub.constants

    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: nothing reaches the network
    cache_hub_dataset(
        cache,
        "acme/prefs",
        {s: {"train": rows(s, "train"), "test_prefs": rows(s, "test_prefs", 4)} for s in ("default", "chat")},
    )
    return cache


def test_hub_name_with_split_subset_and_plain_strings(hub_cache: Path):
    got = load_seed_prompts("acme/prefs", "prompt", subset="default", split="test_prefs")
    assert [p.text for p in got] == [f"default test_prefs prompt {i}" for i in range(4)]
    got = load_seed_prompts("acme/prefs", "prompt", 3, subset="chat", split="train")
    assert [p.text for p in got] == [f"chat train prompt {i}" for i in range(3)]
    # no split named: train
    got = load_seed_prompts("acme/prefs", "prompt", subset="chat")
    assert len(got) == 6 and got[0].text == "chat train prompt 0"


def test_hub_name_with_a_chat_messages_column_and_streaming(hub_cache: Path):
    got = load_seed_prompts("acme/prefs", "messages", subset="chat", split="test_prefs")
    assert [p.text for p in got] == [f"chat test_prefs last user turn {i}" for i in range(4)]
    streamed = load_seed_prompts("acme/prefs", "messages", 2, subset="chat", split="train", streaming=True)
    assert [p.text for p in streamed] == ["chat train last user turn 0", "chat train last user turn 1"]


def test_hub_name_errors_name_the_dataset_and_the_cause(hub_cache: Path):
    with pytest.raises(DataError, match=r"acme/prefs: .*split='nope'.*failed.*nope"):
        load_seed_prompts("acme/prefs", "prompt", subset="chat", split="nope")
    with pytest.raises(DataError, match=r"acme/prefs \(subset='chat', split='train'\): no column 'text'.*messages"):
        load_seed_prompts("acme/prefs", "text", subset="chat", split="train")
    with pytest.raises(DataError, match=r"acme/absent: not a local file or folder.*HF_HUB_OFFLINE is set"):
        load_seed_prompts("acme/absent", "prompt")
    with pytest.raises(DataError, match=r"missing\.jsonl: file does not exist"):
        load_seed_prompts("missing.jsonl", "prompt")


def test_is_hub_name(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    assert is_hub_name("HuggingFaceH4/ultrafeedback_binarized") and is_hub_name("imdb")
    assert not is_hub_name("local")  # an existing folder
    assert not is_hub_name("seeds.jsonl") and not is_hub_name("data/seeds.parquet")
    assert not is_hub_name("/abs/path") and not is_hub_name("a/b/c") and not is_hub_name("builtin:seed")


def test_local_dataset_repository_folder_with_subsets(tmp_path: Path):
    repo = tmp_path / "prefs"
    for subset in ("default", "chat"):
        for split in ("train", "test"):
            (repo / subset).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows(subset, split, 3)), repo / subset / f"{split}-0.parquet")
    configs = "".join(
        f"- config_name: {s}\n  data_files:\n  - split: train\n    path: {s}/train-*\n"
        f"  - split: test\n    path: {s}/test-*\n"
        for s in ("default", "chat")
    )
    (repo / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    got = load_seed_prompts(str(repo), "messages", subset="chat", split="test")
    assert [p.text for p in got] == [f"chat test last user turn {i}" for i in range(3)]
    got = load_seed_prompts(str(repo), "prompt")  # default subset, train split
    assert [p.text for p in got] == [f"default train prompt {i}" for i in range(3)]


def test_chat_messages_in_jsonl_and_their_errors(tmp_path: Path):
    path = tmp_path / "chats.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": "What is 2+2?"}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "it"}]}
            ]
        },
        {"messages": rows("x", "y", 1)[0]["messages"]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [p.text for p in load_seed_prompts(str(path), "messages")] == [
        "What is 2+2?",
        "Describe\nit",
        "x y last user turn 0",
    ]
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"chats.jsonl: line 1: 'messages': chat messages without a user turn"):
        load_seed_prompts(str(path), "messages")
    path.write_text(json.dumps({"messages": ["not", "messages"]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: 'messages': a list, but not chat messages"):
        load_seed_prompts(str(path), "messages")
