"""LLM-as-a-judge without the model: the judge prompts by name, and the reward as the expected label
value under the judge's next-token distribution over the label tokens (continuous, not a parsed
string). The judge scorer (actors.reward.JudgeScorer) renders a template and reads the logprobs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def expected_label(logprobs: Sequence[float], values: Sequence[float]) -> float:
    """E[value] under the label distribution renormalized over the labels (a softmax over their
    logprobs, computed stably). nan when no label has finite logprob."""
    finite = [(lp, v) for lp, v in zip(logprobs, values, strict=True) if math.isfinite(lp)]
    if not finite:
        return math.nan
    top = max(lp for lp, _ in finite)
    weights = [(math.exp(lp - top), v) for lp, v in finite]
    return sum(w * v for w, v in weights) / sum(w for w, _ in weights)


@dataclass(frozen=True, slots=True)
class JudgeTemplate:
    """A judge prompt. `user` has {prompt} and {response}; with `chat` it is sent through the judge's
    chat template (with `system` if set), else as plain text. `suffix` is appended after that (e.g.
    after the assistant turn opens); the next token is read there. `labels` maps each score token
    (one token each) to its value: the reward is the expectation over the renormalized label mass.
    """

    user: str
    suffix: str
    labels: tuple[tuple[str, float], ...]
    chat: bool = True
    system: str | None = None


_DIGITS = tuple((str(d), float(d)) for d in range(1, 10))
_YES_NO = (("Yes", 1.0), ("yes", 1.0), ("No", 0.0), ("no", 0.0))

# The prompt must end in "Score: " with the trailing space: SmolLM2 then puts 0.96-0.99 of the
# next-token mass on 1-9; after "Score:" the mass goes to the space token.
JUDGE_TEMPLATES: dict[str, JudgeTemplate] = {
    "plain": JudgeTemplate(
        user="Question: {prompt}\nAnswer: {response}\n\nRate the answer from 1 (very bad) to 9 (excellent).\n",
        suffix="Score: ",
        labels=_DIGITS,
        chat=False,
    ),
    "rubric": JudgeTemplate(
        system="You are a strict and fair grader of answers.",
        user=(
            "Rate how good the answer is on a scale from 1 to 9.\n"
            "1 = off-topic, wrong, rude, unfinished or repetitive. 5 = partly helpful. "
            "9 = on topic, correct, complete, polite and clear.\n\n"
            "Question: {prompt}\nAnswer: {response}\n\nReply with one digit."
        ),
        suffix="Score: ",
        labels=_DIGITS,
    ),
    "fewshot": JudgeTemplate(
        user=(
            "Rate each answer from 1 (very bad) to 9 (excellent).\n\n"
            "Question: What color is grass?\nAnswer: Grass is green because it contains chlorophyll.\nScore: 9\n\n"
            "Question: What color is grass?\nAnswer: Bananas are rich in potassium.\nScore: 1\n\n"
            "Question: How do I open a jar?\nAnswer: Nobody cares, figure it out yourself.\nScore: 1\n\n"
            "Question: How do I open a jar?\nAnswer: Run the lid under hot water for a minute, then twist it "
            "with a dry towel.\nScore: 9\n\n"
            "Question: {prompt}\nAnswer: {response}\n"
        ),
        suffix="Score: ",
        labels=_DIGITS,
        chat=False,
    ),
    "yesno": JudgeTemplate(
        user="Question: {prompt}\nAnswer: {response}\n\nIs this a good answer to the question: on topic, correct, "
        "complete and polite? Reply Yes or No.",
        suffix="",
        labels=_YES_NO,
    ),
    "yesno_plain": JudgeTemplate(
        user="Question: {prompt}\nAnswer: {response}\n\nIs this a good, helpful and polite answer to the question "
        "(Yes or No)?\n",
        suffix="Verdict: ",
        labels=_YES_NO,
        chat=False,
    ),
}


def judge_template(name: str) -> JudgeTemplate:
    """The template called `name`; ValueError listing the known names otherwise."""
    if name not in JUDGE_TEMPLATES:
        raise ValueError(f"unknown judge template {name!r}; known: {', '.join(JUDGE_TEMPLATES)}")
    return JUDGE_TEMPLATES[name]
