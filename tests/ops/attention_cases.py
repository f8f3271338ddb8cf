"""Shapes, masks and the FlashAttention-style pass criterion shared by the C++ and Triton attention tests."""
import torch

from fastlm.ops import reference_attention as reference

# (batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim)
SHAPES = [
    (1, 1, 1, 1, 1, 8),
    (2, 17, 17, 4, 4, 40),
    (1, 64, 64, 2, 1, 64),
    (2, 65, 130, 4, 2, 80),
    (1, 130, 65, 6, 2, 96),  # seqlen_q > seqlen_k: under a causal mask the first queries see nothing
    (1, 129, 129, 8, 1, 112),  # MQA
    (2, 33, 97, 2, 2, 128),
    (1, 70, 70, 2, 2, 256),
    (1, 3, 300, 4, 2, 64),  # decoding-like: a few queries after a long KV cache
]
# (causal, window)
MASKS = [(False, None), (True, None), (False, (16, 5)), (True, (24, -1))]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Absolute slack on top of 2x the plain-torch error, relative to the reference's largest magnitude:
# half an ulp of the output dtype for bf16/fp16 (a kernel that rounds P to bf16 for the P^T dO product,
# as FlashAttention does, can be unluckier than the plain math on tiny shapes), fp32 accumulation
# order for fp32.
EPS = {torch.float32: 2e-5, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def make_inputs(shape, dtype, device="cpu", requires_grad=True):
    b, sq, sk, h, hkv, d = shape
    q = torch.randn(b, sq, h, d, device=device).to(dtype)
    k = torch.randn(b, sk, hkv, d, device=device).to(dtype)
    v = torch.randn(b, sk, hkv, d, device=device).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_flash_close(name, got, ref64, ref_lowp, dtype):
    """FlashAttention's criterion: |fast - fp64| <= 2 |plain torch at the input dtype - fp64| + eps."""
    err, base = max_err(got, ref64), max_err(ref_lowp, ref64)
    eps = EPS[dtype] * max(1.0, ref64.abs().max().item() if ref64.numel() else 0.0)
    assert err <= 2 * base + eps, f"{name}: max error {err:.3g} > 2 * {base:.3g} + {eps:.3g}"


def references(q, k, v, grad, **kw):
    """(out, lse, grads) of the fp64 reference and of the same math at the input dtype."""
    results = []
    for dtype in (torch.float64, q.dtype):
        qc, kc, vc = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        out, lse = reference.attention(qc, kc, vc, compute_dtype=dtype, **kw)
        grads = torch.autograd.grad(out, (qc, kc, vc), grad.to(dtype)) if out.numel() else (qc, kc, vc)
        results.append((out.detach(), lse.detach(), grads))
    return results


def check_attention(fn, q, k, v, **kw):
    """Runs fn (the fast attention, returning (out, lse)) and checks out, lse and the q/k/v gradients."""
    out, lse = fn(q, k, v, **kw)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    (out64, lse64, grads64), (out_lp, _, grads_lp) = references(q, k, v, grad, **kw)
    dtype = q.dtype
    assert_flash_close("out", out, out64, out_lp, dtype)
    # lse: -inf exactly where a query sees no key; elsewhere fp32 accuracy (computed in fp32 always).
    seen = torch.isfinite(lse64)
    assert torch.equal(torch.isfinite(lse), seen)
    assert (lse[~seen] == float("-inf")).all()
    if seen.any():
        torch.testing.assert_close(lse[seen].double(), lse64[seen], atol=1e-4, rtol=1e-5)
    for name, g, g64, g_lp in zip(("dq", "dk", "dv"), grads, grads64, grads_lp):
        assert g.dtype == dtype
        assert_flash_close(name, g, g64, g_lp, dtype)
