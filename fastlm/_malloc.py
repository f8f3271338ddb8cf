"""Process-level glibc malloc setting for training: keep freed large buffers instead of returning them to the OS.

A training step frees and reallocates the same large activation and gradient buffers (e.g. the (tokens,
vocab) logits gradient, 12+ MiB) every step. glibc serves such blocks with mmap (or trims the heap top
once more than trim_threshold is free), so each step faults the pages in again (issue 21's model, bf16,
2 threads: the same thresholds as GLIBC_TUNABLES cut the step's copies and fills from ~25 to ~15 ms in one
profile; whole step in lock step, 1 thread: MFU best 0.733 -> 0.748, median 0.662 -> 0.722).
Raising M_MMAP_THRESHOLD to its maximum (32 MiB) and M_TRIM_THRESHOLD to 256 MiB keeps them in the heap
(the process's resident memory stays at its peak instead of shrinking between steps).

    from fastlm._malloc import tune_malloc
    tune_malloc()          # the trainer and the bench workers call it at start

Opt out with FASTLM_MALLOC_TUNE=0 (or set GLIBC_TUNABLES yourself: an explicit glibc.malloc tunable
wins, and we then leave malloc alone). Without glibc (macOS, musl, Windows) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1   # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20

_applied: bool | None = None


def _glibc():
    """The C library if it is glibc (has gnu_get_libc_version and mallopt), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallopt  # noqa: B018  (AttributeError when not glibc)
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> bool:
    """Apply the thresholds once per process; True when they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("FASTLM_MALLOC_TUNE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user tuned malloc explicitly
    libc = _glibc()
    if libc is None:
        return False
    _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
