"""Step 3 of an iteration: ask the creator for rewrites of sampled prompts, then clean and filter them.

Three pieces, all pure:
- `OPERATORS` + `build_evolve_requests`: the creator's meta-prompts (EvolInstruct-style in-depth and
  in-breadth operators, in our own words) and a deterministic plan of which operator and which
  sampling seed each rewrite uses.
- `parse_evolved`: turns a raw creator reply into a candidate prompt (strips labels, echoes, fences,
  chat tokens, trailing commentary).
- `filter_evolved`: drops bad candidates with a counted reason (near duplicates through
  `eva.dedup.NearDuplicateIndex`; children that are not prompts through `eva.child_filter`) and
  builds the surviving children with their lineage.

The creator is a small model (SmolLM2-135M on CPU by default), so the templates are short and
explicit, and the parser/filter assume its replies are often messy.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from eva.child_filter import CHILD_REASONS, PromptCheck, child_reason
from eva.dedup import NearDuplicateIndex, char_ngrams, jaccard
from eva.types import FilterReport, Prompt, normalize_text

# ---------------------------------------------------------------------------------------------
# Meta-prompts
# ---------------------------------------------------------------------------------------------

# Shared tail: the same two rules in every template, and a final "New prompt:" line so the
# model's reply starts with the rewrite itself.
_RULES = (
    "Keep it self-contained and answerable in plain text.\n"
    "Reply with only the new prompt. Do not answer it and do not add a preamble."
)


def _template(instruction: str) -> str:
    return f"{instruction}\n{_RULES}\n\nPrompt: {{prompt}}\n\nNew prompt:"


OPERATORS: dict[str, str] = {
    # in-depth: the same task, made harder in one specific way
    "constraints": _template(
        "Rewrite the prompt below and make it harder by adding one or two concrete constraints or "
        "requirements, such as a word limit, a required format, or a case that must be handled."
    ),
    "deepen": _template(
        "Rewrite the prompt below so that it asks for more depth and breadth on the same question, "
        "such as causes, trade-offs or examples."
    ),
    "concretize": _template(
        "Rewrite the prompt below and replace its general concepts with specific ones, such as a "
        "named situation, real numbers or a particular audience."
    ),
    "reasoning": _template(
        "Rewrite the prompt below so that answering it needs explicit reasoning over several steps."
    ),
    "expand": _template(
        "Rewrite the prompt below with a wider scope. Keep its goal and add one closely related sub-task."
    ),
    # in-breadth: a new task next to the old one
    "breadth": _template(
        "Write a brand-new prompt in the same domain as the prompt below. Choose a rarer topic and keep a "
        "similar length and difficulty. Do not reuse the original question."
    ),
}


def instruction(operator: str) -> str:
    """The meta-prompt of `operator` without the prompt: what the creator is told to do."""
    check_operators([operator])
    return OPERATORS[operator].partition("\n\nPrompt:")[0]


def render_meta_prompt(operator: str, prompt_text: str) -> str:
    """The creator's input for one rewrite of `prompt_text` with `operator`."""
    check_operators([operator])
    # str.format does not re-read the substituted value, so braces in the prompt are safe.
    return OPERATORS[operator].format(prompt=prompt_text)


def check_operators(operators: Sequence[str]) -> None:
    """ValueError listing the known operators unless `operators` is a non-empty list of them."""
    if not operators:
        raise ValueError(f"no evolve operators given; known operators: {', '.join(OPERATORS)}")
    unknown = [op for op in operators if op not in OPERATORS]
    if unknown:
        raise ValueError(
            f"unknown evolve operator(s) {', '.join(map(repr, unknown))}; known operators: {', '.join(OPERATORS)}"
        )


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvolveRequest:
    """One rewrite to generate: the creator gets `meta_prompt` and samples with `seed`."""

    parent: Prompt
    operator: str
    meta_prompt: str
    seed: int


def _digest_int(key: str, nbytes: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:nbytes], "big")


def request_seed(seed: int, parent_id: str, variant: int) -> int:
    """Per-request sampling seed (31 bits): depends only on (seed, parent, variant), not on the batch."""
    return _digest_int(f"{seed}:{parent_id}:{variant}", 4) & 0x7FFFFFFF


def draw_operators(operators: Sequence[str], num_variants: int, seed: int, parent_id: str) -> list[str]:
    """Operators for the variants of one parent, from an rng seeded by (seed, parent id).

    With num_variants <= len(operators) no operator repeats; beyond that, whole shuffled rounds
    are chained so every operator is used as evenly as possible. Listing an operator twice
    doubles its share.
    """
    rng = np.random.default_rng(_digest_int(f"operators:{seed}:{parent_id}", 16))
    rounds = math.ceil(num_variants / len(operators)) if num_variants > 0 else 0
    order = [operators[i] for _ in range(rounds) for i in rng.permutation(len(operators))]
    return order[:num_variants]


def build_evolve_requests(
    prompts: Sequence[Prompt], num_variants: int, operators: Sequence[str], seed: int
) -> list[EvolveRequest]:
    """`num_variants` requests per prompt, in prompt order then variant order.

    A prompt gets the same operators and seeds whatever else is in the batch (all randomness is
    keyed by the parent id), so a resumed or re-batched iteration asks the creator the same things.
    """
    check_operators(operators)
    if num_variants < 0:
        raise ValueError(f"num_variants must be >= 0, got {num_variants}")
    requests = []
    for parent in prompts:
        for variant, op in enumerate(draw_operators(operators, num_variants, seed, parent.id)):
            requests.append(
                EvolveRequest(parent, op, render_meta_prompt(op, parent.text), request_seed(seed, parent.id, variant))
            )
    return requests


# ---------------------------------------------------------------------------------------------
# Parsing a creator reply
# ---------------------------------------------------------------------------------------------

# Everything after an end-of-turn token belongs to a turn the model invented, not to the reply.
_CHAT_END = re.compile(r"<\|(?:im_end|endoftext|eot_id|end|eos)\|>|</s>")
_CHAT_START = re.compile(r"<\|im_start\|>\s*(?:system|user|assistant)?|<\|[A-Za-z0-9_]{1,32}\|>|^\s*<s>")
_LINE_BREAKS = re.compile(r"\r\n?|[\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\u200e\u200f\ufeff\ud800-\udfff]")
_BLANK_RUNS = re.compile(r"\n{3,}")

_LABEL_NOUN = r"(?:prompt|instruction|question|task|request|version)"
# A label at the very start: "New prompt:", "#New Prompt#:", "**Rewritten prompt:**", "## Prompt 2".
_LABEL = re.compile(
    r"^[\s#*_>\"'`]*(?:the\s+|your\s+|my\s+|a\s+)?"
    r"(?:(?:new|rewritten|revised|evolved|improved|updated|modified|final|harder|created|generated|"
    r"resulting|given|original|reformulated|rephrased|deeper|concrete|expanded|broader)\s+)?"
    + _LABEL_NOUN
    + r"(?:\s*#?\s*\d+)?[\s#*_\"'`]*?(?:\s*[#*_]*\s*:[*_]*|[#*_\s]*(?=\n|$))",
    re.IGNORECASE,
)
_INTERJECTION = r"(?:sure|certainly|of course|okay|ok|absolutely|alright|great|yes|got it)"
_INTERJECTION_ONLY = re.compile(rf"^\W*{_INTERJECTION}\W*$", re.IGNORECASE)
_INTERJECTION_LEAD = re.compile(rf"^\W*{_INTERJECTION}[!.]+\s+", re.IGNORECASE)
_ASSISTANT_LINE = re.compile(rf"^\W*(?:{_INTERJECTION}\b|here(?:'s|’s|\s+is|\s+are)\b)", re.IGNORECASE)
_MENTIONS_PROMPT = re.compile(
    r"\b(?:prompts?|instructions?|questions?|versions?|rewrite|rewritten|tasks?)\b", re.IGNORECASE
)
_FENCE = re.compile(r"^```[^\n`]*\n(.*?)\n?```$", re.DOTALL)
_PARAGRAPH_SPLIT = re.compile(r"\n[ \t]*\n")
# A later paragraph that talks about the prompt instead of being part of it.
_COMMENTARY = re.compile(
    r"^[\s*_#>(\[]*(?:(?:notes?|explanation|rationale|changes(?: made)?|answer|response|solution)[*_\s]*:"
    r"|this (?:new |rewritten |revised |evolved |updated |modified )?(?:prompt|version|question|instruction)\b"
    r"|(?:in )?this (?:version|rewrite)\b"
    r"|i (?:have )?(?:added|made|changed|rewrote|modified|replaced)\b)",
    re.IGNORECASE,
)
_QUOTE_PAIRS = (
    ('"""', '"""'),
    ("**", "**"),
    ("__", "__"),
    ('"', '"'),
    ("'", "'"),
    ("`", "`"),
    ("*", "*"),
    ("“", "”"),
    ("‘", "’"),
    ("«", "»"),
    ("„", "“"),
)
_LABEL_WINDOW = 300  # labels are short; bounding the window keeps hostile inputs linear


def parse_evolved(raw: str) -> str | None:
    """The new prompt inside a raw creator reply, or None when nothing is left.

    Removes chat-template tokens (and anything after an end-of-turn token), control characters,
    leading labels and assistant preambles, a code fence or quotes wrapping the whole reply, and
    trailing commentary paragraphs ("Note: ...", "This prompt ..."). Whitespace runs inside lines
    are collapsed. Never raises.
    """
    if not isinstance(raw, str):
        return None
    text = _collapse_whitespace(_remove_chat_tokens(_CONTROL.sub("", _LINE_BREAKS.sub("\n", raw))))
    for _ in range(8):  # labels, fences and quotes can nest in any order: peel until stable
        before = text
        text = _strip_wrappers(_drop_commentary(_strip_leading_labels(text)))
        if text == before:
            break
    text = _collapse_whitespace(text)
    return text or None


def _remove_chat_tokens(text: str) -> str:
    pieces = _CHAT_END.split(text)
    first = next((p for p in pieces if _CHAT_START.sub("", p).strip()), "")
    return _CHAT_START.sub("", first)


def _collapse_whitespace(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def _strip_leading_labels(text: str) -> str:
    head = text[:_LABEL_WINDOW]
    first_line, _, rest = text.partition("\n")
    if _INTERJECTION_ONLY.match(first_line):
        return rest.strip()
    if _ASSISTANT_LINE.match(first_line):
        line = first_line.rstrip(" *_")
        # "Here is a short text:" may open a real prompt; only an assistant voice or a mention of
        # the prompt marks the line as preamble.
        if line.endswith(":") and (_MENTIONS_PROMPT.search(line) or _INTERJECTION_LEAD.match(line + " ")):
            return rest.strip()
        before, colon, after = first_line.partition(":")
        if colon and _MENTIONS_PROMPT.search(before) and after.strip():
            return (after + "\n" + rest).strip()
    label = _LABEL.match(head)
    if label and label.end() > 0:
        return text[label.end() :].strip()
    lead = _INTERJECTION_LEAD.match(head)
    return text[lead.end() :].strip() if lead else text.strip()


def _strip_wrappers(text: str) -> str:
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and len(text) > 6:
        fenced = _FENCE.match(text)
        if fenced and "```" not in fenced.group(1):
            return fenced.group(1).strip()
    for opening, closing in _QUOTE_PAIRS:
        inner = text[len(opening) : len(text) - len(closing)]
        # Only a pair that wraps everything: `"a" and "b"` starts and ends with quotes but is not wrapped.
        if len(text) >= len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
            if not _quote_inside(inner, opening, closing):
                return inner.strip()
    return text


def _quote_inside(inner: str, opening: str, closing: str) -> bool:
    """Does the wrapped part use the quote itself (then the outer pair is not a wrapper)?"""

    def used(mark: str) -> bool:
        if mark in ("'", "’"):  # an apostrophe inside a word ("sea's") is not a quote
            return bool(re.search(rf"(?<!\w){mark}|{mark}(?!\w)", inner))
        return mark in inner

    return used(opening) or used(closing)


def _drop_commentary(text: str) -> str:
    paragraphs = _PARAGRAPH_SPLIT.split(text)
    for i, paragraph in enumerate(paragraphs[1:], start=1):
        if _COMMENTARY.match(paragraph):
            return "\n\n".join(paragraphs[:i]).strip()
    return text


# ---------------------------------------------------------------------------------------------
# Filtering
# ---------------------------------------------------------------------------------------------

REASONS: tuple[str, ...] = (
    "empty",
    "too_short",
    "too_long",
    "garbage",
    "meta_echo",
    "refusal",
    "duplicate",
    "near_duplicate",
    *CHILD_REASONS,
)

_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CHAR_RUN = re.compile(r"(\S)\1{19,}")
_CHUNK_LOOP = re.compile(r"(.{10,80}?)\1{2,}", re.DOTALL)  # a phrase said three times in a row
_WORD = re.compile(r"\w+")
_LABEL_INSIDE = re.compile(
    r"(?:#\s*)?\b(?:new|rewritten|given|original|evolved|revised)\s+(?:prompt|instruction)\s*#?\s*:|\{prompt\}",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,? (?:but )?i\b|my apologies"
    r"|as an ai(?:\s+(?:language model|assistant|model))?\s*,|as a (?:large )?language model"
    r"|i(?: cannot| can't| can not| won't| will not| am unable to|'m unable to| am not able to|'m not able to)"
    r" (?:help|assist|provide|create|write|comply|fulfill|generate|do "
    r"(?:that|this|it)|rewrite|answer|complete|support)\b"
    r"|unfortunately,? i(?: cannot| can't| am unable|'m unable))",
    re.IGNORECASE,
)


def _meta_markers() -> tuple[str, ...]:
    """Distinctive sentences of the templates: a reply containing one is echoing instructions."""
    fragments = set()
    for template in OPERATORS.values():
        for piece in re.split(r"[.:;,\n]", template.replace("{prompt}", "")):
            piece = normalize_text(piece)
            if len(piece) >= 25:  # shorter pieces ("trade-offs or examples") occur in real prompts
                fragments.add(piece)
    return tuple(sorted(fragments))


META_MARKERS: tuple[str, ...] = _meta_markers()


def _is_garbage(text: str) -> bool:
    if _BAD_CHARS.search(text):
        return True
    non_space = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in non_space)
    wordy = sum(c.isalnum() for c in text) + (len(text) - len(non_space))
    # Mostly symbols, or almost no letters (digits alone are not a prompt).
    if not non_space or wordy < 0.5 * len(text) or letters < 0.2 * len(non_space):
        return True
    words = _WORD.findall(text.casefold())
    if len(words) >= 8 and Counter(words).most_common(1)[0][1] > 0.5 * len(words):
        return True  # one token looping
    if _CHAR_RUN.search(text):
        return True
    return any(any(c.isalpha() for c in m.group(1)) for m in _CHUNK_LOOP.finditer(text))


def _is_meta_echo(text: str) -> bool:
    if _LABEL_INSIDE.search(text):
        return True
    norm = normalize_text(text)
    return any(marker in norm for marker in META_MARKERS)


def _is_refusal(text: str) -> bool:
    return bool(_REFUSAL.match(text.replace("’", "'")))


def content_reason(text: str | None, *, min_chars: int, max_chars: int) -> str | None:
    """Why a candidate is unusable on its own (first of empty .. refusal), or None if it is fine.

    Checks run cheapest first; lengths are characters of the parsed text.
    """
    if text is None or not text.strip():
        return "empty"
    if len(text) < min_chars:
        return "too_short"
    if len(text) > max_chars:
        return "too_long"
    if _is_garbage(text):
        return "garbage"
    if _is_meta_echo(text):
        return "meta_echo"
    if _is_refusal(text):
        return "refusal"
    return None


def _novelty_reason(text: str, parent: Prompt, existing: NearDuplicateIndex, batch: NearDuplicateIndex) -> str | None:
    norm = normalize_text(text)
    if norm == normalize_text(parent.text) or text in existing or text in batch:
        return "duplicate"
    if jaccard(char_ngrams(text), char_ngrams(parent.text)) >= existing.threshold:
        return "near_duplicate"
    if existing.is_near_duplicate(text) or batch.is_near_duplicate(text):
        return "near_duplicate"
    return None


def filter_evolved(
    candidates: Sequence[tuple[EvolveRequest, str | None]],
    existing: NearDuplicateIndex | Iterable[str],
    *,
    min_chars: int,
    max_chars: int,
    near_dup_threshold: float,
    iteration: int,
    prompt_check: PromptCheck | None = None,
    accepted: Iterable[str] = (),
) -> tuple[list[Prompt], FilterReport]:
    """Keep the usable parsed rewrites as children of their parents; count why the rest went.

    `existing` is the buffer: its texts (an index is built) or a `NearDuplicateIndex` the caller
    keeps per buffer. The index is only read: add the kept children to it yourself once they
    join the buffer. `accepted`: children kept earlier in this iteration (earlier evolve rounds),
    not in the buffer yet: candidates are checked against them as against each other. Candidates
    are checked in order, so of two near-identical rewrites the first is kept. With `prompt_check`,
    a new candidate must also be a prompt for its parent (`eva.child_filter`: meta_paraphrase,
    answer, not_a_request, off_topic). The report lists every reason of `REASONS`, zeros included,
    so metrics have the same keys every iteration.
    """
    if isinstance(existing, NearDuplicateIndex):
        if not math.isclose(existing.threshold, near_dup_threshold):
            raise ValueError(
                f"index threshold {existing.threshold} differs from near_dup_threshold {near_dup_threshold}"
            )
        index = existing
    else:
        index = NearDuplicateIndex(near_dup_threshold, existing)
    batch = NearDuplicateIndex(near_dup_threshold, accepted)
    kept: list[Prompt] = []
    dropped = dict.fromkeys(REASONS, 0)
    for request, text in candidates:
        reason = content_reason(text, min_chars=min_chars, max_chars=max_chars)
        if reason is not None:
            dropped[reason] += 1
            continue
        assert text is not None  # content_reason calls a missing text "empty"
        reason = _novelty_reason(text, request.parent, index, batch)
        if reason is None and prompt_check is not None:
            reason = child_reason(text, request.parent.text, instruction(request.operator), prompt_check)
        if reason is not None:
            dropped[reason] += 1
            continue
        batch.add(text)
        kept.append(request.parent.child(text, request.operator, iteration))
    return kept, FilterReport(kept=len(kept), dropped=dropped)
