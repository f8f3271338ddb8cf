"""fastlm.ops.rope (C++ CPU kernel) against the reference and HF's apply_rotary_pos_emb."""
import pytest
import torch

import fastlm.ops as ops
from fastlm.nn.rope import rope_cos_sin
from fastlm.ops import reference_rope as reference

from .accuracy import assert_as_accurate

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def rotate_half(x):
    """HF's formulation of the rotation (transformers' rotate_half)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _hf_rope(q, k, cos, sin):
    """transformers' apply_rotary_pos_emb in (B, H, T, D) with full-width cos/sin (B, T, D), in fp64."""
    cos, sin = torch.cat((cos, cos), -1).unsqueeze(1).double(), torch.cat((sin, sin), -1).unsqueeze(1).double()
    q, k = q.double(), k.double()
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def test_cpu_kernel_is_native():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastlm::rope_fwd", "CPU")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 7, 4, 2, 16), (1, 5, 3, 3, 10), (3, 1, 2, 1, 128)])  # B, T, Hq, Hkv, D
def test_rope_matches_hf_and_grads(dtype, shape):
    b, t, hq, hkv, d = shape
    q = torch.randn(b, t, hq, d).to(dtype).requires_grad_()
    k = torch.randn(b, t, hkv, d).to(dtype).requires_grad_()
    cos, sin = rope_cos_sin(torch.arange(t) + 3, d, 10000.0)
    qr, kr = ops.rope(q, k, cos, sin)
    assert qr.dtype == dtype and qr.shape == q.shape
    gq, gk = torch.randn_like(qr), torch.randn_like(kr)
    dq, dk = torch.autograd.grad((qr, kr), (q, k), (gq, gk))
    # The float64 oracle: HF's formula; plain torch at the input dtype: the reference rotation.
    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    q_hf, k_hf = _hf_rope(q64.transpose(1, 2), k64.transpose(1, 2), cos.expand(b, t, -1), sin.expand(b, t, -1))
    dq64, dk64 = torch.autograd.grad((q_hf, k_hf), (q64, k64),
                                     (gq.double().transpose(1, 2), gk.double().transpose(1, 2)))
    qp, kp = (t.detach().requires_grad_() for t in (q, k))
    q_ref, k_ref = reference.rope_fwd(qp, cos, sin, False), reference.rope_fwd(kp, cos, sin, False)
    dq_ref, dk_ref = torch.autograd.grad((q_ref, k_ref), (qp, kp), (gq, gk))
    assert_as_accurate("q", qr, q_hf.transpose(1, 2), q_ref)
    assert_as_accurate("k", kr, k_hf.transpose(1, 2), k_ref)
    assert_as_accurate("grad q", dq, dq64, dq_ref)
    assert_as_accurate("grad k", dk, dk64, dk_ref)


def test_per_batch_angles_and_hf_layout():
    b, t, h, d = 2, 6, 3, 8
    x = torch.randn(b, h, t, d)  # HF layout, rotated through its (B, T, H, D) view
    angles = torch.randn(b, t, d // 2)
    qr, kr = ops.rope(x.transpose(1, 2), x.transpose(1, 2), angles.cos(), angles.sin())
    assert qr.transpose(1, 2).is_contiguous()  # back in HF's layout without a copy
    want = reference.rope_fwd(x.transpose(1, 2), angles.cos(), angles.sin(), False)
    torch.testing.assert_close(qr, want)
    # and it is HF's rotation with per-batch angles
    q_hf, _ = _hf_rope(x, x, angles.cos(), angles.sin())
    assert_as_accurate("q", qr, q_hf.transpose(1, 2), want)


def test_strided_qkv_views():
    b, t, h, d = 2, 5, 4, 16
    qkv = torch.randn(b, t, 3 * h * d)
    q, k, _ = qkv.split(h * d, dim=-1)
    q, k = q.view(b, t, h, d), k.view(b, t, h, d)
    cos, sin = rope_cos_sin(torch.arange(t), d, 500.0)
    qr, kr = ops.rope(q, k, cos, sin)
    torch.testing.assert_close(qr, reference.rope_fwd(q, cos, sin, False))
    torch.testing.assert_close(kr, reference.rope_fwd(k, cos, sin, False))


def test_fp64_runs_the_reference():
    q = torch.randn(1, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    cos, sin = rope_cos_sin(torch.arange(3), 4, 100.0)
    qr, _ = ops.rope(q, q, cos, sin)
    assert qr.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: ops.rope(x, x, cos.double(), sin.double())[0], (q,))


def test_opcheck():
    x = torch.randn(2, 3, 2, 8, requires_grad=True)
    cos, sin = torch.randn(3, 4), torch.randn(3, 4)
    torch.library.opcheck(torch.ops.fastlm.rope_fwd.default, (x, cos, sin, False))
    torch.library.opcheck(torch.ops.fastlm.rope_fwd.default, (x.transpose(1, 2), torch.randn(2, 2, 4),
                                                              torch.randn(2, 2, 4), True))


def test_bad_inputs():
    q = torch.randn(1, 4, 2, 8)
    cos, sin = torch.randn(4, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match="head_dim must be even"):
        ops.rope(torch.randn(1, 4, 2, 7), torch.randn(1, 4, 2, 7), torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="cos/sin must be"):
        ops.rope(q, q, torch.randn(5, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="must be \\(batch, seq, heads, head_dim\\)"):
        ops.rope(q[0], q[0], cos, sin)
    with pytest.raises(ValueError, match="must match q"):
        ops.rope(q, torch.randn(1, 4, 2, 6), cos, sin)
    with pytest.raises(TypeError, match="floating point"):
        ops.rope(q.long(), q, cos, sin)
    with pytest.raises(RuntimeError, match="head_dim must be even"):  # the kernel checks too
        torch.ops.fastlm.rope_fwd(torch.randn(1, 4, 2, 7), torch.randn(4, 3), torch.randn(4, 3), False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["qkv_split", "hf_transposed", "contiguous"])
@pytest.mark.parametrize("per_batch", [False, True])
def test_every_layout_and_dtype_against_float64(dtype, layout, per_batch):
    """The per-token kernel (fp32, bf16: all heads of a token in one call, bf16 rounded in registers) and
    the per-head one (fp16) on q/k views of a fused qkv, HF's (B, H, T, D) transposed and contiguous
    tensors, forward and inverse, as accurate as the reference at the input dtype (float64 oracle)."""
    b, t, h, d = 3, 7, 5, 12
    if layout == "qkv_split":
        x = torch.randn(b, t, 3 * h * d).to(dtype)[..., h * d: 2 * h * d].view(b, t, h, d)
    elif layout == "hf_transposed":
        x = torch.randn(b, h, t, d).to(dtype).transpose(1, 2)
    else:
        x = torch.randn(b, t, h, d).to(dtype)
    angles = torch.randn(b, t, d // 2) * 3 if per_batch else torch.randn(t, d // 2) * 3
    cos, sin = angles.cos(), angles.sin()
    for inverse in (False, True):
        got = torch.ops.fastlm.rope_fwd(x, cos, sin, inverse)
        assert got.dtype == dtype and got.shape == x.shape
        want64 = reference.rope_fwd(x.double(), cos.double(), sin.double(), inverse)
        assert_as_accurate(f"rope inverse={inverse}", got, want64, reference.rope_fwd(x, cos, sin, inverse))
