"""The Triton cast_scale kernel (under TRITON_INTERPRET=1) against the reference."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("src", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dst", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 37, 5000])
def test_triton_cast_scale(src, dst, n):
    from fastlm.kernels.cast_scale import cast_scale_

    x = (torch.randn(n) * 10).to(src)
    out = torch.empty(n, dtype=dst)
    cast_scale_(out, x, 0.375)
    want = (x.float() * 0.375).to(dst)
    if dst == torch.bfloat16:
        # the interpreter's bf16 emulation truncates (GPUs round to nearest even): one ulp apart at most
        torch.testing.assert_close(out.float(), want.float(), rtol=2.0**-7, atol=0)
    else:
        assert torch.equal(out, want)
