"""Keep freed tensor memory in the process instead of handing it back to the kernel.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a block above its mmap
threshold with a fresh ``mmap`` and unmaps it on free, and returns the top of the heap to the
kernel whenever more than the trim threshold is free. A training step allocates and frees the same
large blocks every time (activations, gradients set to ``None``), so each step then pays the page
faults of zero-filling that memory again. Measured on the paper-size V+S model on single vectors
(bench/train.py, "vectors", 2 threads): the steps took 25 % less time with the mmap threshold at
its maximum (32 MiB) and trimming off (at 2 GiB, the largest value ``mallopt`` takes). The cost is that memory freed by the process stays mapped
to it (its resident size stays at its peak), the usual trade of a training process.

:func:`keep_freed_memory` sets both with ``mallopt`` on glibc (Linux) and does nothing elsewhere or
when the environment already sets ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (the
user's choice stands). ``GIAMIC_MALLOC=default`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc: larger is refused
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int): 2 GiB free at the top of the heap

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to 32 MiB and turn heap trimming off, once per process; True if
    the allocator now works so."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if (not sys.platform.startswith("linux") or os.environ.get("GIAMIC_MALLOC") == "default"
            or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
