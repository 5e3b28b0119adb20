"""Keep freed host memory mapped, so a CPU step does not page-fault its temporaries every step.

XLA:CPU allocates a step's large temporaries afresh at every execution and frees them at its
end. glibc's malloc serves every block above its ``mmap`` threshold (at most 32 MiB) with a
fresh ``mmap`` and returns it with ``munmap``, and trims the top of its heap once 128 KiB or
more are free there, so the next step touches new pages again: one page fault per 4 KiB page.
At the paper config (``[6272, 6144]`` float32 temporaries) that is about 760,000 faults and
1.6 s of kernel time per step on a 2-core machine; at the small benchmark config about 50,000.

:func:`retain_freed_memory` sets two of glibc's ``mallopt`` parameters for the whole process:
no block is served by ``mmap`` (``M_MMAP_MAX = 0``: they come from the heap and its free lists)
and the heap is never trimmed (``M_TRIM_THRESHOLD`` = the largest size). Freed blocks then stay
mapped, and the next step's temporaries reuse them without a fault. The price: the process
keeps its peak heap until it exits (what a training process holds at every step anyway). It is
applied by :class:`~usae_jax.train.loop.StepRunner` for a CPU mesh unless
``TrainConfig.retain_freed_memory`` is False; ``benchmarks/malloc_pages.py`` measures it.
On other C libraries (macOS, musl) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import sys

M_TRIM_THRESHOLD = -1
"""glibc's ``mallopt`` parameter: free space at the heap's top above which it is returned."""

M_MMAP_MAX = -4
"""glibc's ``mallopt`` parameter: how many blocks may be served by ``mmap`` at once."""

_RETAINED = False


def unsupported_reason() -> str | None:
    """Why :func:`retain_freed_memory` cannot act in this process (None when it can)."""
    if sys.platform != "linux":
        return f"not Linux ({sys.platform})"
    library, _ = platform.libc_ver()
    if library != "glibc":
        return f"the C library is not glibc ({library or 'unknown'})"
    return None


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def retain_freed_memory() -> str | None:
    """Make glibc keep freed memory mapped for the rest of this process (see the module
    docstring). Idempotent. Returns None once applied, else why it was not (not glibc)."""
    global _RETAINED
    if _RETAINED:
        return None
    reason = unsupported_reason()
    if reason is not None:
        return reason
    libc = _libc()
    # mallopt takes an int; -1 converts to the largest size_t: the heap is never trimmed
    if not libc.mallopt(M_MMAP_MAX, 0) or not libc.mallopt(M_TRIM_THRESHOLD, -1):
        return "glibc refused the mallopt settings"
    _RETAINED = True
    return None


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` has acted in this process."""
    return _RETAINED
