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

:func:`hugepage_env` / :func:`reexec_with_hugepages` add glibc's ``glibc.malloc.hugetlb=1``
tunable, which backs large ``malloc`` blocks with transparent huge pages (``madvise`` mode, the
usual kernel default). Measured on the paper preset at 481x321 (2 threads, fresh processes,
alternating): ONNX Runtime 1.757 -> 1.69 s (median of 4 processes each; minima 1.70 -> 1.60 s);
PyTorch unchanged within noise (non-local share 22.1-22.5% with, 22.7-23.5% without). The
KNN's gathers read 40-70 MB tensors, and fewer TLB misses are what ONNX Runtime gains. glibc reads
tunables only at start-up, so the command line restarts itself once with them (opt out with
``N3DEPLOY_HUGEPAGES=0``) and the benchmark workers are started with them; a library user sets
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` before starting Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from typing import Mapping

__all__ = ["tune_cpu_allocator", "hugepage_env", "reexec_with_hugepages", "HUGEPAGE_TUNABLE"]

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"

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


def hugepage_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default ``os.environ``) with :data:`HUGEPAGE_TUNABLE` added to ``GLIBC_TUNABLES``.

    Tunables already set are kept; one that already sets ``glibc.malloc.hugetlb`` is left as it is.
    """
    out = dict(os.environ if env is None else env)
    current = out.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=" not in current:
        out["GLIBC_TUNABLES"] = f"{current}:{HUGEPAGE_TUNABLE}" if current else HUGEPAGE_TUNABLE
    return out


def reexec_with_hugepages() -> None:
    """Restart this process once, same command line, with :func:`hugepage_env` (glibc Linux only).

    Returns without doing anything where it does not apply: not Linux/glibc, the tunable already
    in ``GLIBC_TUNABLES``, ``N3DEPLOY_HUGEPAGES=0``, or no original command line to restart.
    Call it before any work: ``os.execve`` replaces the process (same PID, same open files).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return
    if os.environ.get("N3DEPLOY_HUGEPAGES", "1") == "0":
        return
    env = hugepage_env()
    argv = list(getattr(sys, "orig_argv", []))
    if env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES") or not argv or not sys.executable:
        return  # already set (by us or by the user), or nothing to restart
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
