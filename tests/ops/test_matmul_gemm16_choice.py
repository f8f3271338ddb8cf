"""fastlm.ops.matmul's 16-bit CPU GEMM choice: bf16 is native by CPU feature (AMX-BF16 / AVX512-BF16),
a timing decides elsewhere, FASTLM_CPU_GEMM16 forces. The features are faked with FASTLM_CPU_FEATURES;
the automatic choice is made once per process, so each case runs in a fresh interpreter.
(Both paths' results are tested against float64 in test_matmul.py, forced on any machine.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fastlm.ops._library import has_native_op
from fastlm.ops.matmul import cpu_gemm16_choice

pytestmark = pytest.mark.skipif(not has_native_op("matmul_fwd"), reason="needs the native extension")

SCRIPT = """
import json, torch
from fastlm.ops.matmul import cpu_gemm16_choice, cpu_gemm16_is_native
print(json.dumps({str(d): [cpu_gemm16_choice(d), cpu_gemm16_is_native(d)] for d in (torch.bfloat16, torch.float16)}))
"""


def _choices(**env: str | None) -> dict:
    full = {k: v for k, v in os.environ.items()
            if k not in ("FASTLM_CPU_FEATURES", "FASTLM_CPU_GEMM16", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    full.update({k: v for k, v in env.items() if v is not None})
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=full, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for choice, native in out.values():  # the choice's name and the path matmul takes agree
        assert choice.startswith("native" if native else "fp32"), out
    return out


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags")


@pytest.mark.parametrize("features", ["avx512_bf16", "amx_bf16", "avx2,amx_bf16,avx512_bf16"])
def test_bf16_is_native_by_feature_and_fp16_is_timed(features):
    out = _choices(FASTLM_CPU_FEATURES=features)
    assert out["torch.bfloat16"][0] == "native (cpu feature)"
    assert out["torch.float16"][0].endswith("(timed)")


def test_without_the_features_a_timing_decides():
    out = _choices(FASTLM_CPU_FEATURES="avx2,avx512_vnni")
    assert out["torch.bfloat16"][0].endswith("(timed)") and out["torch.float16"][0].endswith("(timed)")


def test_this_cpu_follows_its_flags_and_a_onednn_cap_leaves_it_to_the_timing():
    flags = _cpu_flags()
    out = _choices()
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    assert (out["torch.bfloat16"][0] == "native (cpu feature)") == has_bf16, (flags & {"avx512_bf16", "amx_bf16"})
    capped = _choices(ONEDNN_MAX_CPU_ISA="AVX2")
    assert capped["torch.bfloat16"][0].endswith("(timed)")


def test_forcing_wins_over_features_at_every_call(monkeypatch):
    for mode in ("fp32", "native", "fp32"):
        monkeypatch.setenv("FASTLM_CPU_GEMM16", mode)
        assert cpu_gemm16_choice(torch.bfloat16) == f"{mode} (forced)"
    out = _choices(FASTLM_CPU_FEATURES="avx512_bf16", FASTLM_CPU_GEMM16="fp32")
    assert out["torch.bfloat16"] == ["fp32 (forced)", False]
    monkeypatch.setenv("FASTLM_CPU_GEMM16", "fastest")
    with pytest.raises(RuntimeError, match="FASTLM_CPU_GEMM16=fastest"):
        cpu_gemm16_choice(torch.bfloat16)
