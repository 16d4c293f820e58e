import itertools
import json
import time
from collections import Counter
from importlib import resources

import numpy as np
import pytest

from eva.child_filter import PromptCheck
from eva.config import ConfigError, load_config
from eva.dedup import NearDuplicateIndex, char_ngrams, jaccard
from eva.evolve import (
    META_MARKERS,
    OPERATORS,
    REASONS,
    EvolveRequest,
    build_evolve_requests,
    content_reason,
    filter_evolved,
    instruction,
    parse_evolved,
    render_meta_prompt,
)
from eva.types import Prompt, normalize_text

OPS = tuple(OPERATORS)
PARENTS = [
    Prompt.seed(t)
    for t in ("Explain how a bicycle gear system works.", "Write a haiku about rain.", "What is 17 times 23?")
]


# --- templates -----------------------------------------------------------------------------------


def test_operators_are_the_six_config_operators():
    assert set(OPERATORS) == {"constraints", "deepen", "concretize", "reasoning", "expand", "breadth"}
    assert load_config(preset="tiny").creator.operators == tuple(OPERATORS)  # the default: all of them
    with pytest.raises(
        ConfigError, match=r"creator.operators: .*unknown evolve operator\(s\) 'widen'; known operators: constraints"
    ):
        load_config(None, ["creator.operators=[deepen, widen]"], preset="tiny")


@pytest.mark.parametrize("op", OPS)
def test_template_is_short_with_one_slot_and_ends_in_new_prompt(op):
    template = OPERATORS[op]
    assert template.count("{prompt}") == 1
    assert template.endswith("New prompt:")
    assert "Reply with only the new prompt" in template and "self-contained" in template
    assert len(template) < 600  # the creator is a 135M model: short instructions


def test_render_keeps_braces_in_the_prompt():
    text = 'Format {name} as JSON: {"a": 1}'
    assert text in render_meta_prompt("deepen", text)


# --- requests ------------------------------------------------------------------------------------


def test_requests_count_order_and_fields():
    reqs = build_evolve_requests(PARENTS, 4, OPS, seed=7)
    assert len(reqs) == 12
    assert [r.parent for r in reqs] == [p for p in PARENTS for _ in range(4)]
    for r in reqs:
        assert isinstance(r, EvolveRequest)
        assert r.meta_prompt == OPERATORS[r.operator].format(prompt=r.parent.text)
        assert 0 <= r.seed < 2**31


def test_requests_are_deterministic_and_seeds_distinct():
    a = build_evolve_requests(PARENTS, 4, OPS, seed=7)
    assert a == build_evolve_requests(PARENTS, 4, OPS, seed=7)
    assert len({r.seed for r in a}) == len(a)
    b = build_evolve_requests(PARENTS, 4, OPS, seed=8)
    assert [r.seed for r in a] != [r.seed for r in b]


def test_no_operator_repeats_when_variants_fit():
    many = [Prompt.seed(f"Prompt number {i} about topic {i * 7}") for i in range(50)]
    reqs = build_evolve_requests(many, 4, OPS, seed=1)
    for i in range(50):
        ops = [r.operator for r in reqs[4 * i : 4 * i + 4]]
        assert len(set(ops)) == 4
    # operators vary across prompts (drawn, not a fixed prefix of the list)
    assert len({tuple(r.operator for r in reqs[4 * i : 4 * i + 4]) for i in range(50)}) > 10


def test_operators_spread_evenly_beyond_one_round():
    reqs = build_evolve_requests(PARENTS[:1], 14, OPS, seed=3)
    counts = Counter(r.operator for r in reqs)
    assert set(counts) == set(OPS) and max(counts.values()) - min(counts.values()) <= 1


def test_same_prompt_same_requests_regardless_of_batch():
    target = PARENTS[1]
    alone = build_evolve_requests([target], 4, OPS, seed=5)
    others = [Prompt.seed(f"Another prompt {i}") for i in range(9)]
    mixed = build_evolve_requests(others[:4] + [target] + others[4:], 4, OPS, seed=5)
    assert [r for r in mixed if r.parent == target] == alone


def test_unknown_operator_is_named():
    with pytest.raises(ValueError, match=r"'paraphrase'.*known operators: constraints"):
        build_evolve_requests(PARENTS, 2, ("deepen", "paraphrase"), seed=0)
    with pytest.raises(ValueError):
        build_evolve_requests(PARENTS, 2, (), seed=0)


def test_subset_of_operators_is_respected():
    reqs = build_evolve_requests(PARENTS, 3, ("breadth", "reasoning"), seed=0)
    assert {r.operator for r in reqs} == {"breadth", "reasoning"}


# --- parsing -------------------------------------------------------------------------------------

HAIKU = "Write a haiku about rain."


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("New prompt: Write a haiku about rain.", HAIKU),
        ("#New Prompt#:\nWrite a haiku about rain.", HAIKU),
        ("Rewritten prompt:\n\nWrite a haiku about rain.", HAIKU),
        ("Prompt: Write a haiku about rain.", HAIKU),
        ("Here is the rewritten prompt:\nWrite a haiku about rain.", HAIKU),
        ("Sure! Here's a new prompt:\n\nWrite a haiku about rain.", HAIKU),
        ("Sure! Here is the new prompt: Write a haiku about rain.", HAIKU),
        ("Certainly!\nWrite a haiku about rain.", HAIKU),
        ("**New Prompt:** Write a haiku about rain.", HAIKU),
        ("## Rewritten Prompt\nWrite a haiku about rain.", HAIKU),
        ("**Write a haiku about rain.**", HAIKU),
        ('"Write a haiku about rain."', HAIKU),
        ("“Write a haiku about rain.”", HAIKU),
        ("`Write a haiku about rain.`", HAIKU),
        ("\"'Write a haiku about rain.'\"", HAIKU),  # nested quotes
        ("```\nWrite a haiku about rain.\n```", HAIKU),
        ("```text\nWrite a haiku about rain.\n```", HAIKU),
        ("New prompt:\n```\nWrite a haiku about rain.\n```", HAIKU),
        ("Write a haiku about rain.\n\nNote: I added a topic.", HAIKU),
        ("Write a haiku about rain.\n\n**Explanation:** it is more specific.", HAIKU),
        ("Write a haiku about rain.\n\nThis prompt asks for imagery.\n\nMore text.", HAIKU),
        ("Write a haiku about rain.\n\nAnswer: Drops on the window...", HAIKU),
        ("Write a haiku about rain.<|im_end|>\n<|im_start|>user\nThanks!", HAIKU),
        ("<|im_start|>assistant\nWrite a haiku about rain.<|im_end|>", HAIKU),
        ("Write   a  haiku\tabout rain.   ", HAIKU),
        ("Write a\x00 haiku about\x07 rain.\u200b", HAIKU),
        (
            'Sure! Here\'s the rewritten prompt:\n\n**New Prompt:**\n"Write a haiku about rain."\n\nNote: shorter.',
            HAIKU,
        ),
        ("New prompt:\r\nWrite a haiku\r\nabout rain.", "Write a haiku\nabout rain."),
    ],
)
def test_parse_strips_wrappers(raw, expected):
    assert parse_evolved(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "'Write a poem about the sea's moods'",
        "Here is a short text:\nThe cat sat on the mat.\nSummarize it.",
        "Explain recursion.\n\nAnswer in under 50 words.",
        "Prompt engineering matters. Explain why in two paragraphs.",
        'Translate "good morning" and "good night" into Spanish.',
        "Okay, so here's my situation:\nMy landlord never answers. What can I do?",
    ],
)
def test_parse_leaves_real_prompts_alone(raw):
    # apostrophes, user-voice openers and later paragraphs that belong to the prompt survive
    expected = raw[1:-1] if raw.startswith("'") else raw
    assert parse_evolved(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "   \n\t ", "\x00\x01\x02\x7f", "<|im_end|>", "New prompt:", '""', "```\n```", "**New Prompt:**"]
)
def test_parse_returns_none_when_nothing_is_left(raw):
    assert parse_evolved(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        "a" * 100_000,
        "#" * 100_000,
        "\"'" * 50_000,
        "New prompt: " * 10_000,
        "```\n" * 25_000,
        "*" * 100_001,
        "<|im_start|>" * 10_000,
        "\ud800\udfff" * 1000 + "Write a haiku.",
        "!?.,;" * 20_000,
        "((((" * 10_000 + "))))" * 10_000,
    ],
)
def test_parse_is_fast_and_never_raises_on_hostile_input(raw):
    start = time.perf_counter()
    out = parse_evolved(raw)
    assert time.perf_counter() - start < 2.0
    assert out is None or isinstance(out, str)
    if out is not None:
        out.encode("utf-8")  # no lone surrogates left: the buffer is written as parquet


def test_parse_non_string_is_none():
    assert parse_evolved(None) is None  # type: ignore[arg-type]


# --- filtering -----------------------------------------------------------------------------------

PARENT = Prompt.seed("Explain how a bicycle gear system works.")
BUFFER = ["Describe the water cycle in five steps.", "Write a limerick about a forgetful wizard.", PARENT.text]
LIMITS = dict(min_chars=12, max_chars=300, near_dup_threshold=0.85, iteration=3)

CASES = {
    "empty": [None, "   "],
    "too_short": ["Gears?"],
    "too_long": ["Explain bicycle gears. " * 20],
    "garbage": [
        "!!! ??? ### $$$ %%% ^^^ &&&",
        "gear gear gear gear gear gear gear gear gear bike",
        "1234 5678 9012 3456 7890",
        "Explain the gears\x00 of a bicycle.",
        "Explain aaaaaaaaaaaaaaaaaaaaaaaaaaaa gears",
        "Why do gears turn? Why do gears turn? Why do gears turn? Why do gears turn?",
    ],
    "meta_echo": [
        "Rewrite the prompt below so that answering it needs explicit reasoning over several steps.",
        "Explain bicycle gears. New prompt: Explain car gears.",
        "Explain bicycle gears for a child. Reply with only the new prompt.",
        "Use {prompt} here.",
    ],
    "refusal": [
        "I'm sorry, but I can't rewrite that prompt.",
        "I cannot help with this request today.",
        "As an AI language model, I will not do this.",
    ],
    "duplicate": [
        "explain how a  bicycle gear system WORKS.",
        "Describe the water cycle in five steps.",
        "Compare road and mountain bike gearing for hills.",
    ],
    "near_duplicate": [
        "Explain how a bicycle gear system works!",
        "Describe the water cycle in five steps!",
        "Compare road and mountain bike gearing for hills!",
    ],
    "meta_paraphrase": [
        "To enhance the existing prompt, I'm sure a new prompt is the perfect idea!",
        "Make the question harder by adding a concrete requirement.",
    ],
    "answer": [
        "A: Gears trade pedalling force for speed.",
        "The answer is that the chain moves between sprockets of different sizes.",
    ],
    "not_a_request": ["Bicycle gears trade pedalling force for speed on flat roads."],
    "off_topic": ["Write a sonnet about the ocean at dawn."],
}
# Hand-made embeddings: every text sits on the parent's axis except the instructions and the one
# meta paraphrase (the instruction axis) and the off-topic child (a third axis).
ON_TOPIC, INSTRUCTION_AXIS, ELSEWHERE = np.eye(3)
NEAR_INSTRUCTION = {instruction(op) for op in OPS} | {CASES["meta_paraphrase"][1]}


def fake_embed(text: str) -> np.ndarray:
    return INSTRUCTION_AXIS if text in NEAR_INSTRUCTION else ELSEWHERE if text in CASES["off_topic"] else ON_TOPIC


CHECK = PromptCheck(max_meta_similarity=0.35, min_parent_similarity=0.22, embed=fake_embed)
KEPT = [
    "Compare road and mountain bike gearing for hills.",
    "Explain how a 21-speed bicycle's derailleur shifts between gears, step by step.",
    "Why do cyclists use lower gears on steep climbs? Give a numeric example.",
]


def run_filter(existing=BUFFER):
    texts = [text for reason in REASONS for text in CASES[reason]]
    # kept texts go first so the batch duplicates/near duplicates of KEPT[0] come after it
    ordered = KEPT + texts
    requests = [EvolveRequest(PARENT, OPS[i % len(OPS)], "meta", i) for i in range(len(ordered))]
    return requests, filter_evolved(list(zip(requests, ordered, strict=True)), existing, **LIMITS, prompt_check=CHECK)


def test_filter_counts_every_reason_exactly():
    _, (kept, report) = run_filter()
    assert report.dropped == {reason: len(CASES[reason]) for reason in REASONS}
    assert list(report.dropped) == list(REASONS)  # every key, zeros included, fixed order
    assert report.kept == len(KEPT) == len(kept)
    assert report.total == len(KEPT) + sum(map(len, CASES.values()))
    assert [c.text for c in kept] == KEPT


def test_kept_children_carry_lineage():
    requests, (kept, _) = run_filter()
    for child, request in zip(kept, requests, strict=False):
        assert child.parent_id == PARENT.id and child.root_id == PARENT.id
        assert child.depth == 1 and child.iteration == 3 and child.operator == request.operator
    grandchild_request = EvolveRequest(kept[0], "deepen", "meta", 0)
    (grandchild,), _ = filter_evolved(
        [(grandchild_request, "How do internal gear hubs differ from derailleurs?")], BUFFER, **LIMITS
    )
    assert (grandchild.parent_id, grandchild.root_id, grandchild.depth) == (kept[0].id, PARENT.id, 2)


def test_filter_with_a_kept_index_gives_the_same_result_and_leaves_it_unchanged():
    index = NearDuplicateIndex(0.85, BUFFER)
    _, (kept, report) = run_filter(index)
    _, (kept2, report2) = run_filter()
    assert kept == kept2 and report == report2
    assert len(index) == len(BUFFER) and KEPT[0] not in index
    with pytest.raises(ValueError, match="threshold"):
        filter_evolved([], NearDuplicateIndex(0.5), **LIMITS)


def test_without_a_prompt_check_only_the_first_reasons_drop():
    requests = [EvolveRequest(PARENT, "deepen", "meta", i) for i in range(4)]
    texts = [CASES["answer"][0], CASES["not_a_request"][0], CASES["off_topic"][0], CASES["meta_paraphrase"][1]]
    kept, report = filter_evolved(list(zip(requests, texts, strict=True)), BUFFER, **LIMITS)
    assert [c.text for c in kept] == texts and report.kept == 4 and not any(report.dropped.values())
    assert list(report.dropped) == list(REASONS)  # the new reasons are listed, at zero


def test_instruction_is_the_meta_prompt_without_the_prompt():
    for op in OPS:
        assert render_meta_prompt(op, "PARENT") == instruction(op) + "\n\nPrompt: PARENT\n\nNew prompt:"
    with pytest.raises(ValueError, match="unknown evolve operator"):
        instruction("widen")


def test_parent_is_checked_even_when_not_in_the_buffer():
    request = EvolveRequest(PARENT, "deepen", "meta", 0)
    kept, report = filter_evolved([(request, PARENT.text.upper()), (request, PARENT.text + "!!")], [], **LIMITS)
    assert kept == [] and report.dropped["duplicate"] == 1 and report.dropped["near_duplicate"] == 1


@pytest.mark.parametrize(
    "text",
    [
        "Solve 3x^2 - 12x + 9 = 0 and explain each step.",
        "Compute 17*23 by hand.",
        "Translate 'Guten Morgen' into English.",
        "写一首关于秋天的短诗，并解释其中的意象。",
    ],
)
def test_math_quotes_and_non_latin_prompts_are_not_garbage(text):
    assert content_reason(text, min_chars=5, max_chars=300) is None


def test_meta_markers_do_not_hit_the_seed_prompts():
    assert META_MARKERS and all(len(m) >= 25 for m in META_MARKERS)
    for text in seed_texts():
        assert content_reason(text, min_chars=12, max_chars=1500) is None, text


# --- the shipped seed set ------------------------------------------------------------------------


def seed_texts() -> list[str]:
    lines = (resources.files("eva.data") / "seed_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]


def test_seed_set_is_large_distinct_and_not_near_duplicated():
    texts = seed_texts()
    assert len(texts) >= 200
    assert len({normalize_text(t) for t in texts}) == len(texts)
    grams = [char_ngrams(t) for t in texts]  # eva.dedup, checked against brute force in test_dedup
    worst = max((jaccard(a, b), i, j) for (i, a), (j, b) in itertools.combinations(enumerate(grams), 2))
    assert worst[0] < 0.6, (texts[worst[1]], texts[worst[2]])
    words = [len(t.split()) for t in texts]
    assert min(words) >= 5 and max(words) <= 80
