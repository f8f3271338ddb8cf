"""Triton watermark bias against the plain-torch reference (TRITON_INTERPRET=1, own pytest process):
odd sizes, several vocabulary blocks, the thresholds' extremes."""
import pytest
import torch

from fastlm.ops import reference_watermark as reference

pytestmark = pytest.mark.triton
watermark = pytest.importorskip("fastlm.kernels.watermark")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 2500)])
@pytest.mark.parametrize("threshold", [0, 2**30, 2**32])
def test_equals_the_reference(dtype, shape, threshold):
    logits = torch.randn(*shape).to(dtype)
    seeds, codes = torch.randint(0, 2**32, shape[:1]), torch.randint(0, 2**32, shape[1:])
    got = watermark.watermark_bias(logits, seeds, codes, threshold, 2.0)
    assert got.dtype == dtype
    want = reference.watermark_bias(logits, seeds, codes, threshold, 2.0)
    if dtype != torch.bfloat16:  # fp32 math, one downcast rounded to nearest on both sides: bit for bit
        assert torch.equal(got, want)
    else:  # the interpreter truncates fp32 -> bf16 whatever the rounding asked (the GPU rounds to nearest,
        # tests/gpu/test_cuda_watermark.py): one bf16 ulp apart at most, the same green lists
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=0)
        assert ((got.float() - logits.float()) > 1).equal((want.float() - logits.float()) > 1)
