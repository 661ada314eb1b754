"""glibc's malloc set to keep freed memory for reuse: a CPU process that allocates large tensors by the
gigabyte (the automatic mask generator) otherwise spends much of its time in page faults; see
docs/performance.md."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1
"""Free memory at the heap's top kept before glibc gives it back (the largest ``int``)."""


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap and keep freed memory there for reuse (process-wide,
    once). Returns whether it took: False where the C library is not glibc (nothing changes there).

    By default glibc serves blocks above a threshold (128 KiB, raised as they are freed, up to 32 MiB) with
    ``mmap``, unmaps them on ``free`` and trims its heap: every new tensor of a few MiB then starts on fresh
    pages, which the kernel zero-fills on first touch: the automatic mask generator faults on every new
    tensor. With no ``mmap`` (``M_MMAP_MAX`` 0) and no trimming, freed blocks are reused and those faults go
    (docs/performance.md). The resident memory stays at its high-water mark instead, which does not grow with
    the number of images. Where the heap cannot grow, glibc still falls back to ``mmap``.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    no_mmap = mallopt(M_MMAP_MAX, 0)
    return bool(no_mmap) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
