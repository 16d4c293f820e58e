"""Deterministic seeds derived from the run seed, so a rerun or a resume reproduces exactly.

Every random choice of a run takes its seed from `derive_seed(run_seed, <what>, <which>)`: the same
inputs give the same seed in any process, batch composition or order (vLLM's per-request seeds make
generation itself batch-invariant, DESIGN.md).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any printable parts, e.g. derive_seed(seed, "estimate", iteration, prompt_id)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
