"""actors.heap: freed small allocations go back to the OS (what a training round leaves behind)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

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


# 128 MiB in 2 MiB blocks between live ones, freed, after glibc saw a mapped 8 MiB block freed
HELD_AFTER_FREE = r"""
import ctypes, sys, psutil
from actors import heap
if sys.argv[1] == "fixed":
    assert heap.map_large_blocks()
libc = heap._libc()
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.free(libc.malloc(8 << 20))  # mapped, then freed: glibc raises its threshold to 8 MiB
me = psutil.Process()
base = me.memory_info().rss
blocks, kept = [], []
for _ in range(64):  # each followed by a live 64 KiB block, as a step's tensors outlive its temporaries
    blocks.append(libc.malloc(2 << 20))
    ctypes.memset(blocks[-1], 1, 2 << 20)
    kept.append(libc.malloc(64 << 10))
for b in blocks:
    libc.free(b)
print(me.memory_info().rss - base)
"""


@pytest.mark.skipif(heap._libc() is None, reason="glibc only")
def test_map_large_blocks_returns_freed_megabyte_blocks_at_once() -> None:
    """What a training step does (tensors of a few MiB freed at every step): by default glibc serves
    them from the heap once a larger mapped block was freed, and keeps them when freed; with the
    threshold fixed they are mapped, and freeing returns them. A process of its own: mallopt is global."""
    root = Path(__file__).resolve().parents[2]

    def held(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", HELD_AFTER_FREE, mode], cwd=root, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout) / 2**20

    assert held("default") > 100  # of 128 MiB freed
    assert held("fixed") < 8
