"""Make freed memory go back to the operating system (glibc).

glibc's malloc serves blocks of at least ``M_MMAP_THRESHOLD`` (128 KiB) with their own
mappings, which return to the system when freed, but it raises that threshold to the size of
each such block freed (up to 32 MiB). After a few frees, blocks of a few MB (a projection's
weight, a batch's activations) come from the heap and stay with the process: a streamed job,
which frees one block's weights after another, then grows as if it held them all (measured
on SmolLM2: +0.35 GB over 30 blocks instead of +8 MB). Pinning the threshold keeps every
large block its own mapping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def pin_mmap_threshold(threshold_bytes: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold (turning off its growth); False where malloc is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        log.warning("Could not pin the allocator's mmap threshold (no glibc mallopt): freed "
                    "memory may stay with the process, and peaks grow")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
