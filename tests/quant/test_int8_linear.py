"""Int8Linear against nn.Linear: within the quantization error bound, both schemes; state dict; errors."""
from __future__ import annotations

import pytest
import safetensors.torch
import torch
from torch import nn

from fastlm.nn.int8_linear import Int8Linear

SHAPES = [(1, 1, 1), (3, 17, 5), (2, 64, 48), (5, 129, 33)]  # (tokens, in_features, out_features)


def error_bound(x: torch.Tensor, w: torch.Tensor, scheme: str) -> torch.Tensor:
    """|y_int8 - y| <= sum_k |x_k| dw_n + |w_nk| dx_m + dx_m dw_n, with dx, dw half a quantization step."""
    x, w = x.double().reshape(-1, x.shape[-1]), w.double()
    dw = (w.abs().amax(dim=1) / 127 / 2)[None, :]
    bound = x.abs().sum(dim=1, keepdim=True) * dw
    if scheme == "w8a8":
        dx = x.abs().amax(dim=1, keepdim=True) / 127 / 2
        bound = bound + dx * w.abs().sum(dim=1)[None, :] + dx * dw * x.shape[1]
    return bound


@pytest.mark.parametrize("scheme", ["w8a8", "w8a16"])
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_within_quantization_bound(scheme, m, k, n, bias):
    linear = nn.Linear(k, n, bias=bias)
    x = torch.randn(m, k) * 3
    x[:, 0] *= 10  # an outlier channel makes per-token scales coarse
    layer = Int8Linear.from_linear(linear, scheme)
    y = layer(x)
    exact = (x.double() @ linear.weight.double().t() + (linear.bias.double() if bias else 0))
    err = (y.double() - exact).abs()
    assert y.dtype == torch.float32 and y.shape == (m, n)
    assert (err <= error_bound(x, linear.weight.detach(), scheme) * 1.001 + 1e-5).all()
    # The bound is tight enough to mean something: the error is a fraction of the output scale.
    assert err.max() <= 0.05 * exact.abs().max() + 1e-5


@pytest.mark.parametrize("scheme", ["w8a8", "w8a16"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_output_dtype_is_input_dtype(scheme, dtype):
    linear = nn.Linear(32, 8)
    layer = Int8Linear.from_linear(linear, scheme)
    x = torch.randn(2, 3, 32, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (2, 3, 8)
    ref = linear(x.float())
    assert torch.allclose(y.float(), ref, atol=0.05 * ref.abs().max().item())


def test_autocast_output_dtype():
    layer = Int8Linear.from_linear(nn.Linear(16, 4), "w8a8")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, 16)).dtype == torch.bfloat16


def test_w8a16_groups_are_more_accurate():
    linear = nn.Linear(256, 16)
    with torch.no_grad():
        linear.weight[:, :4] *= 30  # outlier columns spoil a per-channel scale
    x = torch.randn(8, 256)
    ref = linear(x)
    per_channel = Int8Linear.from_linear(linear, "w8a16")(x)
    grouped_layer = Int8Linear.from_linear(linear, "w8a16", group_size=32)
    assert grouped_layer.weight_scale.shape == (16, 8)
    grouped = grouped_layer(x)
    assert (grouped - ref).norm() < 0.5 * (per_channel - ref).norm()


def test_fastlm_linear_and_tied_weight_left_unchanged():
    linear_cls = getattr(__import__("fastlm.nn", fromlist=["Linear"]), "Linear", nn.Linear)
    linear = linear_cls(24, 12)
    before = linear.weight.detach().clone()
    layer = Int8Linear.from_linear(linear, "w8a8")
    assert torch.equal(linear.weight, before) and isinstance(linear.weight, nn.Parameter)
    assert layer.weight.dtype == torch.int8 and layer.weight_scale.dtype == torch.float32
    assert not list(layer.parameters())  # buffers only: nothing trains


@pytest.mark.parametrize("scheme,group_size", [("w8a8", None), ("w8a16", None), ("w8a16", 8)])
def test_state_dict_round_trip_with_safetensors(tmp_path, scheme, group_size):
    linear = nn.Linear(32, 10)
    layer = Int8Linear.from_linear(linear, scheme, group_size=group_size,
                                   smooth_scale=torch.rand(32) + 0.5)
    path = tmp_path / "layer.safetensors"
    safetensors.torch.save_model(layer, str(path))
    fresh = Int8Linear(32, 10, bias=True, scheme=scheme, group_size=group_size, smooth=True)
    safetensors.torch.load_model(fresh, str(path), strict=True)
    x = torch.randn(4, 32)
    assert torch.equal(fresh(x), layer(x))
    assert set(layer.state_dict()) == {"weight", "weight_scale", "bias", "smooth_scale"}


def test_smooth_scale_is_exact_reparametrization():
    linear = nn.Linear(16, 8)
    x = torch.randn(4, 16)
    s = torch.rand(16) + 0.5
    smoothed = Int8Linear.from_linear(linear, "w8a16", smooth_scale=s)
    deq = smoothed.dequantized_weight()
    assert torch.allclose(deq, linear.weight, atol=linear.weight.abs().max().item() * s.max().item() / 127)
    assert torch.allclose(smoothed(x), linear(x), atol=0.05)


def test_errors():
    linear = nn.Linear(16, 8)
    with pytest.raises(ValueError, match="unknown quantization scheme 'w4a4'"):
        Int8Linear.from_linear(linear, "w4a4")
    with pytest.raises(ValueError, match="group_size is only available with scheme 'w8a16'"):
        Int8Linear.from_linear(linear, "w8a8", group_size=8)
    with pytest.raises(ValueError, match="positive divisor of in_features"):
        Int8Linear.from_linear(linear, "w8a16", group_size=5)
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        Int8Linear.from_linear(nn.Conv1d(1, 1, 1), "w8a8")
    layer = Int8Linear.from_linear(linear, "w8a8")
    with pytest.raises(ValueError, match="input has 15 features, expected 16"):
        layer(torch.randn(2, 15))
    with pytest.raises(ValueError, match="smooth_scale must have shape"):
        Int8Linear.from_linear(linear, "w8a8", smooth_scale=torch.ones(3))


@pytest.mark.parametrize("scheme", ["w8a8", "w8a16"])
def test_compiles_without_graph_breaks(scheme):
    layer = Int8Linear.from_linear(nn.Linear(32, 16), scheme, smooth_scale=torch.rand(32) + 0.5)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 32)
    assert torch.equal(compiled(x), layer(x))


def test_w8a8_packed_weight_matches_unpacked_and_follows_weight_changes(monkeypatch):
    # On the CPU the w8a8 weight is packed once (AVX-512 VNNI kernel); the AVX2 path reads it unpacked.
    kernels = torch.ops.fastlm.int8_cpu_kernels() if hasattr(torch.ops.fastlm, "int8_cpu_kernels") else []
    if "avx512_vnni" not in kernels or "avx2" not in kernels:
        pytest.skip("needs the AVX-512 VNNI and AVX2 int8 paths")
    torch.manual_seed(3)
    layer = Int8Linear.from_linear(nn.Linear(70, 37), "w8a8")
    x = torch.randn(5, 70)
    monkeypatch.setenv("FASTLM_INT8_KERNEL", "avx2")
    expected = layer(x)
    monkeypatch.setenv("FASTLM_INT8_KERNEL", "avx512_vnni")
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    other = Int8Linear.from_linear(nn.Linear(70, 37), "w8a8")
    layer.load_state_dict(other.state_dict())  # copies into the same buffers: the packing must follow
    torch.testing.assert_close(layer(x), other(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m", [1, 3, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w8a16_decoding_rows_equal_the_dequantized_weight(m, dtype):
    # Up to 4 rows go through the packed weight (a GEMV on AVX-512 CPUs), more through the plain one:
    # both compute x @ dequantized weight in fp32 (exact int8 weights), whatever the path.
    torch.manual_seed(4)
    layer = Int8Linear.from_linear(nn.Linear(150, 43), "w8a16")
    x = torch.randn(m, 150).to(dtype)
    exact = x.double() @ layer.dequantized_weight().double().t() + layer.bias.double()
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, 43)
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # fp32 sums; bf16 output rounding
    torch.testing.assert_close(y.double(), exact, rtol=tol, atol=tol)
    # the packed copy is built for decoding rows only (it doubles the weight's memory)
    assert (getattr(layer, "_packed_key", None) is not None) == (m <= 4)
