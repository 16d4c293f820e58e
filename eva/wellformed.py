"""Well-formedness of an answer: cheap, deterministic text rules scoring its form in [0, 1].

They catch what a small judge misses (DESIGN.md, reward scorers): answers cut off mid-sentence,
looping on one phrase, too short to say anything, or echoing the prompt back. They say nothing about
whether the content is right. The `wellformed` reward scorer (actors.reward) applies them per pair.
"""

from __future__ import annotations

import re

# A finished answer ends with one of these (sentence punctuation, a closing quote/bracket, code fence,
# markdown emphasis); anything else reads as cut off mid-sentence.
_TERMINAL = tuple(".!?…\"'”’)]}`*")
MIN_WORDS = 4  # answers shorter than this many words lose proportionally
ECHO_FREE = 0.6  # share of the response's word trigrams that may come from the prompt at no cost


def _trigrams(words: list[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


def wellformed(prompt: str, response: str) -> float:
    """Cheap, deterministic form score in [0, 1]: the product of four factors, each in [0, 1].

    brevity     min(1, words / MIN_WORDS); empty -> the whole score is 0
    repetition  distinct word trigrams / all word trigrams (a loop of one phrase -> near 0)
    truncation  1 if the answer ends in terminal punctuation, else 0.5 (stopped mid-sentence)
    echo        1 while at most ECHO_FREE of the trigrams copy the prompt, then linearly to 0 at 100%
    """
    words = re.findall(r"\w+", response.lower())
    if not words:
        return 0.0
    brevity = min(1.0, len(words) / MIN_WORDS)
    grams = _trigrams(words)
    repetition = len(set(grams)) / len(grams) if grams else 1.0
    truncation = 1.0 if response.rstrip().endswith(_TERMINAL) else 0.5
    prompt_grams = set(_trigrams(re.findall(r"\w+", prompt.lower())))
    copied = sum(g in prompt_grams for g in grams) / len(grams) if grams else 0.0
    echo = min(1.0, (1.0 - copied) / (1.0 - ECHO_FREE))
    return brevity * repetition * truncation * echo
