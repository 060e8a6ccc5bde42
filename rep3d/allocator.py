"""Keep freed memory in the process instead of handing it back to the OS after every large tensor.

glibc's ``malloc`` serves every block over its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it
with ``munmap`` when the tensor dies. A 3-D network at full resolution allocates tens to hundreds of MiB per layer,
so each forward pays a page fault per 4 KiB page of every activation, and the kernel zeroes each page first
(``benchmarks/model_forward.py`` measures what that costs a deployed forward). Activations under 32 MiB (a
``rep3d_tiny`` window of 64³) are mostly reused by glibc already; the difference is in larger windows and wider
models. :func:`keep_freed_memory` tells glibc
to serve large blocks from its heap and to keep freed heap memory for reuse, which is what jemalloc or tcmalloc
(the allocators PyTorch's CPU tuning guide recommends preloading) do by default.

The setting is process-wide: the process's resident memory then stays near its peak instead of shrinking between
tensors. ``rep3d predict``, ``evaluate`` and ``train`` turn it on for their own process; a library caller decides
for theirs. Elsewhere than glibc (macOS, Windows, musl) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory", "keep_freed_memory_supported"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_KEEP_UP_TO = 2**31 - 1  # freed memory at the top of the heap beyond this (2 GiB) still goes back to the OS


def _mallopt():
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
    except (AttributeError, ValueError, OSError):  # not a glibc system
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory_supported() -> bool:
    """Whether :func:`keep_freed_memory` can act here (the C library is glibc)."""
    return _mallopt() is not None


def keep_freed_memory(enabled: bool = True) -> bool:
    """Serve large allocations from glibc's heap and keep freed memory for reuse (``enabled=False``: glibc's defaults).

    Returns ``True`` when the setting took effect, ``False`` where the C library is not glibc. Process-wide; affects
    allocations made after the call.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mmap_max, trim = (0, _KEEP_UP_TO) if enabled else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    return bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
