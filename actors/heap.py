"""Give freed heap memory back to the operating system.

glibc's malloc keeps freed blocks for reuse instead of returning them: after a DPO round on CPU the
trainer's process holds ~3.7 GB that no tensor uses any more (its PSS drops from 4.7 to 0.95 GB on
`malloc_trim`, measured on SmolLM2-135M: benchmarks/RESULTS.md), which the engines then cannot have.
Actors call `release()` after the work that allocates most: a training round, a policy save.

While it trains, the same allocator also raises the peak: glibc serves a block of 128 KiB or more with a
mapping of its own, unmapped when freed, but every such free raises that threshold to the block's size
(up to 32 MiB). After the first steps a training process's activations and gradients, a few MiB each,
come from the heap instead, where the freed ones wait, fragmented, beside the live ones. The trainer
fixes the threshold (`map_large_blocks`).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")  # glibc (Linux); elsewhere there is nothing to trim this way
    except OSError:
        return None


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)


def map_large_blocks(threshold: int = 128 * 1024) -> bool:
    """mallopt(M_MMAP_THRESHOLD, threshold): blocks of `threshold` bytes or more always get their own
    mapping, returned to the OS when freed (setting it turns glibc's raising of the threshold off).
    False where glibc is absent or refuses."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release() -> bool:
    """malloc_trim(0): return every free page of the heap to the OS. False where glibc is absent."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True
