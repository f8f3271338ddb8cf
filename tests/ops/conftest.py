"""Shared fixtures of the ops tests."""
from __future__ import annotations

import pytest
import torch

INT8_PATHS = ["amx", "avx512_vnni", "avx_vnni", "avx2", "scalar"]


def force_cpu_path(path: str, available, env_var: str, monkeypatch) -> str:
    """Force a kernel's CPU vector path with its environment variable; skip where this CPU lacks it."""
    if path not in available():
        pytest.skip(f"this CPU does not run the {path} path")
    monkeypatch.setenv(env_var, path)
    return path


@pytest.fixture(params=INT8_PATHS)
def int8_path(request, monkeypatch):
    """Each int8 CPU vector path in turn, forced with FASTLM_INT8_KERNEL."""
    return force_cpu_path(request.param, torch.ops.fastlm.int8_cpu_kernels, "FASTLM_INT8_KERNEL", monkeypatch)
