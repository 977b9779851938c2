"""Keep freed host memory for reuse instead of handing it back to the OS (glibc malloc).

A CPU training step allocates and frees its activations every step: ~200 MB at the
paper search size. glibc serves each block above its mmap threshold (128 KiB at start,
raised on the fly to the size of an mmapped block when one is freed) with a fresh ``mmap``,
and gives the heap's free top back to the OS past twice that threshold, so the next step
faults the same pages in again: 50–60k minor page faults and 0.2–0.4 s of system time per paper-size
search step, measured. With the thresholds below the second step faults almost nothing.

Process-wide, so the library never calls this by itself: the stage commands and the
benchmarks do (a program that imports ``darts`` decides for itself). Peak memory stays
what the step needs; what changes is that the process keeps it between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: blocks up to this size come from the heap, which is reused (glibc's largest allowed value on 64 bits)
MMAP_THRESHOLD = 32 << 20
#: never give the heap's free top back to the OS (the largest int mallopt takes)
TRIM_THRESHOLD = 2 ** 31 - 1
#: grow the heap in steps of this much, so a step's allocations do not extend it bit by bit
TOP_PAD = 64 << 20


def retain_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (see the module doc); True if it took.

    False, and nothing changed, where the C library is not glibc (musl, macOS, Windows).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
