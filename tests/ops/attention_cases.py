"""Shapes, masks and the checks shared by the C++ and Triton attention tests (criterion: accuracy.py)."""
import torch

from fastlm.ops import reference_attention as reference

from .accuracy import assert_as_accurate, max_err  # noqa: F401  (max_err: for the tests)

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


def make_inputs(shape, dtype, device="cpu", requires_grad=True):
    b, sq, sk, h, hkv, d = shape
    q = torch.randn(b, sq, h, d, device=device).to(dtype)
    k = torch.randn(b, sk, hkv, d, device=device).to(dtype)
    v = torch.randn(b, sk, hkv, d, device=device).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def references(q, k, v, grad, **kw):
    """(out, lse, grads) of the fp64 reference and of the same math at the input dtype."""
    results = []
    for dtype in (torch.float64, q.dtype):
        qc, kc, vc = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        out, lse = reference.attention(qc, kc, vc, compute_dtype=dtype, **kw)
        grads = torch.autograd.grad(out, (qc, kc, vc), grad.to(dtype)) if out.numel() else (qc, kc, vc)
        results.append((out.detach(), lse.detach(), grads))
    return results


def check_attention(fn, q, k, v, floor=None, **kw):
    """Runs fn (the fast attention, returning (out, lse)) and checks out, lse and the q/k/v gradients.

    floor: assert_as_accurate's (None: the dtype's default)."""
    out, lse = fn(q, k, v, **kw)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    (out64, lse64, grads64), (out_lp, _, grads_lp) = references(q, k, v, grad, **kw)
    dtype = q.dtype
    assert_as_accurate("out", out, out64, out_lp, dtype, floor)
    # lse: -inf exactly where a query sees no key; elsewhere fp32 accuracy (computed in fp32 always).
    seen = torch.isfinite(lse64)
    assert torch.equal(torch.isfinite(lse), seen)
    assert (lse[~seen] == float("-inf")).all()
    if seen.any():
        torch.testing.assert_close(lse[seen].double(), lse64[seen], atol=1e-4, rtol=1e-5)
    for name, g, g64, g_lp in zip(("dq", "dk", "dv"), grads, grads64, grads_lp):
        assert g.dtype == dtype
        assert_as_accurate(name, g, g64, g_lp, dtype, floor)
