"""fastlm._malloc.tune_malloc: freed large buffers stay in the heap (no page faults when reallocated)."""
import os
import subprocess
import sys

import pytest

from fastlm import _malloc

# A child process (the setting is process-wide): steps that free and reallocate 4 x 12 MiB, touching them;
# prints whether tuning applied and the minor page faults of the last four steps.
CHILD = """
import resource, sys, torch
from fastlm._malloc import tune_malloc
applied = tune_malloc()
def step():
    bufs = [torch.empty(3 << 20).fill_(1.0) for _ in range(4)]
    del bufs
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _run(**env) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", **env)).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(_malloc._glibc() is None, reason="not glibc")
def test_tuned_process_reuses_large_buffers():
    applied, faults = _run(FASTLM_MALLOC_TUNE="1", GLIBC_TUNABLES="")
    off, faults_off = _run(FASTLM_MALLOC_TUNE="0", GLIBC_TUNABLES="")
    assert applied and not off
    if faults_off < 3072:  # one 12 MiB buffer in 4 KiB pages
        pytest.skip(f"this glibc keeps the buffers untuned too ({faults_off} faults)")
    assert faults < 3072, (faults, faults_off)


def test_opt_out_and_explicit_tunables_leave_malloc_alone():
    assert _run(FASTLM_MALLOC_TUNE="0", GLIBC_TUNABLES="")[0] is False
    assert _run(FASTLM_MALLOC_TUNE="1", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1")[0] is False


def test_without_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(_malloc, "_applied", None)
    monkeypatch.setattr(_malloc, "_glibc", lambda: None)
    monkeypatch.delenv("FASTLM_MALLOC_TUNE", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert _malloc.tune_malloc() is False
