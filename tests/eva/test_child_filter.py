"""Is a child a prompt: the decision with hand-made similarities, the wording cues, the labelled set."""

import json
from importlib import resources

import numpy as np
import pytest

from eva.child_filter import (
    CHILD_REASONS,
    PromptCheck,
    child_reason,
    is_request,
    looks_like_answer,
    prompt_reason,
    talks_about_the_rewrite,
)
from eva.config import CreatorSection
from eva.evolve import OPERATORS, REASONS

SARA = (
    "Sara buys 3 notebooks at 2.40 euros each and a pen at 1.15 euros. She pays with a 10 euro note. How much "
    "change does she get?"
)
CHECK = PromptCheck(max_meta_similarity=0.35, min_parent_similarity=0.22)
REWRITE = (
    "Sara buys 4 notebooks at 2.40 euros each and two pens at 1.15 euros. How much change does she get from 20 euros?"
)


def reason(child: str, parent: str = SARA, sims: tuple[float, float] | None = (0.8, 0.1)) -> str | None:
    """sims = (to the parent, to the instruction)."""
    return prompt_reason(child, parent, CHECK, sims)


# --- the issue's examples --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "child, expected",
    [
        ("Re-examine the existing prompt to create something new and unique.", "meta_paraphrase"),
        ("To enhance the existing prompt, I'm sure a new prompt is the perfect idea!", "meta_paraphrase"),
        ("A: A new prompt, aiming to enhance the existing prompt.", "meta_paraphrase"),
        ("3 x 2.40 = 7.20 euros, plus 1.15 makes 8.35 euros, so Sara gets 1.65 euros back.", "answer"),
        ("A: Sara gets 1.65 euros in change.", "answer"),
        ("The answer is 1.65 euros.", "answer"),
        ("Sara gets 1.65 euros of change from her note.", "not_a_request"),
        (REWRITE, None),
    ],
)
def test_the_issues_children(child, expected):
    assert reason(child) == expected


# --- the decision, with hand-made similarities -----------------------------------------------------


def test_meta_paraphrase_needs_the_threshold_and_to_be_closer_to_the_instruction_than_to_the_parent():
    child = "Make the question harder by adding a concrete requirement or a case to handle."
    assert reason(child, sims=(0.25, 0.35)) == "meta_paraphrase"  # at the threshold: dropped
    assert reason(child, sims=(0.25, 0.34)) is None
    # a rewrite of a prompt about writing sits near the instruction too, but nearer its parent
    assert reason(child, sims=(0.60, 0.50)) is None
    assert reason(child, sims=(0.50, 0.50)) is None  # equal: not closer to the instruction


def test_off_topic_below_the_parent_threshold_and_checked_last():
    assert reason(REWRITE, sims=(0.21, 0.0)) == "off_topic"
    assert reason(REWRITE, sims=(0.22, 0.0)) is None  # at the threshold: kept
    # wording reasons come first: an off-topic statement counts as not_a_request
    assert reason("The ocean is deep and blue at dawn.", sims=(0.0, 0.0)) == "not_a_request"
    # and a meta paraphrase by similarity beats off_topic
    assert reason("Write a new version of it.", sims=(0.05, 0.40)) == "meta_paraphrase"


def test_without_similarities_only_the_wording_decides():
    assert reason(REWRITE, sims=None) is None
    assert reason("Write a sonnet about the sea.", sims=None) is None  # off topic, but nothing measures it


def test_child_reason_takes_the_similarities_from_embed():
    axes = dict(zip(("parent", "instruction", "elsewhere"), np.eye(3), strict=True))
    vectors = {
        SARA: axes["parent"],
        "INSTRUCTION": axes["instruction"],
        REWRITE: axes["parent"],
        "Describe a lighthouse at night.": axes["elsewhere"],
        "Add a word limit and a format to it.": (axes["instruction"] + 0.5 * axes["parent"]) / np.sqrt(1.25),
    }
    calls = []

    def embed(text: str) -> np.ndarray:
        calls.append(text)
        return vectors[text]

    check = PromptCheck(0.35, 0.22, embed)
    assert child_reason(REWRITE, SARA, "INSTRUCTION", check) is None
    assert child_reason("Describe a lighthouse at night.", SARA, "INSTRUCTION", check) == "off_topic"
    # 0.89 vs 0.45
    assert child_reason("Add a word limit and a format to it.", SARA, "INSTRUCTION", check) == "meta_paraphrase"
    assert set(calls) == set(vectors)  # child, parent and instruction are embedded
    no_embed = PromptCheck(0.35, 0.22)
    assert child_reason("Describe a lighthouse at night.", SARA, "INSTRUCTION", no_embed) is None


def test_reasons_are_part_of_the_evolve_reasons():
    assert set(CHILD_REASONS) <= set(REASONS)
    assert REASONS[-len(CHILD_REASONS) :] == CHILD_REASONS


# --- wording cues ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Why do we see lightning before we hear thunder?",
        "Reflect: How do black holes form from massive stars.",
        "In no more than 50 words, explain why sleep matters for memory.",
        "A rectangle has a perimeter of 36 cm and its length is twice its width. Find its area.",
        "Label each sentence as fact or opinion: Paris is the capital of France. The Seine flows through Paris.",
        "Categorize: Fixed or Variable: Rent, groceries, gym memberships",
        "Please create a five-question multiple-choice quiz about the solar system, with answers.",
        "Your response should describe daily life for a medieval farmer in one paragraph.",
    ],
)
def test_requests(text):
    assert is_request(text)


@pytest.mark.parametrize(
    "text",
    [
        "The longest river in South America is the Amazon River.",
        "1. Choose a guitar\n2. Learn three chords\n3. Practice every day",  # advice: list items do not count
        # a question only in the middle
        "Daytime is everything. What's good about cats? They sleep. Cats love their tails.",
        "When to use a semicolon: when two independent clauses share one sentence.",
        "Implementation.",
        # a relative clause after a comma is no question; "let's" after one is an answer's voice
        "A list in Python is a sequence stored in a tuple, which is an immutable sequence of elements.",
        "Sara buys 3 notebooks.\n\nNow, let's break down the problem:\n- 3 notebooks at 2.40 euros",
    ],
)
def test_not_requests(text):
    assert not is_request(text)


def test_answer_cues():
    assert looks_like_answer("Sure! Here is a Python function that does it: def f(): pass", "")
    assert looks_like_answer("To unclog it, you need a plunger. Here's how to use one.", "")
    assert looks_like_answer("Does it float? The answer lies in density.", "")
    assert looks_like_answer("The total is 3 x 2.40 = 7.20 euros.", SARA)
    # a calculation the parent has itself is part of the prompt, not its answer
    parent = "Why do floating-point numbers give results like 0.1 + 0.2 = 0.30000000000000004?"
    assert not looks_like_answer("Explain with an example why 0.1 + 0.2 = 0.30000000000000004 in Python.", parent)
    assert not looks_like_answer(REWRITE, SARA)
    # user prompts open in the first person or with their material, too
    for prompt in (
        "I'm planning three days in Rome. What should I not miss?",
        "Here is my code: print(x. Why does it fail?",
    ):
        assert prompt_reason(prompt, "", CHECK) is None, prompt


def test_talk_about_the_rewrite_unless_the_parent_talks_that_way():
    assert talks_about_the_rewrite("Here's a rewritten version of the original question.", SARA)
    assert talks_about_the_rewrite("Please add a word limit to this task.", SARA)
    assert not talks_about_the_rewrite("Rewrite this email so it sounds friendlier.", SARA)  # "rewrite" is a real task
    parent = "Write a prompt that makes an image model draw a cat."
    assert not talks_about_the_rewrite("Write a prompt that makes an image model draw a cat in the rain.", parent)


def test_the_seed_prompts_pass_the_wording_as_children_of_themselves():
    lines = (resources.files("eva.data") / "seed_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["prompt"] for line in lines if line.strip()]
    assert len(texts) > 200
    assert [t for t in texts if prompt_reason(t, t, CHECK) is not None] == []


# --- the labelled set ------------------------------------------------------------------------------

KINDS = {"keep", "answer", "meta", "not_prompt", "off_topic", "duplicate"}


def labelled_rows() -> list[dict]:
    text = (resources.files("eva.data") / "evolve_labels.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_labelled_set_format():
    rows = labelled_rows()
    assert len(rows) >= 80
    for i, row in enumerate(rows, start=1):
        assert set(row) == {"parent", "operator", "child", "keep", "kind", "why", "depth"}, i
        assert isinstance(row["parent"], str) and row["parent"].strip(), i
        assert isinstance(row["child"], str), i  # "" where nothing was left after parsing
        assert row["operator"] in OPERATORS, i
        assert isinstance(row["keep"], bool) and row["kind"] in KINDS and row["keep"] == (row["kind"] == "keep"), i
        assert isinstance(row["why"], str) and row["why"].strip(), i
        assert isinstance(row["depth"], int) and row["depth"] >= 1, i
    for half in (rows[0::2], rows[1::2]):  # tuning and held-out halves both hold both classes
        assert sum(r["keep"] for r in half) >= 10 and sum(not r["keep"] for r in half) >= 100


def test_config_defaults_match_the_documented_choice():
    creator = CreatorSection()
    assert creator.prompt_filter == "embedding"
    assert (creator.max_meta_similarity, creator.min_parent_similarity) == (
        0.35,
        0.22,
    )  # benchmarks/child_filters.py, RESULTS.md
