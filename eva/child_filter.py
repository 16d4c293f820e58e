"""Is a creator's child a prompt? Checks after the evolve filter's own (`eva.evolve.filter_evolved`).

A small creator (SmolLM2-135M) asked to rewrite a prompt often writes something else: talk about the
rewrite ("To enhance the existing prompt, a new prompt is the perfect idea!"), the answer to the
parent (a word problem worked through), a statement that asks for nothing, or a prompt about
something else. Each has a reason:

- `meta_paraphrase`: it talks about prompts and rewriting (wording cues), or its embedding is closer
  to the operator's instruction (the meta-prompt without the parent) than to the parent, and at
  least `max_meta_similarity` close to it. Closeness to the instruction alone would not do: real
  prompts about writing sit near it (the builtin "Write a brief out-of-office reply ..." has cosine
  0.44 to an instruction), and so do their rewrites, but those stay closer to their parent;
- `answer`: it opens like an answer ("A:", "The answer ...", "To solve ...", "Sure"), says what the
  answer is ("the answer lies in", "here's how"), or holds a worked calculation the parent does not;
- `not_a_request`: it asks for nothing: neither its first nor its last sentence is a question or
  opens with an instruction verb ("Write", "Explain") or a request ("please", "can you", "how do");
- `off_topic`: its embedding is less than `min_parent_similarity` close to the parent's.

The wording cues are English. Similarities are cosines of unit embeddings from an `Embed` callable
the caller passes (the actors layer uses the packaged MiniLM); this module never loads a model.
Thresholds were chosen on half of the hand-labelled set `eva/data/evolve_labels.jsonl`
(benchmarks/child_filters.py reports precision and recall on the other half).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CHILD_REASONS: tuple[str, ...] = ("meta_paraphrase", "answer", "not_a_request", "off_topic")

Embed = Callable[[str], np.ndarray]
"""A text -> its embedding as a unit-norm 1-d float array (cosine = dot product)."""


@dataclass(frozen=True, slots=True)
class PromptCheck:
    """How to check that children are prompts. `embed` None: wording cues only (no similarity checks)."""

    max_meta_similarity: float
    min_parent_similarity: float
    embed: Embed | None = None


# Verbs a prompt's instruction opens with ("Write ...", "Explain ...").
_INSTRUCTION_VERBS = frozenset(
    """
    add adapt analyse analyze answer apply argue arrange assess brainstorm build calculate categorise
    categorize challenge check choose classify code combine come compare compile compose compute
    construct convert correct count craft create critique debug decide define demonstrate derive
    describe design detail determine develop devise discuss draft draw edit elaborate estimate evaluate
    explain explore express extend extract fill find fix format formulate generate give group guess
    identify illustrate imagine implement improve invent justify label list make map match merge
    name note optimise optimize order organise organize outline paraphrase pick plan predict prepare
    present produce propose prove provide rank rate read recommend refactor reflect reorder rephrase
    report research respond restate review revise rewrite schedule select shorten show simplify sketch
    solve sort specify split state suggest summarise summarize teach tell test transform translate
    turn use validate verify walk write
    """.split()
)
_REQUEST_OPENER = re.compile(
    r"^(?:please|kindly|can you|could you|would you|will you|help me|i need|i want|i'd like|i would like"
    r"|tell me|show me|give me|let's|your (?:response|answer|reply|text|story|essay|poem) (?:should|must)"
    r"|how (?:do|does|did|can|could|should|would|is|are|much|many|long|often)|(?:what|why|which|who) "
    r"(?:is|are|was|were|do|does|did|should|would|can|could)"
    r"|imagine|suppose|assume)\b",
    re.IGNORECASE,
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?:;])\s+|\n+")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)]|[a-zA-Z][.)])\s+")
_LEAD_LABEL = re.compile(r"^[\s\"'“‘*_#>(\[]*(?:[A-Z][\w' -]{0,30}:\s+)?[\s\"'“‘*_]*")
_FIRST_WORD = re.compile(r"[A-Za-z']+")

# An assistant's voice at the start. Not "I ...", "Here is ..." or "Step 1": user prompts open so too
# ("I'm planning a trip ...", "Here is my code: ... Why does it fail?").
_ANSWER_OPENER = re.compile(
    r"^[\s\"'“*_#>(\[]*(?:a\s*:|answer\s*:|the (?:answer|solution|result)\b|(?:in order )?to (?:answer|solve|address)\b"
    r"|sure\b|certainly\b|of course\b|what a\b|you're right\b|that's (?:a )?(?:great|good)\b)",
    re.IGNORECASE,
)
_ANSWER_INSIDE = re.compile(
    r"\bthe (?:answer|solution) (?:is|lies|depends|would be|will be|to (?:this|the|your) (?:question|problem))\b"
    r"|\bto answer (?:the|this|your) question\b|\n\s*(?:a|answer)\s*:\s|\bhere(?:'s|’s| is) how\b",
    re.IGNORECASE,
)
_WORKED_STEP = re.compile(r"\d(?:[\d.,]*)\s*[x×*/+−-]\s*\d[\d.,]*\s*=\s*\d")

_ABOUT_THE_REWRITE = re.compile(
    r"\b(?:prompts?|rewritten|rephrased|reworded|sub-?tasks?|preamble|self-contained|this (?:task|request)"
    r"|(?:original|new|given|previous|revised|above) (?:question|task|request|version|instruction|response)s?)\b",
    re.IGNORECASE,
)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s.strip()]


def _asks(sentence: str) -> bool:
    if "?" in sentence:
        return True
    head = _LEAD_LABEL.sub("", sentence, count=1)
    if _REQUEST_OPENER.match(head) or _first_word(head) in _INSTRUCTION_VERBS:
        return True
    # "In no more than 50 words, explain ...": an instruction verb may follow one leading clause
    # (not a question word: ", which is ..." is a relative clause; nor ", let's ...": an answer's voice)
    return _first_word(head.partition(", ")[2]) in _INSTRUCTION_VERBS


def _first_word(text: str) -> str:
    word = _FIRST_WORD.match(text)
    return word.group(0).lower() if word else ""


def is_request(text: str) -> bool:
    """Does the text ask for something: its first or its last sentence (list items excepted:
    answers are lists of advice) is a question or opens with an instruction verb or a request
    phrase. Only the ends count: answers ask rhetorical questions and give advice in between."""
    sentences = [s for s in _sentences(text) if not _LIST_ITEM.match(s)]
    return bool(sentences) and (_asks(sentences[0]) or _asks(sentences[-1]))


def looks_like_answer(child: str, parent: str) -> bool:
    """Answer cues: an answer's opening, a statement of the answer, or a worked calculation
    (`3 x 2.40 = 7.20`) that the parent does not contain."""
    if _ANSWER_OPENER.match(child) or _ANSWER_INSIDE.search(child):
        return True
    return bool(_WORKED_STEP.search(child)) and not _WORKED_STEP.search(parent)


def talks_about_the_rewrite(child: str, parent: str) -> bool:
    """Words of the rewrite task ("prompt", "rephrased", "the original question") that the parent
    does not use itself (a prompt about prompt writing may say "prompt")."""
    parent_words = {m.group(0).lower() for m in _ABOUT_THE_REWRITE.finditer(parent)}
    return any(m.group(0).lower() not in parent_words for m in _ABOUT_THE_REWRITE.finditer(child))


def prompt_reason(
    child: str, parent: str, check: PromptCheck, similarities: tuple[float, float] | None = None
) -> str | None:
    """Why `child` is not a usable prompt for `parent` (one of CHILD_REASONS), or None to keep it.

    `similarities`: cosines of the child's embedding to the parent's and to the operator's
    instruction, in that order; None skips the checks that need them. Order: talk about the
    rewrite (wording, then similarity), an answer, no request, then distance from the parent."""
    to_parent, to_instruction = similarities if similarities is not None else (None, None)
    if talks_about_the_rewrite(child, parent):
        return "meta_paraphrase"
    if (
        to_parent is not None
        and to_instruction is not None
        and to_instruction >= check.max_meta_similarity
        and to_instruction > to_parent
    ):
        return "meta_paraphrase"
    if looks_like_answer(child, parent):
        return "answer"
    if not is_request(child):
        return "not_a_request"
    if to_parent is not None and to_parent < check.min_parent_similarity:
        return "off_topic"
    return None


def child_reason(child: str, parent: str, instruction: str, check: PromptCheck) -> str | None:
    """`prompt_reason` with the similarities from `check.embed` (none without it). `instruction`
    is the meta-prompt the creator got, without the parent (`eva.evolve.instruction`)."""
    if check.embed is None:
        return prompt_reason(child, parent, check)
    vector = check.embed(child)
    return prompt_reason(
        child, parent, check, (float(vector @ check.embed(parent)), float(vector @ check.embed(instruction)))
    )
