"""fastlm.ops.add_rms_norm (residual add + RMSNorm in one op, C++ CPU kernel) against float64 and the
unfused ops; the pre-norm Block using it against the unfused block."""
import pytest
import torch

import fastlm.ops as ops
from fastlm.nn.block import Block

from .accuracy import assert_as_accurate, plain_torch

# (x dtype, branch dtype, out_dtype): the residual stream fp32 with a bf16 branch under autocast, all fp32,
# all bf16.
CASES = [(torch.float32, torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32, None),
         (torch.bfloat16, torch.bfloat16, None), (torch.float32, torch.float16, torch.float16)]


def _unfused(x, b, w, eps, out_dtype):
    s = x + b
    return s, ops.rms_norm(s, w, eps, out_dtype)


def _grads(fn, x, b, w, gs, gy):
    s, y = fn(x, b, w, 1e-5)
    return (s, y, *torch.autograd.grad((s.double() * gs).sum() + (y.double() * gy).sum(), (x, b, w)))


@pytest.mark.parametrize("dtypes", CASES, ids=lambda d: "-".join(str(t).replace("torch.", "") for t in d))
@pytest.mark.parametrize("n", [1, 13, 384])
def test_vs_float64_and_unfused(dtypes, n):
    xd, bd, od = dtypes
    x = (2 * torch.randn(3, 5, n)).to(xd).requires_grad_()
    b = torch.randn(3, 5, n).to(bd).requires_grad_()
    w = (1 + 0.1 * torch.randn(n)).requires_grad_()
    gs, gy = torch.randn(3, 5, n, dtype=torch.float64), torch.randn(3, 5, n, dtype=torch.float64)
    ours = _grads(lambda *a: ops.add_rms_norm(*a, od), x, b, w, gs, gy)
    assert ours[0].dtype == xd and ours[1].dtype == (od or xd) and ours[3].dtype == bd
    leaves64 = [t.detach().double().requires_grad_() for t in (x, b, w)]
    ref64 = _grads(lambda *a: _unfused(*a, None), *leaves64, gs, gy)
    with plain_torch():
        plain = _grads(lambda *a: _unfused(*a, od), x, b, w, gs, gy)
    for name, got, r64, lowp in zip(("sum", "y", "grad x", "grad branch", "grad weight"), ours, ref64, plain):
        assert_as_accurate(name, got, r64, lowp)
    if xd == torch.float32:  # fp32 residual stream: the same numbers as fastlm's rms_norm after torch's add
        unfused = _grads(lambda *a: _unfused(*a, od), x, b, w, gs, gy)  # (16-bit: one rounding less here)
        for got, want in zip(ours[:4], unfused[:4]):
            assert torch.equal(got, want)
        torch.testing.assert_close(ours[4], unfused[4], rtol=1e-5, atol=1e-5)


def test_fp64_gradcheck_opcheck_and_bad_inputs():
    x, b = (torch.randn(3, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b, w: ops.add_rms_norm(x, b, w, 1e-5), (x, b, w))
    x32, b16, w32 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8).bfloat16(), torch.randn(8)
    torch.library.opcheck(torch.ops.fastlm.add_rms_norm_fwd.default, (x32, b16, w32, 1e-5, torch.bfloat16))
    torch.library.opcheck(torch.ops.fastlm.add_rms_norm_bwd.default,
                          (torch.randn(4, 8), torch.randn(4, 8).bfloat16(), x32.detach(), w32, torch.rand(4) + 0.5,
                           torch.bfloat16))
    with pytest.raises(ValueError, match="x's shape"):
        ops.add_rms_norm(torch.randn(2, 4), torch.randn(2, 5), torch.ones(4))
    with pytest.raises(TypeError, match="wider"):
        ops.add_rms_norm(torch.randn(2, 4).bfloat16(), torch.randn(2, 4), torch.ones(4))


@pytest.mark.parametrize("autocast", [False, True])
def test_block_fused_equals_unfused(autocast):
    torch.manual_seed(0)
    block = Block(d_model=64, n_head=4, n_kv_head=4, head_dim=16, d_ff=128, norm="rmsnorm", activation="silu",
                  gated_mlp=True, bias=False)
    x = torch.randn(2, 16, 64, requires_grad=True)

    def run(fused: bool):
        if not fused:  # a forward hook makes the block take the unfused path (add, then norm2's forward)
            handle = block.norm2.register_forward_hook(lambda m, i, o: None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = block(x)
        if not fused:
            handle.remove()
        grads = torch.autograd.grad(y.sum(), [x, *block.parameters()])
        return y, grads

    y1, g1 = run(True)
    y2, g2 = run(False)
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
