"""Process-level CPU performance settings for PyTorch inference.

PyTorch allocates each large tensor with ``malloc``; glibc serves allocations above its mmap
threshold (at most 32 MiB by default, adaptively less) with fresh ``mmap`` pages and returns
them to the OS on ``free``. Every large temporary then pays first-touch page faults, which on
the memory-bound parts of N3Net (the KNN's gathers and adds) costs more than the arithmetic:
measured here, an add of two 10M-float tensors took 36 ms with the defaults and 7 ms with the
settings below. This is the issue PyTorch's CPU tuning guide addresses with jemalloc/tcmalloc;
:func:`tune_cpu_allocator` does the same with glibc's own ``mallopt``: large blocks come from
the heap and are kept for reuse (resident memory stays at its peak instead of shrinking).

The command line and the benchmarks call it; library users opt in (it changes the whole process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_tuned = False


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1, top_pad: int = 1 << 28) -> bool:
    """Keep freed large blocks for reuse (glibc ``mallopt``); returns whether it took effect.

    A no-op returning ``False`` on non-glibc platforms. Idempotent.
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold),
            (_M_TRIM_THRESHOLD, trim_threshold),
            (_M_TOP_PAD, top_pad),
        )
    )
    _tuned = ok
    return ok
