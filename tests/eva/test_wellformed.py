"""The well-formedness rules on hand-made answers (the numbers follow the factors in eva.wellformed)."""

import pytest

from eva.wellformed import wellformed


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        ("Name a city.", "", 0.0),  # empty
        ("Name a city.", "Paris.", 0.25),  # 1 word of MIN_WORDS=4
        ("Name a city.", "Yes", 0.125),  # short and no terminal punctuation: 0.25 * 0.5
        ("What is the capital of France?", "The capital of France is Paris.", 1.0),  # 2/4 trigrams copied: free
        ("Name a big city.", "The biggest city in the world is", 0.5),  # stops mid-sentence
        ("Say something.", "go go go go go go.", 0.25),  # 1 distinct trigram of 4
        ("Tell me about the history of Rome.", "Tell me about the history of Rome.", 0.0),  # pure echo
        ("Describe the water cycle briefly.", "Describe the water cycle now.", 5 / 6),  # 2/3 copied: (1/3)/0.4
        ("Write code.", "```\nprint(1)\n```", 0.5),  # 2 words; a closing code fence is an ending
    ],
)
def test_wellformed_hand_cases(prompt: str, response: str, expected: float) -> None:
    assert wellformed(prompt, response) == pytest.approx(expected)
