"""Process-level runtime settings applied by ``main.py`` and the benchmarks.

``keep_freed_memory``: with glibc's defaults, every multi-megabyte tensor freed on the CPU goes back to the kernel
(``munmap`` or heap trimming), so the next step's tensor of the same size page-faults all of its pages again: for
a batch of 64 HR patches the degradation pipeline spent ~10 of its 16 ms in ~3,900 page faults per call
(``benchmarks/degradation.py``). Raising the mmap threshold to its maximum (32 MiB) and the trim threshold to 1 GiB
keeps freed blocks in the process for reuse (the usual advice for PyTorch on CPU, like jemalloc/tcmalloc). The cost
is that the resident memory stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 2**30) -> bool:
    """Tell glibc's allocator to keep freed memory in the process; returns False where it does not apply.

    Args:
        mmap_threshold: Allocations above this size use ``mmap`` (glibc's maximum, 32 MiB, by default).
        trim_threshold: Free memory at the top of the heap beyond this size is returned to the system.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
