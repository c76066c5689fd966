"""Keeping freed host memory mapped, so that XLA's CPU buffers stop page-faulting every step.

XLA's CPU runtime ``malloc``s each execution's temporary buffer (906 MB for the SimCSE step of
``benchmarks/train_step.py``) and frees it afterwards. glibc serves blocks that large with a
fresh ``mmap`` and gives them back with ``munmap``, so every step faults every page in again:
about 240,000 minor faults and 0.55 s of kernel time per 2-3 s step on the project's 2-core
machine. :func:`keep_freed_memory` sets glibc's ``malloc`` to serve every block from one heap
(``M_MMAP_MAX = 0``; ``M_ARENA_MAX = 1``, since the arenas of XLA's worker threads cannot grow
to such sizes and fall back to ``mmap``) that is never trimmed (``M_TRIM_THRESHOLD``), so freed
pages stay mapped and the next step reuses them: 61,000 faults and 0.11 s. The same as starting
the process with ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=18446744073709551615``.

Cost: the process's resident memory stays at its peak instead of shrinking between steps.
It is process-wide (PyTorch in the same process gets it too), and glibc fixes its arena limit
when a second thread first allocates (numpy's BLAS threads do at import): call it first thing,
before importing numpy, JAX or PyTorch, or set the environment variables above instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_NEVER_TRIM = -1  # mallopt(3): -1 disables trimming (a positive int caps it at 2 GiB, less than a step frees)


def keep_freed_memory() -> bool:
    """Configures glibc's malloc as above; False (and a debug log) where the C library is not glibc."""
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt in %s: host memory settings unchanged", path)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM)))
