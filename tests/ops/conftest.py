"""Shared fixtures of the ops tests."""
from __future__ import annotations

import pytest
import torch

INT8_PATHS = ["amx", "avx512_vnni", "avx_vnni", "avx2", "scalar"]


@pytest.fixture(params=INT8_PATHS)
def int8_path(request, monkeypatch):
    """Each int8 CPU vector path in turn, forced with FASTLM_INT8_KERNEL (skipped where this CPU lacks it)."""
    if request.param not in torch.ops.fastlm.int8_cpu_kernels():
        pytest.skip(f"this CPU does not run the {request.param} path")
    monkeypatch.setenv("FASTLM_INT8_KERNEL", request.param)
    return request.param
