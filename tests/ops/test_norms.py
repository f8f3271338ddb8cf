"""fastlm.ops.rms_norm / layer_norm (C++ CPU kernels) against the plain-torch reference and torch itself."""
import pytest
import torch
import torch.nn.functional as F

import fastlm
import fastlm.ops as ops
from fastlm import _native
from fastlm.ops import reference

from .accuracy import assert_as_accurate, oracle_and_plain
from .norm_cases import DTYPES, HIDDEN_SIZES


def test_native_extension_is_loaded():
    assert _native.AVAILABLE, _native.IMPORT_ERROR
    assert fastlm._native is _native
    # The CPU kernel is the C++ one, not the Python fallback.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastlm::rms_norm_fwd", "CPU")


def _inputs(shape, dtype, weight_dtype=torch.float32):
    x = torch.randn(shape, dtype=torch.float32).mul_(3).add_(0.5).to(dtype).requires_grad_()
    n = shape[-1]
    w = (1 + 0.5 * torch.randn(n)).to(weight_dtype).requires_grad_()
    b = (0.1 * torch.randn(n)).to(weight_dtype).requires_grad_()
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", HIDDEN_SIZES)
def test_rms_norm_forward_backward(dtype, n):
    x, w, _ = _inputs((3, 5, n), dtype)
    y = ops.rms_norm(x, w, 1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)

    (y64, (gx64, gw64)), (y_ref, (gx_ref, gw_ref)) = oracle_and_plain(
        lambda a, b: reference.rms_norm_fwd(a, b, 1e-6)[0], x, w, grad=g)
    assert_as_accurate("y", y, y64, y_ref)
    assert_as_accurate("grad x", gx, gx64, gx_ref)
    assert_as_accurate("grad weight", gw, gw64, gw_ref)
    if dtype == torch.float32:  # and as accurate as torch's own op
        assert_as_accurate("y vs torch", y, y64, F.rms_norm(x, (n,), w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", HIDDEN_SIZES)
def test_layer_norm_forward_backward(dtype, n):
    x, w, b = _inputs((4, 3, n), dtype)
    y = ops.layer_norm(x, w, b, 1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), g)

    (y64, grads64), (y_ref, grads_ref) = oracle_and_plain(
        lambda a, c, d: reference.layer_norm_fwd(a, c, d, 1e-5)[0], x, w, b, grad=g)
    assert_as_accurate("y", y, y64, y_ref)
    for name, got, want64, want in zip(("grad x", "grad weight", "grad bias"), grads, grads64, grads_ref):
        assert_as_accurate(name, got, want64, want)
    if dtype == torch.float32:
        assert_as_accurate("y vs torch", y, y64, F.layer_norm(x, (n,), w, b, 1e-5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights(dtype):
    """Weights in the activation dtype (a model cast to bf16/fp16): grads come back in that dtype."""
    x, w, b = _inputs((2, 6, 96), dtype, weight_dtype=dtype)
    y = ops.layer_norm(x, w, b)
    g = torch.ones_like(y)
    grads = torch.autograd.grad(y, (x, w, b), g)
    assert grads[1].dtype == dtype and grads[2].dtype == dtype
    (y64, grads64), (y_ref, grads_ref) = oracle_and_plain(
        lambda a, c, d: reference.layer_norm_fwd(a, c, d, 1e-5)[0], x, w, b, grad=g)
    assert_as_accurate("y", y, y64, y_ref)
    for name, got, want64, want in zip(("grad x", "grad weight", "grad bias"), grads, grads64, grads_ref):
        assert_as_accurate(name, got, want64, want)


def _assert_like_plain_torch(got, fn, *inputs):
    (want64, _), (want, _) = oracle_and_plain(fn, *inputs)
    assert_as_accurate("y", got, want64, want)


def test_strided_inputs():
    base = torch.randn(6, 10, 200)
    x = base[:, ::2, 3:131].requires_grad_(False)  # non-contiguous rows and columns
    assert not x.is_contiguous()
    w = torch.randn(128)
    b = torch.randn(128)
    _assert_like_plain_torch(ops.rms_norm(x, w), lambda a, c: reference.rms_norm_fwd(a, c, 1e-6)[0], x, w)
    _assert_like_plain_torch(ops.layer_norm(x, w, b), lambda a, c, d: F.layer_norm(a, (128,), c, d, 1e-5), x, w, b)
    xt = torch.randn(64, 32).t()  # transposed: last dim has stride 32
    _assert_like_plain_torch(ops.rms_norm(xt, None), lambda a: reference.rms_norm_fwd(a, torch.ones(64), 1e-6)[0], xt)


def test_optional_weight_and_bias():
    x = torch.randn(4, 33, requires_grad=True)
    _assert_like_plain_torch(ops.layer_norm(x), lambda a: F.layer_norm(a, (33,)), x)
    _assert_like_plain_torch(ops.rms_norm(x), lambda a: F.rms_norm(a, (33,), eps=1e-6), x)
    ops.rms_norm(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_fp64_uses_reference_exactly():
    x = torch.randn(3, 17, dtype=torch.float64, requires_grad=True)
    w = torch.randn(17, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.rms_norm(a, b, 1e-6), (x, w))


def test_gradcheck_through_native_kernels():
    """The C++ backward against finite differences of the C++ forward (fp32, loose)."""
    x = torch.randn(2, 3, 9, requires_grad=True)
    w = torch.randn(9, requires_grad=True)
    b = torch.randn(9, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, d: ops.layer_norm(a, c, d), (x, w, b), eps=1e-2, atol=1e-2, rtol=1e-2)
    assert torch.autograd.gradcheck(lambda a, c: ops.rms_norm(a, c), (x, w), eps=1e-2, atol=1e-2, rtol=1e-2)


def test_deterministic_weight_gradient():
    x = torch.randn(513, 257, requires_grad=True)
    w = torch.randn(257, requires_grad=True)
    first = torch.autograd.grad(ops.rms_norm(x, w).sum(), w)[0]
    second = torch.autograd.grad(ops.rms_norm(x, w).sum(), w)[0]
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.rms_norm(torch.randn(4, 8), torch.randn(7)), "weight must have shape"),
        (lambda: ops.layer_norm(torch.randn(4, 8), torch.randn(8), torch.randn(3)), "bias must have shape"),
        (lambda: ops.rms_norm(torch.randn(4, 0), None), "non-empty last dimension"),
        (lambda: ops.rms_norm(torch.ones(4, 8, dtype=torch.long), None), "floating point"),
        (lambda: ops.rms_norm(torch.tensor(1.0), None), "non-empty last dimension"),
    ],
)
def test_bad_input_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_double_backward_is_a_clear_error():
    x = torch.randn(2, 8, requires_grad=True)
    (gx,) = torch.autograd.grad(ops.rms_norm(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_native_kernel_rejects_bad_shapes_directly():
    with pytest.raises(RuntimeError, match="weight must have shape"):
        torch.ops.fastlm.rms_norm_fwd(torch.randn(2, 8), torch.randn(5), 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x = torch.randn(3, 5, 24, dtype=dtype, requires_grad=True)
    w = torch.randn(24, requires_grad=True)
    b = torch.randn(24, requires_grad=True)
    torch.library.opcheck(torch.ops.fastlm.rms_norm_fwd.default, (x, w, 1e-6))
    torch.library.opcheck(torch.ops.fastlm.layer_norm_fwd.default, (x, w, b, 1e-5))
    # The backward ops on inputs that need no grad (double backward is unsupported, and says so).
    y, rstd = (t.detach() for t in torch.ops.fastlm.rms_norm_fwd(x, w, 1e-6))
    torch.library.opcheck(torch.ops.fastlm.rms_norm_bwd.default, (torch.randn_like(y), x.detach(), w.detach(), rstd))
    y, mean, rstd = (t.detach() for t in torch.ops.fastlm.layer_norm_fwd(x, w, b, 1e-5))
    torch.library.opcheck(
        torch.ops.fastlm.layer_norm_bwd.default, (torch.randn_like(y), x.detach(), w.detach(), mean, rstd)
    )


def test_compiles_fullgraph():
    def block(x, w, b):
        return ops.rms_norm(ops.layer_norm(x, w, b) * 2, w)

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 40, requires_grad=True)
    w = torch.randn(40, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    out = compiled(x, w, b)
    torch.testing.assert_close(out, block(x, w, b))
    grads = torch.autograd.grad(out.sum(), (x, w, b))
    grads_eager = torch.autograd.grad(block(x, w, b).sum(), (x, w, b))
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want)


def _uses_fastlm_op(y: torch.Tensor) -> bool:
    return "fastlm" in type(y.grad_fn).__name__


def test_reference_backend_can_be_forced(monkeypatch):
    x = torch.randn(3, 16, requires_grad=True)
    assert _uses_fastlm_op(ops.rms_norm(x)) and _uses_fastlm_op(ops.layer_norm(x))
    monkeypatch.setenv("FASTLM_BACKEND", "reference")
    y = ops.rms_norm(x)
    assert not _uses_fastlm_op(y) and not _uses_fastlm_op(ops.layer_norm(x))
    torch.testing.assert_close(y, F.rms_norm(x, (16,), eps=1e-6))
    monkeypatch.setenv("FASTLM_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FASTLM_BACKEND"):
        ops.rms_norm(x)


@pytest.mark.parametrize("n", [127, 5120])
def test_layer_norm_statistics_are_accurate_for_hard_rows(n):
    """Rows with a large mean, and a row whose first value is an outlier: fp32 kernel vs fp64."""
    x = torch.randn(4, n) + torch.tensor([[1000.0], [-300.0], [0.0], [0.0]])
    x[2, 0] = 500.0  # an outlier at the start of the row
    x[3] *= 1e-3  # tiny variance, close to eps
    w, b = torch.randn(n), torch.randn(n)
    expected = F.layer_norm(x.double(), (n,), w.double(), b.double(), 1e-5)
    assert_as_accurate("y", ops.layer_norm(x, w, b), expected, F.layer_norm(x, (n,), w, b, 1e-5))


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
                                    (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("n", [1, 127, 384])
def test_rms_norm_out_dtype(dtypes, n):
    """y in another dtype than x (a pre-norm block under autocast): one rounding to out_dtype; the
    gradient arrives in y's dtype and grad x leaves in x's; against float64 and the plain-torch reference."""
    x_dtype, out_dtype = dtypes
    x, w, _ = _inputs((3, 5, n), x_dtype)
    y = ops.rms_norm(x, w, 1e-6, out_dtype=out_dtype)
    assert y.dtype == out_dtype and y.shape == x.shape
    g = torch.randn(y.shape).to(out_dtype)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    assert gx.dtype == x_dtype and gw.dtype == w.dtype

    def ref(a, b):  # out_dtype relative to the oracle's float64: the plain run rounds where the kernel does
        return reference.rms_norm_fwd(a, b, 1e-6, out_dtype if a.dtype != torch.float64 else None)[0]

    (y64, (gx64, gw64)), (y_ref, (gx_ref, gw_ref)) = oracle_and_plain(ref, x, w, grad=g)
    assert_as_accurate("y", y, y64, y_ref)
    assert_as_accurate("grad x", gx, gx64, gx_ref)
    assert_as_accurate("grad weight", gw, gw64, gw_ref)
    # The same y, bit for bit, as computing in x's dtype's kernel path and rounding once at the end.
    if x_dtype == torch.float32:
        torch.testing.assert_close(y, reference.rms_norm_fwd(x.detach(), w.detach(), 1e-6)[0].to(out_dtype),
                                   atol=0, rtol=2 ** -7 if out_dtype == torch.bfloat16 else 2 ** -10)


def test_rms_norm_out_dtype_opcheck_and_errors():
    x = torch.randn(3, 5, 24, requires_grad=True)
    w = torch.randn(24, requires_grad=True)
    torch.library.opcheck(torch.ops.fastlm.rms_norm_fwd.default, (x, w, 1e-6, torch.bfloat16))
    y, rstd = (t.detach() for t in torch.ops.fastlm.rms_norm_fwd(x, w, 1e-6, torch.bfloat16))
    torch.library.opcheck(torch.ops.fastlm.rms_norm_bwd.default, (torch.randn_like(y), x.detach(), w.detach(), rstd))
    with pytest.raises(TypeError, match="out_dtype must be a floating dtype"):
        ops.rms_norm(x, w, out_dtype=torch.int32)
    # fp64 out_dtype: the reference, as accurate as float64
    y64 = ops.rms_norm(x.double(), w.double(), out_dtype=torch.float64)
    assert y64.dtype == torch.float64


def test_rms_norm_module_autocast_output():
    """autocast_output=True gives the autocast dtype under autocast only; otherwise x's dtype, unchanged."""
    from fastlm.nn import RMSNorm

    norm, plain = RMSNorm(24, autocast_output=True), RMSNorm(24)
    x = torch.randn(4, 24)
    assert torch.equal(norm(x), plain(x)) and norm(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.bfloat16 and plain(x).dtype == torch.float32
        torch.testing.assert_close(norm(x), plain(x).to(torch.bfloat16), atol=0, rtol=2 ** -7)
