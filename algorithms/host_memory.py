"""Keeps freed host memory in the process, so a training step does not fault in fresh pages.

glibc's ``malloc`` serves every large block (above a threshold of at most a few tens of MB) with
its own ``mmap`` and unmaps it again on ``free``. A learner step allocates such blocks many times:
each head's weight gradient (113 MB for SmolLM2's 49152 x 576 head, one per head that had rows,
and one more per micro-batch that it accumulates), the logits of every micro-batch, and the
gradients of the trained layers. Every one of them starts as untouched pages, and the kernel maps
and zeroes them one 4 KB page at a time on first write. On this project's 2-core CPU that takes
longer than the arithmetic done on the block: allocating and filling a 113 MB tensor costs 37 ms
with a fresh mapping and 1.9 ms with memory already mapped (20 rounds each, 2026-12-05).

:func:`keep_freed_memory` turns ``mmap`` off for ``malloc`` and raises its trim threshold, so a
freed block stays mapped in the heap and a later block of that size reuses it. That starts after a
few allocations: an aligned block fits a freed one only once it has merged with its free
neighbours. The cost is that the process keeps its peak memory mapped instead of handing it back
between steps, which a training process reaches again on the next step anyway. It is set once per process, only for CPU
work and only under glibc (elsewhere it does nothing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_ABOVE = 2**31 - 1  # bytes: the largest trim threshold mallopt takes (an int); 2 GiB free at the heap's top


@functools.cache
def _mallopt():
    """The C library's ``mallopt`` where that library is glibc, else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError, TypeError):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc.mallopt


@functools.cache
def _keep() -> bool:
    """Sets glibc's options once per process; whether both took."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))


def keep_freed_memory(device: torch.device | str) -> bool:
    """Makes ``malloc`` keep and reuse freed memory in this process when ``device`` is the CPU.

    Args:
        device: The device the process trains on; on any other device host memory holds little
            that is large, and nothing changes.

    Returns:
        Whether the setting is in force (False off the CPU or outside glibc).
    """
    if torch.device(device).type != "cpu":
        return False
    return _keep()
