"""PromptBuffer, the Parquet tables of an iteration, and seed prompt loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eva.buffer import (
    BUFFER_SCHEMA,
    PAIR_SCHEMA,
    PROMPT_SCHEMA,
    PromptBuffer,
    load_pairs,
    load_prompts_table,
    load_seed_prompts,
    save_pairs,
    save_prompts_table,
)
from eva.tables import DataError
from eva.types import PreferencePair, Prompt, ScoredPrompt


def _seeds(n: int) -> list[Prompt]:
    return [Prompt.seed(f"Seed prompt number {i}") for i in range(n)]


def _scored(p: Prompt, rewards: tuple[float, ...], info: float | None) -> ScoredPrompt:
    return ScoredPrompt(prompt=p, responses=tuple("r" for _ in rewards), rewards=rewards, info=info)


def _lineage_buffer() -> tuple[PromptBuffer, list[Prompt]]:
    """seed -> g1 -> g2 -> g3 (three generations), plus a sibling of g1 and an unrelated seed."""
    seed, other = Prompt.seed("Write a poem about the sea."), Prompt.seed("Explain recursion.")
    g1 = seed.child("Write a sonnet about the sea.", "constraints", 1)
    sibling = seed.child("Write a haiku about a storm at sea.", "concretize", 1)
    g2 = g1.child("Write a sonnet about the sea in iambic pentameter.", "deepen", 2)
    g3 = g2.child("Write a sonnet about the sea in iambic pentameter, rhyming ABAB.", "constraints", 3)
    chain = [seed, g1, g2, g3]
    return PromptBuffer.from_prompts([seed, other, g1, sibling, g2, g3]), chain


# --- membership -------------------------------------------------------------------------------------


def test_add_skips_ids_already_present() -> None:
    buf = PromptBuffer.from_prompts(_seeds(3))
    assert len(buf) == 3
    again = [Prompt.seed("seed PROMPT   number 1"), Prompt.seed("A new one"), Prompt.seed("a new one")]
    assert buf.add(again) == 1  # case/space variants share an id; duplicates inside a batch too
    assert len(buf) == 4
    assert buf.get(again[0].id).text == "Seed prompt number 1"  # first lineage wins
    assert again[1].id in buf and "nope" not in buf
    assert buf.ids()[-1] == again[1].id and buf.get(again[1].id) == again[1]
    assert buf.texts() == [f"Seed prompt number {i}" for i in range(3)] + ["A new one"]
    assert buf.add([]) == 0


def test_get_and_prompts_materialize_records() -> None:
    buf, chain = _lineage_buffer()
    assert buf.get(chain[2].id) == chain[2]
    assert buf.prompts([chain[3].id, chain[0].id]) == [chain[3], chain[0]]
    assert len(buf.prompts()) == 6
    with pytest.raises(KeyError, match="not in the buffer"):
        buf.get("0000000000000000")


# --- stats ------------------------------------------------------------------------------------------------


def test_update_stats_and_counters() -> None:
    seeds = _seeds(3)
    buf = PromptBuffer.from_prompts(seeds)
    assert buf.stats(seeds[0].id) == {
        "rewards": [], "info": None, "mean_reward": None, "n_estimates": 0,
        "last_estimated": -1, "times_sampled": 0, "times_trained": 0,
    }  # fmt: skip
    buf.update_stats([_scored(seeds[0], (1.0, math.nan, 3.0), 2.0), _scored(seeds[1], (math.inf,), None)], iteration=1)
    buf.update_stats([_scored(seeds[0], (0.5, 1.5), 1.0)], iteration=2)
    s0, s1 = buf.stats(seeds[0].id), buf.stats(seeds[1].id)
    assert s0 == {**s0, "rewards": [0.5, 1.5], "info": 1.0, "mean_reward": 1.0, "n_estimates": 2, "last_estimated": 2}
    assert s1["rewards"] == [] and s1["info"] is None and s1["mean_reward"] is None and s1["n_estimates"] == 1
    buf.mark_sampled([seeds[0].id, seeds[2].id])
    buf.mark_sampled([seeds[0].id])
    buf.mark_trained([seeds[2].id, seeds[2].id])
    assert [buf.stats(p.id)["times_sampled"] for p in seeds] == [2, 0, 1]
    assert [buf.stats(p.id)["times_trained"] for p in seeds] == [0, 0, 2]
    info = buf.info_array()
    assert info[0] == 1.0 and math.isnan(info[1]) and math.isnan(info[2])
    assert buf.info_array([seeds[0].id]).tolist() == [1.0]
    with pytest.raises(KeyError, match="not in the buffer"):
        buf.update_stats([_scored(Prompt.seed("stranger"), (1.0, 2.0), 1.0)], iteration=1)


# --- mix ------------------------------------------------------------------------------------------------------


def _mix_buffer() -> tuple[PromptBuffer, list[str]]:
    seeds = _seeds(100)
    evolved = [s.child(f"{s.text}, evolved", "deepen", 1) for s in seeds[:8]]
    return PromptBuffer.from_prompts(seeds + evolved), [e.id for e in evolved]


def test_mix_holds_the_population_size() -> None:
    buf, evolved = _mix_buffer()
    mix = buf.mix(evolved, size=10, seed=0)
    assert mix[:8] == evolved and len(mix) == 10 and len(set(mix)) == 10 and not set(mix[8:]) & set(evolved)
    assert buf.mix(evolved, size=5, seed=0) == evolved[:5]  # more children than room: the first ones
    assert len(buf.mix(evolved, size=500, seed=0)) == 108  # clipped to what exists
    assert buf.mix(evolved + evolved[:2], size=10, seed=0) == mix  # duplicates count once
    assert buf.mix(evolved, size=0, seed=0) == []


def test_mix_is_deterministic_and_seed_dependent() -> None:
    buf, evolved = _mix_buffer()
    a = buf.mix(evolved, size=40, seed=7)
    assert a == buf.mix(evolved, size=40, seed=7)
    assert a != buf.mix(evolved, size=40, seed=8)
    assert len(a) == 40


def test_mix_without_evolved_is_a_buffer_sample() -> None:
    buf, evolved = _mix_buffer()
    sample = buf.mix([], size=30, seed=0)
    assert len(sample) == len(set(sample)) == 30
    assert PromptBuffer().mix([], size=3, seed=0) == []
    with pytest.raises(ValueError, match="size"):
        buf.mix([], size=-1, seed=0)
    with pytest.raises(KeyError, match="not in the buffer"):
        buf.mix(["ffffffffffffffff"], size=4, seed=0)


# --- lineage ----------------------------------------------------------------------------------------------------


def test_ancestry_over_three_generations() -> None:
    buf, chain = _lineage_buffer()
    assert buf.ancestry(chain[3].id) == chain
    assert [p.depth for p in buf.ancestry(chain[3].id)] == [0, 1, 2, 3]
    assert buf.ancestry(chain[0].id) == [chain[0]]
    assert {p.root_id for p in buf.ancestry(chain[3].id)} == {chain[0].id}


def test_ancestry_with_missing_parent_names_it() -> None:
    _, chain = _lineage_buffer()
    buf = PromptBuffer.from_prompts([chain[0], chain[2], chain[3]])  # g1 missing
    with pytest.raises(KeyError, match=f"parent '{chain[1].id}' of '{chain[2].id}' is not in the buffer"):
        buf.ancestry(chain[3].id)


def test_children() -> None:
    buf, chain = _lineage_buffer()
    kids = buf.children(chain[0].id)
    assert [k.operator for k in kids] == ["constraints", "concretize"]
    assert buf.children(chain[3].id) == []


# --- persistence --------------------------------------------------------------------------------------------------


def _estimated_buffer() -> PromptBuffer:
    buf, chain = _lineage_buffer()
    buf.update_stats([_scored(chain[1], (0.25, -1.0, 2.5), 3.5), _scored(chain[2], (1.0,), None)], iteration=2)
    buf.mark_sampled([chain[1].id])
    buf.mark_trained([chain[2].id, chain[3].id])
    return buf


def test_save_load_round_trip(tmp_path: Path) -> None:
    buf = _estimated_buffer()
    path = tmp_path / "it" / "prompts.parquet"
    buf.save(path)
    loaded = PromptBuffer.load(path)
    assert loaded.to_table().equals(buf.to_table())
    assert loaded.prompts() == buf.prompts()
    for pid in buf.ids():
        assert loaded.stats(pid) == buf.stats(pid)
    ids = buf.ids()
    assert loaded.stats(ids[2])["rewards"] == [0.25, -1.0, 2.5]
    assert loaded.stats(ids[4])["info"] is None and loaded.stats(ids[4])["mean_reward"] == 1.0
    assert loaded.stats(ids[0])["rewards"] == [] and loaded.get(ids[0]).parent_id is None
    assert [p.name for p in path.parent.iterdir()] == ["prompts.parquet"]  # no temp file left
    loaded.add([Prompt.seed("after load")])  # the loaded buffer is a working buffer
    assert len(loaded) == 7


def test_empty_buffer_round_trips(tmp_path: Path) -> None:
    PromptBuffer().save(tmp_path / "empty.parquet")
    loaded = PromptBuffer.load(tmp_path / "empty.parquet")
    assert len(loaded) == 0
    assert pq.read_schema(tmp_path / "empty.parquet").remove_metadata().equals(BUFFER_SCHEMA)


def test_parquet_opens_with_datasets(tmp_path: Path) -> None:
    buf = _estimated_buffer()
    path = tmp_path / "prompts.parquet"
    buf.save(path)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == BUFFER_SCHEMA.names
    assert ds.num_rows == 6
    assert ds[2]["rewards"] == [0.25, -1.0, 2.5] and ds[2]["info"] == 3.5
    assert ds[0]["parent_id"] is None and ds[0]["info"] is None and ds[0]["last_estimated"] == -1


def test_load_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing.parquet: file does not exist"):
        PromptBuffer.load(tmp_path / "nothing.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet file"):
        PromptBuffer.load(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), tmp_path / "partial.parquet")
    with pytest.raises(DataError, match=r"partial.parquet: missing columns \['parent_id'"):
        PromptBuffer.load(tmp_path / "partial.parquet")


def test_pairs_table_round_trip_and_trl_columns(tmp_path: Path) -> None:
    pairs = [
        PreferencePair("p1", "Say hi", "Hi!", "no", 2.0, -0.5, iteration=3),
        PreferencePair("p2", "Count", "1 2 3", "3 2 1", 1.0, 0.75, iteration=3),
    ]
    path = tmp_path / "pairs.parquet"
    save_pairs(path, pairs)
    assert load_pairs(path) == pairs
    table = pq.read_table(path)
    assert table.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert table.schema.remove_metadata().equals(PAIR_SCHEMA)
    assert table.column("margin").to_pylist() == [2.5, 0.25]
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds[0]["chosen"] == "Hi!" and ds.num_rows == 2
    save_pairs(tmp_path / "none.parquet", [])
    assert load_pairs(tmp_path / "none.parquet") == []


def test_prompts_table_round_trip(tmp_path: Path) -> None:
    _, chain = _lineage_buffer()
    save_prompts_table(tmp_path / "evolved.parquet", chain)
    assert load_prompts_table(tmp_path / "evolved.parquet") == chain
    assert pq.read_schema(tmp_path / "evolved.parquet").names == PROMPT_SCHEMA.names
    save_prompts_table(tmp_path / "none.parquet", [])
    assert load_prompts_table(tmp_path / "none.parquet") == []


# --- seed prompts ------------------------------------------------------------------------------------------------


SEED_TEXTS = [
    "  Write a haiku. ",
    "",
    "Explain gravity.",
    "write a  HAIKU.",
    "   ",
    "Name three rivers.",
    "Plan a trip.",
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_seed_prompts_from_jsonl(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "s.jsonl", [{"prompt": t, "other": 1} for t in SEED_TEXTS])
    prompts = load_seed_prompts(str(path), "prompt", None)
    assert [p.text for p in prompts] == ["Write a haiku.", "Explain gravity.", "Name three rivers.", "Plan a trip."]
    assert all(p.is_seed and p.iteration == 0 and p.depth == 0 for p in prompts)
    assert [p.text for p in load_seed_prompts(str(path), "prompt", 2)] == ["Write a haiku.", "Explain gravity."]


def test_seed_prompts_from_parquet_with_column_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"instruction": SEED_TEXTS, "n": list(range(len(SEED_TEXTS)))}), path)
    prompts = load_seed_prompts(str(path), "instruction", 3)
    assert [p.text for p in prompts] == ["Write a haiku.", "Explain gravity.", "Name three rivers."]


def test_seed_prompts_from_datasets_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"question": SEED_TEXTS}).save_to_disk(str(folder))
    assert len(load_seed_prompts(str(folder), "question", None)) == 4
    dict_folder = tmp_path / "dsd"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"question": ["A?", "B?"]})}).save_to_disk(
        str(dict_folder)
    )
    assert [p.text for p in load_seed_prompts(str(dict_folder), "question", 1)] == ["A?"]


def test_seed_prompts_from_an_in_memory_dataset() -> None:
    ds = datasets.Dataset.from_dict({"question": SEED_TEXTS})  # stripped, blanks and duplicates dropped
    assert [p.text for p in load_seed_prompts(ds, "question")] == [
        "Write a haiku.",
        "Explain gravity.",
        "Name three rivers.",
        "Plan a trip.",
    ]
    dsd = datasets.DatasetDict({"test": ds.select([2, 6])})
    assert [p.text for p in load_seed_prompts(dsd, "question")] == ["Explain gravity.", "Plan a trip."]
    with pytest.raises(DataError, match="in-memory dataset: no column 'prompt'; available columns: \\['question'\\]"):
        load_seed_prompts(ds)
    with pytest.raises(DataError, match="expected a path, builtin:seed or a datasets.Dataset, got list"):
        load_seed_prompts(SEED_TEXTS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "content", "column", "message"),
    [
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": oops}\n', "prompt", r"bad.jsonl: line 2: invalid JSON"),
        (
            "key.jsonl",
            '{"prompt": "ok"}\n{"text": "x"}\n',
            "prompt",
            r"key.jsonl: line 2: no key 'prompt'; keys here: \['text'\]",
        ),
        (
            "type.jsonl",
            '{"prompt": "ok"}\n\n{"prompt": 42}\n',
            "prompt",
            r"type.jsonl: line 3: 'prompt' is int 42, expected a string",
        ),
        ("null.jsonl", '{"prompt": null}\n', "prompt", r"null.jsonl: line 1: 'prompt' is NoneType None"),
        ("list.jsonl", '["prompt"]\n', "prompt", r"list.jsonl: line 1: expected a JSON object, got list"),
        ("empty.jsonl", '{"prompt": "  "}\n', "prompt", r"empty.jsonl: no seed prompts in column 'prompt'"),
        ("seeds.csv", "prompt\nhi\n", "prompt", r"seeds.csv: unknown file type '.csv'"),
    ],
)
def test_seed_prompt_errors_name_file_and_line(
    tmp_path: Path, name: str, content: str, column: str, message: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        load_seed_prompts(str(tmp_path / name), column, None)


def test_seed_prompt_errors_for_parquet_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.jsonl: file does not exist"):
        load_seed_prompts(str(tmp_path / "missing.jsonl"), "prompt", None)
    pq.write_table(pa.table({"text": ["a"], "id": [1]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p.parquet: no column 'prompt'; available columns: \['text', 'id'\]"):
        load_seed_prompts(str(tmp_path / "p.parquet"), "prompt", None)
    with pytest.raises(DataError, match=r"p.parquet: row 0: 'id' is int 1, expected a string"):
        load_seed_prompts(str(tmp_path / "p.parquet"), "id", None)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain: a folder, but not one written by datasets"):
        load_seed_prompts(str(tmp_path / "plain"), "prompt", None)
    datasets.Dataset.from_dict({"q": ["a"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds: no column 'prompt'; available columns: \['q'\]"):
        load_seed_prompts(str(tmp_path / "ds"), "prompt", None)
    with pytest.raises(DataError, match="builtin:nope: unknown builtin"):
        load_seed_prompts("builtin:nope", "prompt", None)


def test_builtin_seed_prompts() -> None:
    prompts = load_seed_prompts("builtin:seed", "prompt", None)
    assert len(prompts) >= 200
    assert len({p.id for p in prompts}) == len(prompts)
    assert len(load_seed_prompts("builtin:seed", "prompt", 10)) == 10


# --- seed files that are not clean UTF-8 text ----------------------------------------------------


def test_latin1_and_random_bytes_are_refused_naming_line_and_byte(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"prompt": "ok"}\n{"prompt": "Caf\u00e9 au lait?"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl: line 2: not UTF-8 text \(byte 0xe9 at offset 32\)"):
        load_seed_prompts(str(latin1), "prompt", None)
    noise = tmp_path / "noise.jsonl"
    noise.write_bytes(b'{"prompt": "ok"}\n' + bytes(range(128, 256)) * 4)
    with pytest.raises(DataError, match=r"noise\.jsonl: line 2: not UTF-8 text \(byte 0x80 at offset 17\)"):
        load_seed_prompts(str(noise), "prompt", None)
    # lines are read as they are needed: the first problem in the file is the one named
    noise.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"noise\.jsonl: line 1: invalid JSON"):
        load_seed_prompts(str(noise), "prompt", None)


def test_seed_files_are_read_only_up_to_the_limit(tmp_path: Path) -> None:
    """`limit` stops reading: what follows the first `limit` prompts is never read (a damaged tail
    passes), in JSONL, Parquet and datasets folders."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "big.jsonl"
    jsonl.write_bytes(b'{"prompt": "one"}\n{"prompt": "one"}\n{"prompt": "two"}\n' + b"\xff not json\n" * 100)
    assert [p.text for p in load_seed_prompts(str(jsonl), "prompt", 2)] == ["one", "two"]
    with pytest.raises(DataError, match="line 4: not UTF-8"):
        load_seed_prompts(str(jsonl), "prompt", 3)
    texts = [f"prompt number {i}" for i in range(10_000)]
    parquet = tmp_path / "big.parquet"
    pq.write_table(pa.table({"prompt": texts}), parquet, row_group_size=1000)
    assert [p.text for p in load_seed_prompts(str(parquet), "prompt", 5)] == texts[:5]
    assert len(load_seed_prompts(str(parquet), "prompt", None)) == 10_000
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"prompt": texts, "other": list(range(10_000))}).save_to_disk(str(folder))
    assert [p.text for p in load_seed_prompts(str(folder), "prompt", 3)] == texts[:3]
    shuffled = datasets.Dataset.from_dict({"prompt": texts}).select([9, 3, 7])  # an indices mapping
    assert [p.text for p in load_seed_prompts(shuffled, "prompt", None)] == [texts[9], texts[3], texts[7]]


def test_u2028_inside_a_json_string_is_one_record(tmp_path: Path) -> None:
    path = tmp_path / "seps.jsonl"
    texts = ["first\u2028line of one prompt", "second\u0085with NEL", "third\x1cwith FS"]
    path.write_text("".join(json.dumps({"prompt": t}, ensure_ascii=False) + "\r\n" for t in texts), encoding="utf-8")
    assert [p.text for p in load_seed_prompts(str(path), "prompt", None)] == texts


@pytest.mark.parametrize(
    "record, message",
    [
        ('{"prompt": "a\\u0000b"}', r"line 2: 'prompt': the text holds a NUL character \(U\+0000\) at position 1"),
        (
            '{"prompt": "smile \\ud83d please"}',
            r"line 2: 'prompt': the text holds a lone surrogate '\\ud83d' at position 6",
        ),
    ],
)
def test_nul_and_lone_surrogates_are_refused(tmp_path: Path, record: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + record + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_seed_prompts(str(path), "prompt", None)
    assert [p.text for p in load_seed_prompts(str(path), "prompt", 1)] == ["fine"]  # reading stops before it
    pair = tmp_path / "pair.jsonl"
    pair.write_text('{"prompt": "smile \\ud83d\\ude00"}\n')  # both halves: one emoji, accepted
    assert [p.text for p in load_seed_prompts(str(pair), "prompt")] == ["smile \U0001f600"]


def test_multi_megabyte_prompts_are_refused_with_their_count(tmp_path: Path) -> None:
    from eva.buffer import MAX_PROMPT_CHARS

    path = tmp_path / "huge.jsonl"
    rows = ["short one", "x" * (3 << 20), "short two", "y" * (MAX_PROMPT_CHARS + 1), "z" * MAX_PROMPT_CHARS]
    path.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows))
    with pytest.raises(
        DataError,
        match=r"huge\.jsonl: 2 prompt\(s\) longer than 100,000 characters \(the longest, 3,145,728 characters, at "
        r"line 2; the first at line 2\)",
    ):
        load_seed_prompts(str(path), "prompt", None)
    assert len(load_seed_prompts(str(path), "prompt", 1)) == 1


def test_damaged_parquet_data_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": [f"prompt number {i} " * 50 for i in range(200)]}), path, compression="none")
    data = bytearray(path.read_bytes())
    for i in range(100, len(data) // 2):  # the data pages, not the footer
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"p\.parquet: not a readable Parquet file"):
        load_seed_prompts(str(path), "prompt", None)
