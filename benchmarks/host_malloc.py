"""Let glibc keep and reuse the big host buffers a CPU train step allocates.

XLA:CPU allocates an executable's temporaries (500 MB for the bench train
step) with posix_memalign on every call and frees them when it returns; torch
allocates and frees its activations the same way. glibc serves blocks that
large from fresh mmap()s and gives them back with munmap(), so every step
faults ~130k new pages in: 0.3 s of kernel time per step on the bench
workload (benchmarks/NOTES.md). With one arena, no mmap and no trimming, a
freed block stays in the heap and the next step reuses it. Peak memory does
not change; memory is just not handed back to the OS between steps.

glibc reads these settings once, at process start, so the process restarts
itself with them; child processes (the PyTorch peer, the memory probes)
inherit them, so both sides of every comparison run with the same allocator.
"""

import os
import sys

SETTINGS = {
    "MALLOC_ARENA_MAX": "1",  # Threads share the main heap: no 64 MB per-thread heaps.
    "MALLOC_MMAP_MAX_": "0",  # Never mmap; big blocks come from the heap too.
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),  # Never shrink the heap.
}


def active() -> bool:
    return all(os.environ.get(name) == value for name, value in SETTINGS.items())


def restart_with_reused_heap() -> None:
    """Replace this process by the same command with SETTINGS set (a no-op once they are)."""
    if not active():
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **SETTINGS})
