"""glibc's transparent-huge-page malloc for a CPU training process (opt-in, Linux only).

XLA:CPU allocates a step's large temporaries afresh at every execution and frees them at its
end. glibc serves blocks above 32 MiB with ``mmap`` and returns them with ``munmap``, so every
step touches its temporaries' memory anew: one page fault per 4 KiB page. At the paper config
(``[6272, 6144]`` float32 temporaries) that is about 760,000 faults and 1.7 s of kernel time per
step on a 2-core machine. glibc 2.35 and later can mark its blocks for transparent huge pages
(the tunable ``glibc.malloc.hugetlb=1``, read once at process start), so one fault maps 2 MiB.
``benchmarks/malloc_pages.py`` measures both ways in fresh processes, paired.

A tunable is read only when the process starts, so :func:`relaunch_with_huge_page_malloc`
replaces the current process (``os.execve``) by the same command with the tunable set. It is
used by ``experiments/train.py --malloc_huge_pages``; the library itself never relaunches.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
"""The glibc tunable: 1 marks malloc's blocks ``MADV_HUGEPAGE`` (transparent huge pages)."""

THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
"""The kernel's transparent-huge-page mode: ``always``, ``madvise`` or ``never`` (bracketed)."""


def huge_page_malloc_active(environ: dict | None = None) -> bool:
    """Whether ``GLIBC_TUNABLES`` in ``environ`` (default: this process's) sets the tunable."""
    environ = os.environ if environ is None else environ
    settings = environ.get("GLIBC_TUNABLES", "").split(":")
    return any(item.startswith(f"{TUNABLE}=") and item != f"{TUNABLE}=0" for item in settings)


def huge_page_environment(environ: dict | None = None) -> dict:
    """A copy of ``environ`` (default: this process's) with ``glibc.malloc.hugetlb=1`` added to
    ``GLIBC_TUNABLES`` (other tunables kept; an existing ``hugetlb`` setting replaced)."""
    environ = dict(os.environ if environ is None else environ)
    kept = [
        item
        for item in environ.get("GLIBC_TUNABLES", "").split(":")
        if item and not item.startswith(f"{TUNABLE}=")
    ]
    environ["GLIBC_TUNABLES"] = ":".join([*kept, f"{TUNABLE}=1"])
    return environ


def unsupported_reason(thp_mode_file: str = THP_MODE_FILE) -> str | None:
    """Why this process cannot use the tunable (None when it can): not Linux with glibc 2.35 or
    later, or the kernel's transparent huge pages are ``never``."""
    if sys.platform != "linux":
        return f"not Linux ({sys.platform})"
    library, version = platform.libc_ver()
    if library != "glibc":
        return f"the C library is not glibc ({library or 'unknown'})"
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"unreadable glibc version {version!r}"
    if numbers < (2, 35):
        return f"glibc {version} predates the {TUNABLE} tunable (2.35)"
    try:
        with open(thp_mode_file) as handle:
            mode = handle.read()
    except OSError:
        return f"{thp_mode_file} is unreadable: no transparent huge pages"
    if "[never]" in mode:
        return "the kernel's transparent huge pages are off ([never])"
    return None


def relaunch_with_huge_page_malloc(argv: list[str] | None = None) -> str | None:
    """Replace this process by the same command with ``glibc.malloc.hugetlb=1`` set.

    Returns without relaunching when the tunable is already set (the relaunched process itself)
    or cannot be used, with the reason as a string (None: already active). Call it before any
    work: whatever the process did so far is lost.

    Args:
      argv: the command to run again (default ``sys.orig_argv``, the interpreter's own command
        line, e.g. ``["python", "-m", "experiments.train", "--workdir=..."]``).
    """
    if huge_page_malloc_active():
        return None
    reason = unsupported_reason()
    if reason is not None:
        return reason
    argv = list(sys.orig_argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], huge_page_environment())
    raise AssertionError("unreachable: os.execve returns only by raising")  # pragma: no cover
