"""The CUDA (Triton) paths of every op, compiled for real: skipped without a GPU.

CI machines have no GPU; these run on a GPU machine (see benchmarks/gpu_check.sh). Same
references and criteria as the CPU tests.
"""
import os

import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.ops import reference

from ..ops.attention_cases import MASKS, SHAPES, check_attention
from ..ops.norm_cases import DTYPES, GRAD_W_TOL, HIDDEN_SIZES, close

# FASTLM_TEST_DEVICE=cpu runs the same checks on the CPU kernels (a self-check of this file).
DEVICE = os.environ.get("FASTLM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", HIDDEN_SIZES)
def test_norms_on_cuda(dtype, n):
    x = (torch.randn(4, 33, n, device=DEVICE) * 2).to(dtype).requires_grad_()
    w = (1 + 0.5 * torch.randn(n, device=DEVICE)).requires_grad_()
    b = (0.1 * torch.randn(n, device=DEVICE)).requires_grad_()
    g = torch.randn_like(x)
    for fast, ref, params in (
        (lambda: ops.rms_norm(x, w, 1e-6), lambda: reference.rms_norm_fwd(x, w, 1e-6)[0], (x, w)),
        (lambda: ops.layer_norm(x, w, b, 1e-5), lambda: reference.layer_norm_fwd(x, w, b, 1e-5)[0], (x, w, b)),
    ):
        y, y_ref = fast(), ref()
        assert "fastlm" in type(y.grad_fn).__name__  # the registered op ran, not the reference
        close(y, y_ref, dtype)
        grads, grads_ref = torch.autograd.grad(y, params, g), torch.autograd.grad(y_ref, params, g)
        close(grads[0], grads_ref[0], dtype)
        for got, want in zip(grads[1:], grads_ref[1:]):
            torch.testing.assert_close(got, want, **GRAD_W_TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal, window", MASKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_attention_on_cuda(shape, causal, window, dtype):
    b, sq, sk, h, hkv, d = shape
    q = torch.randn(b, sq, h, d, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(b, sk, hkv, d, device=DEVICE).to(dtype).requires_grad_()
    v = torch.randn(b, sk, hkv, d, device=DEVICE).to(dtype).requires_grad_()
    check_attention(lambda *a, **kw: ops.attention(*a, return_lse=True, **kw), q, k, v, causal=causal, window=window)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_sdpa_on_cuda(causal):
    q, k, v = (torch.randn(2, 256, 8, 128, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    got = ops.attention(q, k, v, causal=causal)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=causal).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_scale_on_cuda(dtype):
    x = torch.randn(10_007, device=DEVICE)
    out = ops.cast_scale(x, 0.25, dtype=dtype)
    torch.testing.assert_close(out, (x * 0.25).to(dtype), atol=0, rtol=0)
