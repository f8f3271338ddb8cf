"""Triton SwiGLU/GeGLU kernels against the plain-torch reference (TRITON_INTERPRET=1)."""
import pytest
import torch

from fastlm.ops import reference_gated as reference

from ..ops.accuracy import assert_like_reference

pytestmark = pytest.mark.triton
gated = pytest.importorskip("fastlm.kernels.gated_act")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("n", [7, 64])
def test_gated_act(dtype, act, n):
    h = (2 * torch.randn(3, 2, 2 * n)).to(dtype)
    gate, up = h.chunk(2, dim=-1)  # strided halves of one projection
    grad = torch.randn(3, 2, n).to(dtype)
    assert_like_reference("out", gated.gated_act_fwd(gate, up, act), reference.gated_act_fwd, gate, up, act)
    assert_like_reference(("grad gate", "grad up"), gated.gated_act_bwd(grad, gate, up, act), reference.gated_act_bwd,
                          grad, gate, up, act)


@pytest.mark.parametrize("act", [0, 2])
def test_packed_ops_cuda_launchers(act):
    """The CUDA kernels of gated_act_fwd_packed / gated_act_bwd_packed: the two-tensor kernels on h's halves."""
    import importlib

    swiglu = importlib.import_module("fastlm.ops.swiglu")  # the module (fastlm.ops.swiglu is also the function)
    h = 2 * torch.randn(3, 2, 2 * 9)  # fp32: what is tested is the composition, not bf16 rounding
    grad = torch.randn(3, 2, 9)
    assert_like_reference("out", swiglu._triton_packed("fwd")()(h, act), reference.gated_act_fwd_packed, h, act)
    assert_like_reference("grad h", swiglu._triton_packed("bwd")()(grad, h, act), reference.gated_act_bwd_packed,
                          grad, h, act)
