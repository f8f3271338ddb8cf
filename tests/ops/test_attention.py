"""fastlm.ops.attention (C++ CPU FlashAttention kernels) against the float64 reference, torch SDPA,
and torch.library's checks. Criterion: FlashAttention's (error <= 2x that of the same math in plain
torch at the input dtype, plus a fraction of an ulp); see accuracy.py."""
import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.ops import reference_attention as reference

from .attention_cases import DTYPES, MASKS, SHAPES, check_attention, make_inputs, max_err


def fast(q, k, v, **kw):
    return ops.attention(q, k, v, return_lse=True, **kw)


def test_native_kernel_is_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastlm::attention_fwd", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastlm::attention_bwd", "CPU")
    q, k, v = make_inputs((1, 4, 4, 2, 2, 16), torch.float32)
    assert "fastlm" in type(ops.attention(q, k, v).grad_fn).__name__


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal, window", MASKS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_attention_matches_fp64_reference(shape, causal, window, dtype):
    q, k, v = make_inputs(shape, dtype)
    check_attention(fast, q, k, v, causal=causal, window=window)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal, window", MASKS, ids=str)
def test_varlen_matches_reference(causal, window, dtype):
    lengths = [1, 17, 64, 65, 3, 130]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    total = int(cu[-1])
    q = torch.randn(total, 4, 64).to(dtype).requires_grad_()
    k = torch.randn(total, 2, 64).to(dtype).requires_grad_()
    v = torch.randn(total, 2, 64).to(dtype).requires_grad_()
    check_attention(fast, q, k, v, causal=causal, window=window, cu_seqlens=cu)
    out, lse = fast(q, k, v, causal=causal, window=window, cu_seqlens=cu, max_seqlen=130)
    assert lse.shape == (4, total)


def test_varlen_equals_documents_one_by_one():
    """No token attends across a document boundary: packed == each document alone (same kernel)."""
    lengths = [5, 70, 1, 33]
    cu = torch.tensor([0, 5, 75, 76, 109])
    q, k, v = (torch.randn(109, h, 32) for h in (4, 2, 2))
    packed = ops.attention(q, k, v, causal=True, cu_seqlens=cu)
    for (s, e), n in zip(zip(cu[:-1].tolist(), cu[1:].tolist()), lengths):
        alone = ops.attention(q[None, s:e], k[None, s:e], v[None, s:e], causal=True)[0]
        torch.testing.assert_close(packed[s:e], alone, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("gqa", [1, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_torch_sdpa(causal, gqa):
    """An independent implementation: torch SDPA (layout (B, H, S, D), top-left causal when Sq == Sk)."""
    q, k, v = make_inputs((2, 100, 100, 8, 8 // gqa, 64), torch.float32)
    out = ops.attention(q, k, v, causal=causal)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    qs, ks, vs = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, enable_gqa=gqa > 1)
    grads_ref = torch.autograd.grad(ref, (qs, ks, vs), g.transpose(1, 2))
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=2e-5, rtol=1e-5)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want.transpose(1, 2), atol=5e-5, rtol=1e-5)


def test_bottom_right_causal_and_window_semantics():
    """Spelled out on a tiny case: query i of Sq sits at key position i + Sk - Sq."""
    sq, sk = 3, 6
    q, k = torch.randn(1, sq, 1, 8), torch.randn(1, sk, 1, 8)
    v = torch.eye(sk)[None, :, None, :].repeat(1, 1, 1, 2)[..., :8]  # out[i, j] = P[i, j] for j < 6
    for causal, window, allowed in [
        (True, None, [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
        (False, (1, 1), [[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]]),
        (True, (0, -1), [[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]),
    ]:
        p = ops.attention(q, k, v, causal=causal, window=window)[0, :, 0, :sk]
        assert torch.equal(p > 0, torch.tensor(allowed, dtype=torch.bool)), (causal, window)
        torch.testing.assert_close(p.sum(-1), torch.ones(sq))


def test_queries_that_see_nothing_give_zero():
    q, k, v = make_inputs((1, 6, 2, 2, 2, 16), torch.float32)
    out, lse = ops.attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    assert (lse[:, :, :4] == float("-inf")).all() and torch.isfinite(lse[:, :, 4:]).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.equal(q.grad[:, :4], torch.zeros_like(q.grad[:, :4]))


def test_softmax_scale_and_strided_inputs():
    base = torch.randn(2, 4, 50, 3 * 40)  # (B, H, S, D') -> strided (B, S, H, D) views, no copy needed
    q, k, v = (base[..., i * 40:(i + 1) * 40].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    out = ops.attention(q, k, v, softmax_scale=0.3, causal=True)
    ref, _ = reference.attention(q, k, v, softmax_scale=0.3, causal=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_gradient_of_lse():
    """lse is differentiable too (d lse / d scores = P): checked against autograd of the reference."""
    q, k, v = make_inputs((1, 40, 50, 2, 1, 32), torch.float32)
    out, lse = ops.attention(q, k, v, causal=True, return_lse=True)
    loss = (out * 0.5).sum() + lse.sin().sum()
    grads = torch.autograd.grad(loss, (q, k, v))
    out_r, lse_r = reference.attention(q, k, v, causal=True)
    grads_r = torch.autograd.grad((out_r * 0.5).sum() + lse_r.sin().sum(), (q, k, v))
    for got, want in zip(grads, grads_r):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_backward_is_deterministic():
    q, k, v = make_inputs((1, 300, 300, 4, 1, 64), torch.float32)
    g = torch.randn(1, 300, 4, 64)
    first = torch.autograd.grad(ops.attention(q, k, v, causal=True), (q, k, v), g)
    second = torch.autograd.grad(ops.attention(q, k, v, causal=True), (q, k, v), g)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_fp64_and_forced_reference(monkeypatch):
    q, k, v = make_inputs((1, 5, 7, 2, 1, 8), torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: ops.attention(a, b, c, causal=True), (q, k, v))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    monkeypatch.setenv("FASTLM_BACKEND", "reference")
    out = ops.attention(q32, k32, v32, causal=True)
    assert "fastlm" not in type(out.grad_fn).__name__
    monkeypatch.delenv("FASTLM_BACKEND")
    torch.testing.assert_close(out, ops.attention(q32, k32, v32, causal=True), atol=1e-6, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Input #.* requires gradient and is not a double")
def test_gradcheck_through_native_kernels():
    q, k, v = (t.double().float().requires_grad_() for t in make_inputs((1, 5, 9, 2, 1, 8), torch.float32))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.attention(a, b, c, causal=True, window=(3, -1)),
                                    (q, k, v), eps=1e-2, atol=1e-2, rtol=1e-2)


def _q(shape=(2, 8, 4, 16), dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.attention(_q((8, 4, 16)), _q((8, 4, 16)), _q((8, 4, 16))), ValueError, "4-D.*need cu_seqlens"),
    (lambda: ops.attention(_q((2, 8, 16)), _q(), _q()), ValueError, "q must be 4-D"),
    (lambda: ops.attention(_q(), _q((2, 8, 3, 16)), _q((2, 8, 3, 16))), ValueError, "multiple of k/v heads"),
    (lambda: ops.attention(_q(), _q((2, 8, 2, 16)), _q((2, 9, 2, 16))), ValueError, "k and v must have the same shape"),
    (lambda: ops.attention(_q((2, 8, 4, 4)), _q((2, 8, 4, 4)), _q((2, 8, 4, 4))), ValueError, "head_dim must be between"),
    (lambda: ops.attention(_q((2, 8, 4, 264)), _q((2, 8, 4, 264)), _q((2, 8, 4, 264))), ValueError, "head_dim"),
    (lambda: ops.attention(_q(), _q((2, 8, 4, 32)), _q((2, 8, 4, 32))), ValueError, "head_dim differ"),
    (lambda: ops.attention(_q(), _q((3, 8, 4, 16)), _q((3, 8, 4, 16))), ValueError, "batch sizes differ"),
    (lambda: ops.attention(_q(), _q(dtype=torch.bfloat16), _q()), TypeError, "same dtype"),
    (lambda: ops.attention(_q().long(), _q().long(), _q().long()), TypeError, "floating point"),
    (lambda: ops.attention(_q(), _q(), _q(), window=(2,)), ValueError, "window must be a pair"),
    (lambda: ops.attention(_q(), _q(), _q(), window=(-2, 0)), ValueError, "window sides"),
    (lambda: ops.attention(_q(), _q(), _q(), softmax_scale=float("nan")), ValueError, "softmax_scale"),
    (lambda: ops.attention(_q(), _q(), _q(), max_seqlen=8), ValueError, "only used with cu_seqlens"),
    (lambda: ops.attention(_q((9, 4, 16)), _q((9, 4, 16)), _q((9, 4, 16)), cu_seqlens=torch.tensor([0, 6, 4, 9])),
     ValueError, "cu_seqlens must be increasing"),
    (lambda: ops.attention(_q((9, 4, 16)), _q((9, 4, 16)), _q((9, 4, 16)), cu_seqlens=torch.tensor([0, 4, 8])),
     ValueError, "end at the number of tokens"),
    (lambda: ops.attention(_q((9, 4, 16)), _q((9, 4, 16)), _q((9, 4, 16)), cu_seqlens=torch.tensor([0., 9.])),
     TypeError, "int32 or int64"),
    (lambda: ops.attention(_q((9, 4, 16)), _q((9, 4, 16)), _q((9, 4, 16)), cu_seqlens=torch.tensor([[0, 9]])),
     ValueError, "1-D"),
    (lambda: ops.attention(_q((9, 4, 16)), _q((9, 4, 16)), _q((9, 4, 16)), cu_seqlens=torch.tensor([0, 4, 9]),
                           max_seqlen=4), ValueError, "max_seqlen = 4 is shorter"),
])
def test_bad_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(20000, 16), (16, 20000)], ids=str)
def test_fp32_long_sums_as_accurate_as_plain_torch(seqlens, causal):
    """Many queries over a few keys (each dK / dV row sums 20000 terms) and the reverse (out, the softmax
    sum and dQ sum 20000 terms): fp32 within 2x of plain-torch fp32 against float64, with no floor."""
    q, k, v = make_inputs((1, *seqlens, 2, 1, 64), torch.float32)
    check_attention(fast, q, k, v, causal=causal, floor=0.0)


def test_native_kernel_checks_inputs_directly():
    with pytest.raises(RuntimeError, match="head_dim must be between"):
        torch.ops.fastlm.attention_fwd(_q((1, 4, 2, 4)), _q((1, 4, 2, 4)), _q((1, 4, 2, 4)), None, 0, 1.0, -1, -1)
    with pytest.raises(RuntimeError, match="cu_seqlens must be increasing"):
        x = _q((9, 2, 16))
        torch.ops.fastlm.attention_fwd(x, x, x, torch.tensor([0, 6, 4, 9]), 0, 1.0, -1, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("varlen", [False, True])
def test_opcheck(dtype, varlen):
    if varlen:
        q, k, v = (torch.randn(20, h, 16, dtype=dtype, requires_grad=True) for h in (4, 2, 2))
        cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    else:
        q, k, v = make_inputs((2, 9, 13, 4, 2, 16), dtype)
        cu = None
    args = (q, k, v, cu, 0, 0.25, -1, 0)
    torch.library.opcheck(torch.ops.fastlm.attention_fwd.default, args)
    out, lse = (t.detach() for t in torch.ops.fastlm.attention_fwd(*args))
    torch.library.opcheck(torch.ops.fastlm.attention_bwd.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, None, cu, 0, 0.25,
                           -1, 0))


class TinyAttentionModel(torch.nn.Module):
    def __init__(self, d=32, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.qkv = torch.nn.Linear(d, (heads + 2 * kv_heads) * self.hd)
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x, cu_seqlens=None):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.heads * self.hd, self.kv_heads * self.hd, self.kv_heads * self.hd], -1)
        q, k, v = q.view(b, t, -1, self.hd), k.view(b, t, -1, self.hd), v.view(b, t, -1, self.hd)
        if cu_seqlens is None:
            y = ops.attention(q, k, v, causal=True, window=(5, -1))
        else:
            y = ops.attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), causal=True, cu_seqlens=cu_seqlens,
                              max_seqlen=t)
        return self.proj(y.reshape(b, t, -1))


@pytest.mark.parametrize("varlen", [False, True])
def test_compiles_fullgraph(varlen):
    torch._dynamo.reset()
    model = TinyAttentionModel()
    x = torch.randn(2, 11, 32)
    cu = torch.tensor([0, 4, 11, 22], dtype=torch.int32) if varlen else None
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x, cu)
    out_eager = model(x, cu)
    torch.testing.assert_close(out, out_eager)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    grads_eager = torch.autograd.grad(out_eager.square().sum(), list(model.parameters()))
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- the long sweep


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256])
@pytest.mark.parametrize("causal, window", MASKS + [(False, (0, 0)), (True, (100, -1))], ids=str)
@pytest.mark.parametrize("seqlens", [(1, 1), (63, 63), (64, 64), (65, 65), (127, 257), (257, 127), (513, 513)], ids=str)
def test_long_sweep(seqlens, causal, window, head_dim, dtype):
    sq, sk = seqlens
    q, k, v = make_inputs((2, sq, sk, 6, 2, head_dim), dtype)
    check_attention(fast, q, k, v, causal=causal, window=window)


@pytest.mark.slow
@pytest.mark.parametrize("heads, kv_heads", [(1, 1), (8, 8), (8, 4), (8, 2), (8, 1), (12, 3)])
def test_long_sweep_gqa_and_large(heads, kv_heads):
    q, k, v = make_inputs((1, 1100, 1100, heads, kv_heads, 64), torch.bfloat16)
    check_attention(fast, q, k, v, causal=True)
    assert max_err(ops.attention(q, k, v), reference.attention(q, k, v)[0]) < 2e-2
