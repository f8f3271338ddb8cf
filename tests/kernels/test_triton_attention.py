"""Triton FlashAttention kernels against the float64 reference (FlashAttention's criterion) and torch
SDPA, run by the Triton interpreter on CPU (`TRITON_INTERPRET=1`, own pytest process; tiny shapes)."""
import pytest
import torch
import torch.nn.functional as F

from ..ops.accuracy import assert_as_accurate
from ..ops.attention_cases import check_attention, make_inputs

pytestmark = pytest.mark.triton
triton_attention = pytest.importorskip("fastlm.kernels.attention")


class _Fn(torch.autograd.Function):
    """The Triton launchers wrapped as autograd, the way fastlm.ops wires them for CUDA tensors."""

    @staticmethod
    def forward(ctx, q, k, v, cu, scale, left, right):
        out, lse = triton_attention.attention_fwd(q, k, v, cu, 0, scale, left, right)
        ctx.save_for_backward(q, k, v, out, lse, cu)
        ctx.args = (scale, left, right)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, cu = ctx.saved_tensors
        scale, left, right = ctx.args
        dq, dk, dv = triton_attention.attention_bwd(grad_out, q, k, v, out, lse, grad_lse, cu, 0, scale, left,
                                                    right)
        return dq, dk, dv, None, None, None, None


def triton_fn(q, k, v, *, causal=False, window=None, cu_seqlens=None, softmax_scale=None):
    left, right = (-1, -1) if window is None else window
    if causal:
        right = 0
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return _Fn.apply(q, k, v, cu_seqlens, scale, left, right)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal, window", [(False, None), (True, None), (False, (5, 3)), (True, (7, -1))], ids=str)
@pytest.mark.parametrize("shape", [
    (1, 1, 1, 1, 1, 8),
    (2, 19, 19, 4, 2, 40),  # not a multiple of the block; head_dim padded to 64
    (1, 9, 33, 2, 1, 96),  # seqlen_q < seqlen_k (KV cache), MQA
    (1, 33, 20, 3, 3, 16),  # seqlen_q > seqlen_k: queries that see nothing under a causal mask
], ids=str)
def test_triton_attention(shape, causal, window, dtype):
    q, k, v = make_inputs(shape, dtype)
    check_attention(triton_fn, q, k, v, causal=causal, window=window)


@pytest.mark.parametrize("causal", [False, True])
def test_triton_varlen(causal):
    cu = torch.tensor([0, 1, 18, 35, 38], dtype=torch.int32)
    q, k, v = (torch.randn(38, h, 24).requires_grad_() for h in (4, 2, 2))
    check_attention(triton_fn, q, k, v, causal=causal, cu_seqlens=cu)


def test_triton_matches_sdpa_and_grad_of_lse():
    q, k, v = make_inputs((1, 21, 21, 2, 2, 32), torch.float32)
    out, lse = triton_fn(q, k, v, causal=True)
    # torch SDPA in float64 (the oracle) and in fp32 (the error to match)
    sdpa = [F.scaled_dot_product_attention(*(t.detach().to(dtype).transpose(1, 2) for t in (q, k, v)), is_causal=True)
            for dtype in (torch.float64, torch.float32)]
    assert_as_accurate("out", out, *(s.transpose(1, 2) for s in sdpa))
    # d lse / d scores = P: the backward folds grad_lse into delta.
    from fastlm.ops import reference_attention as reference
    grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
    refs = []
    for dtype in (torch.float64, torch.float32):
        qc, kc, vc = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        out_r, lse_r = reference.attention(qc, kc, vc, causal=True, compute_dtype=dtype)
        refs.append(torch.autograd.grad(out_r.sum() + lse_r.sum(), (qc, kc, vc)))
    for name, got, want64, want32 in zip(("dq", "dk", "dv"), grads, *refs):
        assert_as_accurate(name, got, want64, want32)


def test_triton_head_dims():
    for d in (8, 80, 112, 256):
        q, k, v = make_inputs((1, 17, 17, 1, 1, d), torch.float32)
        check_attention(triton_fn, q, k, v, causal=True)
