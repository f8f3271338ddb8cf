"""The Triton LoRA matmul (under TRITON_INTERPRET=1) against the fp64 reference: tiny odd shapes."""
from __future__ import annotations

import pytest
import torch

from fastlm.ops import reference_lora as reference

from ..ops.accuracy import assert_as_accurate

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 3, 17, 1), (17, 33, 5, 4), (20, 16, 40, 8), (9, 24, 18, 20)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout_input", [False, True])
def test_triton_lora_matmul_forward(dtype, shape, bias, dropout_input):
    from fastlm.kernels.lora_matmul import lora_matmul_fwd

    m, k, n, r = shape
    g = torch.Generator().manual_seed(m + k + n + r)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype)
    bias_t = torch.randn(n, generator=g).to(dtype) if bias else None
    a = (torch.randn(r, k, generator=g) / k ** 0.5).to(dtype)
    b = torch.randn(n, r, generator=g).to(dtype)
    lx = torch.randn(m, k, generator=g).to(dtype) if dropout_input else None
    out, xa = lora_matmul_fwd(x, w, bias_t, lx, a, b, 1.5)
    f64 = [None if t is None else t.double() for t in (x, w, bias_t, a, b, lx)]
    want = reference.lora_matmul(f64[0], f64[1], f64[2], f64[3], f64[4], 1.5, f64[5])
    plain = reference.lora_matmul(x, w, bias_t, a, b, 1.5, lx)
    assert out.dtype == dtype
    # the adapter's input xa is rounded to x's dtype first (as the CPU op does): allow its rounding too
    assert_as_accurate("out", out, want, plain, scale=want.abs() + 1.5 * (xa.double().abs() @ b.double().abs().t()))
    torch.testing.assert_close(xa, (x if lx is None else lx) @ a.t())
