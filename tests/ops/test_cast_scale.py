"""cast_scale (C++ on CPU) against the plain-torch reference: every dtype pair, odd sizes, specials."""
from __future__ import annotations

import pytest
import torch

from fastlm.ops import cast_scale
from fastlm.ops._library import has_native_op

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def test_native_kernel_is_registered():
    assert has_native_op("cast_scale_")


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 33, 4097, 200_003])
@pytest.mark.parametrize("scale", [1.0, 0.25, 1 / 3])
def test_matches_reference_bitwise(src, dst, n, scale):
    x = (torch.randn(n) * 100).to(src)
    got = cast_scale(x, scale, dtype=dst)
    want = (x.float() * scale).to(dst)
    assert got.dtype == dst and got.shape == x.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("dst", [torch.bfloat16, torch.float16])
def test_rounding_and_special_values(dst):
    x = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 7e4, -7e4, 1e-8, -6e-6, 65519.0, 65520.0, 3e38,
                      2.0 ** -24, 2.0 ** -25, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8])
    got = cast_scale(x, 1.0, dtype=dst)
    want = x.to(dst)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    nan = cast_scale(torch.tensor([float("nan")]), 2.0, dtype=dst)
    assert nan.isnan().all()


def test_in_place_into_a_view_and_errors():
    buf = torch.zeros(10)
    src = torch.arange(4, dtype=torch.bfloat16)
    cast_scale(src, 0.5, out=buf[3:7])
    assert buf.tolist() == [0, 0, 0, 0, 0.5, 1, 1.5, 0, 0, 0]
    with pytest.raises(ValueError, match="out has 3 elements, x has 4"):
        cast_scale(src, out=torch.empty(3))
    with pytest.raises(TypeError, match="floating-point"):
        cast_scale(torch.arange(3))
    with pytest.raises(ValueError, match="contiguous"):
        cast_scale(torch.randn(4, 4).t(), out=torch.empty(4, 4))


def test_reference_backend(monkeypatch):
    monkeypatch.setenv("FASTLM_BACKEND", "reference")
    x = torch.randn(100)
    assert torch.equal(cast_scale(x, 3.0, dtype=torch.bfloat16), (x * 3.0).to(torch.bfloat16))
