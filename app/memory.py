"""Keep a long-running worker's memory flat after an occasional multi-megabyte Kafka value.

glibc raises its mmap threshold after a large block is freed, so later large buffers come from the
heap, which rarely shrinks: one burst of oversized (poison) messages would leave the RSS tens of MiB
higher for good. Fixing the thresholds keeps blocks of 1 MiB and more mmapped, and returned to the
system as soon as they are freed. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1024 * 1024


def return_large_buffers_to_the_system() -> bool:
    """Set glibc's mmap and trim thresholds; True when they were set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, 2 * THRESHOLD_BYTES)
    )
