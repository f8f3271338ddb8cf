"""W8A8 with a packed weight (fastlm.ops.pack_int8_weight): exact int32 sums and the same epilogue as int8_matmul.

The packed kernels (AVX-512 VNNI, AVX-VNNI) are compared with int64 torch math on odd sizes (tails of the 16-column
blocks and of the 4-byte k groups, -128 included); on every other forced path a PackedInt8Weight must
give int8_matmul's unpacked result.
"""
from __future__ import annotations

import pytest
import torch

import fastlm.ops as ops
from fastlm.ops import reference_int8 as reference

pytest.importorskip("fastlm._C")

SHAPES = [(1, 1, 1), (3, 17, 5), (7, 33, 130), (13, 100, 257), (1, 129, 4095), (64, 16, 64), (6, 64, 3)]


def _int8(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8)


PACKED_PATHS = ["avx512_vnni", "avx_vnni"]


def _vnni(monkeypatch, path="avx512_vnni"):
    if path not in torch.ops.fastlm.int8_cpu_kernels():
        pytest.skip(f"this CPU does not run the {path} path")
    monkeypatch.setenv("FASTLM_INT8_KERNEL", path)


@pytest.mark.parametrize("path", PACKED_PATHS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_packed_int32_sums_are_exact(monkeypatch, path, m, n, k):
    _vnni(monkeypatch, path)
    torch.manual_seed(m * 1000 + n + k)
    a, w = _int8(m, k), _int8(n, k)
    packed = ops.pack_int8_weight(w)
    assert packed.usable()
    out = ops.int8_matmul(a, packed, None, None, out_dtype=torch.int32)
    assert torch.equal(out.long(), a.long() @ w.long().t())


@pytest.mark.parametrize("path", PACKED_PATHS)
def test_packed_extremes_do_not_overflow(monkeypatch, path):
    _vnni(monkeypatch, path)
    k = 4099
    for av, wv in [(-128, -128), (-128, 127), (127, 127)]:
        a, w = torch.full((3, k), av, dtype=torch.int8), torch.full((17, k), wv, dtype=torch.int8)
        out = ops.int8_matmul(a, ops.pack_int8_weight(w), None, None, out_dtype=torch.int32)
        assert torch.equal(out.long(), torch.full((3, 17), av * wv * k))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_epilogue_matches_reference(monkeypatch, out_dtype, with_bias):
    _vnni(monkeypatch)
    torch.manual_seed(1)
    m, n, k = 9, 37, 131
    a, w = _int8(m, k), _int8(n, k)
    a_scale, b_scale = torch.rand(m, 1) + 0.01, torch.rand(n) + 0.01
    bias = torch.randn(n) if with_bias else None
    out = ops.int8_matmul(a, ops.pack_int8_weight(w), a_scale, b_scale, bias, out_dtype=out_dtype)
    expected = reference.int8_matmul(a, w.t(), a_scale.reshape(m), b_scale, bias, out_dtype)
    assert out.dtype == out_dtype
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-5 if out_dtype == torch.float32 else 1e-2,
                               atol=1e-3)


@pytest.mark.parametrize("path", PACKED_PATHS)
def test_packed_gives_the_unpacked_kernels_bits(monkeypatch, path):
    _vnni(monkeypatch, path)
    torch.manual_seed(4)
    a, w = _int8(7, 300), _int8(45, 300)
    a_scale, b_scale, bias = torch.rand(7) + 0.01, torch.rand(45) + 0.01, torch.randn(45)
    packed = ops.int8_matmul(a, ops.pack_int8_weight(w), a_scale, b_scale, bias)
    assert torch.equal(packed, ops.int8_matmul(a, w.t(), a_scale, b_scale, bias))


def test_every_path_gives_the_exact_sums(monkeypatch):
    torch.manual_seed(2)
    a, w = _int8(5, 70), _int8(21, 70)
    packed = ops.pack_int8_weight(w)
    for path in torch.ops.fastlm.int8_cpu_kernels():
        monkeypatch.setenv("FASTLM_INT8_KERNEL", path)
        assert packed.usable() == (path in PACKED_PATHS)
        out = ops.int8_matmul(a, packed, None, None, out_dtype=torch.int32)
        assert torch.equal(out.long(), a.long() @ w.long().t()), path


def test_packed_checks_its_inputs(monkeypatch):
    _vnni(monkeypatch)
    with pytest.raises(TypeError, match="w_int8 must be int8"):
        ops.pack_int8_weight(torch.zeros(3, 4))
    packed = ops.pack_int8_weight(_int8(8, 16))
    with pytest.raises(ValueError, match="K mismatch"):
        ops.int8_matmul(_int8(2, 15), packed, None, None, out_dtype=torch.int32)
    with pytest.raises(RuntimeError, match="not an int8_pack_weight result"):
        torch.ops.fastlm.int8_packed_matmul(_int8(2, 16), packed.packed, 17, None, None, None, torch.int32)
