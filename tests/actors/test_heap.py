"""actors.heap: freed small allocations go back to the OS (what a training round leaves behind)."""

from __future__ import annotations

import ctypes

import psutil
import pytest

from actors import heap


@pytest.mark.skipif(heap._libc() is None, reason="glibc only")
def test_release_returns_freed_heap_pages_to_the_os() -> None:
    libc = heap._libc()
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    me = psutil.Process()
    heap.release()
    base = me.memory_info().rss
    # 256 MB in 4 KB blocks: below the mmap threshold, so they live on the heap and stay there when freed
    blocks = [libc.malloc(4096) for _ in range(65_536)]
    for b in blocks:
        ctypes.memset(b, 1, 4096)  # touch the pages
    keep = libc.malloc(4096)  # a live block above them: the heap top cannot simply shrink
    for b in blocks:
        libc.free(b)
    held = me.memory_info().rss - base
    assert held > 200e6  # freed, but still the process's
    assert heap.release() is True
    after = me.memory_info().rss - base
    assert after < 50e6, f"{held / 1e6:.0f} MB freed, {after / 1e6:.0f} MB still held after release()"
    libc.free(keep)
