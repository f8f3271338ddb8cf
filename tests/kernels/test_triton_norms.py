"""Triton RMSNorm / LayerNorm kernels against the plain-torch reference, run by the Triton
interpreter on CPU (`TRITON_INTERPRET=1`, own pytest process; see Makefile)."""
import pytest
import torch

from fastlm.ops import reference

from ..ops.accuracy import assert_as_accurate, assert_like_reference, to64
from ..ops.norm_cases import DTYPES, HIDDEN_SIZES

pytestmark = pytest.mark.triton
norms = pytest.importorskip("fastlm.kernels.norms")


def _inputs(rows_shape, n, dtype):
    x = (torch.randn(*rows_shape, n) * 2 + 0.3).to(dtype)
    return x, 1 + 0.5 * torch.randn(n), 0.1 * torch.randn(n), torch.randn(*rows_shape, n).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", HIDDEN_SIZES)
def test_rms_norm(dtype, n):
    x, w, _, g = _inputs((3, 3), n, dtype)
    y, rstd = norms.rms_norm_fwd(x, w, 1e-6)
    assert_like_reference(("y", "rstd"), (y, rstd), reference.rms_norm_fwd, x, w, 1e-6)
    # the backward from the saved statistics (the oracle's from its own float64 forward)
    rstd64 = reference.rms_norm_fwd(to64(x), to64(w), 1e-6)[1]
    for name, got, want64, want in zip(("grad x", "grad weight"), norms.rms_norm_bwd(g, x, w, rstd),
                                       reference.rms_norm_bwd(to64(g), to64(x), to64(w), rstd64),
                                       reference.rms_norm_bwd(g, x, w, rstd)):
        assert_as_accurate(name, got, want64, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", HIDDEN_SIZES)
def test_layer_norm(dtype, n):
    x, w, b, g = _inputs((2, 5), n, dtype)
    y, mean, rstd = norms.layer_norm_fwd(x, w, b, 1e-5)
    assert_like_reference(("y", "mean", "rstd"), (y, mean, rstd), reference.layer_norm_fwd, x, w, b, 1e-5)
    _, mean64, rstd64 = reference.layer_norm_fwd(to64(x), to64(w), to64(b), 1e-5)
    grads = norms.layer_norm_bwd(g, x, w, mean, rstd)
    for name, got, want64, want in zip(("grad x", "grad weight", "grad bias"), grads,
                                       reference.layer_norm_bwd(to64(g), to64(x), to64(w), mean64, rstd64),
                                       reference.layer_norm_bwd(g, x, w, mean, rstd)):
        assert_as_accurate(name, got, want64, want)


def test_strided_rows():
    base = torch.randn(7, 300)
    x = base[:, 10:138]  # row stride 300, unit column stride: used without a copy
    w = torch.randn(128)
    y, _ = norms.rms_norm_fwd(x, w, 1e-6)
    torch.testing.assert_close(y, reference.rms_norm_fwd(x, w, 1e-6)[0])
    xt = torch.randn(40, 24).t()  # column stride 24: copied to unit stride first
    y, _, _ = norms.layer_norm_fwd(xt, torch.ones(40), torch.zeros(40), 1e-5)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(xt, (40,)), atol=1e-5, rtol=1e-5)


def test_more_rows_than_programs():
    """The backward splits rows over a fixed number of programs: a ragged last group still counts."""
    x, w, b, g = _inputs((37,), 65, torch.float32)
    y, mean, rstd = norms.layer_norm_fwd(x, w, b, 1e-5)
    _, dw, db = norms.layer_norm_bwd(g, x, w, mean, rstd)
    torch.testing.assert_close(db, g.sum(0), atol=1e-4, rtol=1e-5)


def test_too_wide_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds"):
        norms.rms_norm_fwd(torch.randn(1, norms.MAX_HIDDEN + 1), torch.ones(norms.MAX_HIDDEN + 1), 1e-6)


@pytest.mark.parametrize("n", [8, 769])
def test_rms_norm_out_dtype(n):
    """fp32 x, y in bf16 (a pre-norm block under autocast); the backward takes the bf16 gradient."""
    x, w, _, g = _inputs((3, 3), n, torch.float32)
    y, rstd = norms.rms_norm_fwd(x, w, 1e-6, torch.bfloat16)
    assert y.dtype == torch.bfloat16
    y_ref, rstd_ref = reference.rms_norm_fwd(x, w, 1e-6, torch.bfloat16)
    y64 = reference.rms_norm_fwd(to64(x), to64(w), 1e-6)[0]
    assert_as_accurate("y", y, y64, y_ref)
    g16 = g.to(torch.bfloat16)
    grads = norms.rms_norm_bwd(g16, x, w, rstd)
    assert grads[0].dtype == torch.float32
    rstd64 = reference.rms_norm_fwd(to64(x), to64(w), 1e-6)[1]
    for name, got, want64, want in zip(("grad x", "grad weight"), grads,
                                       reference.rms_norm_bwd(to64(g16), to64(x), to64(w), rstd64),
                                       reference.rms_norm_bwd(g16, x, w, rstd_ref)):
        assert_as_accurate(name, got, want64, want)


@pytest.mark.parametrize("branch_dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_cuda_launchers(branch_dtype):
    """The CUDA kernels of add_rms_norm_fwd / _bwd: the Triton RMSNorm around a torch add."""
    import importlib

    ops_norms = importlib.import_module("fastlm.ops.norms")
    x, w = 2 * torch.randn(4, 3, 40), 1 + 0.5 * torch.randn(40)
    b = torch.randn(4, 3, 40).to(branch_dtype)
    fwd, bwd = ops_norms._triton_add_rms("fwd")(), ops_norms._triton_add_rms("bwd")()
    x_sum, y, rstd = fwd(x, b, w, 1e-5, torch.bfloat16)
    ref_sum, ref_y, ref_rstd = reference.add_rms_norm_fwd(x, b, w, 1e-5, torch.bfloat16)
    assert torch.equal(x_sum, ref_sum) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref_y.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(rstd, ref_rstd, rtol=1e-5, atol=1e-5)
    grad_sum, grad_y = torch.randn(4, 3, 40), torch.randn(4, 3, 40).bfloat16()
    got = bwd(grad_sum, grad_y, x_sum, w, rstd, branch_dtype)
    want = reference.add_rms_norm_bwd(grad_sum, grad_y, ref_sum, w, ref_rstd, branch_dtype)
    assert got[1].dtype == branch_dtype
    for g, r in zip(got, want):
        torch.testing.assert_close(g.float(), r.float(), rtol=2e-2, atol=2e-2)
