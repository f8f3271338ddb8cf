"""fastlm._malloc.tune_malloc: freed large buffers stay in the heap (no page faults when reallocated)."""
import os
import subprocess
import sys

import pytest

from fastlm import _malloc

# A child process (the setting is process-wide): steps that malloc 4 x 12 MiB (the size of the step's
# large buffers), touch and free them; prints whether tuning applied and the page faults of steps 2-4.
# Untuned, glibc trims the freed heap top (or unmaps the first blocks), so every step faults them in again.
CHILD = """
import ctypes, resource
from fastlm._malloc import tune_malloc

applied = tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def step():
    blocks = [libc.malloc(12 << 20) for _ in range(4)]
    for b in blocks:
        libc.memset(b, 1, 12 << 20)
    for b in blocks:
        libc.free(b)
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""
ONE_BLOCK = 3072  # 12 MiB in 4 KiB pages


def _run(**env) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", **env)).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(_malloc._glibc() is None, reason="not glibc")
def test_tuned_process_reuses_freed_large_blocks():
    applied, faults = _run(FASTLM_MALLOC_TUNE="1", GLIBC_TUNABLES="")
    off, faults_off = _run(FASTLM_MALLOC_TUNE="0", GLIBC_TUNABLES="")
    assert applied and not off
    assert faults < ONE_BLOCK, (faults, faults_off)
    assert faults_off >= 3 * ONE_BLOCK, (faults, faults_off)  # untuned: the steps fault the blocks in again


def test_opt_out_and_explicit_tunables_leave_malloc_alone():
    assert _run(FASTLM_MALLOC_TUNE="0", GLIBC_TUNABLES="")[0] is False
    assert _run(FASTLM_MALLOC_TUNE="1", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1")[0] is False


def test_without_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(_malloc, "_applied", None)
    monkeypatch.setattr(_malloc, "_glibc", lambda: None)
    monkeypatch.delenv("FASTLM_MALLOC_TUNE", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert _malloc.tune_malloc() is False
