"""The CUDA path of the watermark: fastlm.ops.watermark_bias (Triton, compiled for real) against the
plain-torch reference, and a watermarked generation on the device detected on the CPU.

Skipped without a GPU (benchmarks/gpu_check.sh runs them); FASTLM_TEST_DEVICE=cpu runs the same
checks on the C++ kernel (a self-check of this file).
"""
import os

import pytest
import torch

from fastlm import ops
from fastlm.accountability.watermark import WatermarkKey
from fastlm.models import GPT, GPTConfig
from fastlm.ops import reference_watermark as reference

DEVICE = os.environ.get("FASTLM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 50257), (64, 4099)])
def test_watermark_bias_on_device_equals_the_reference(dtype, shape):
    logits = torch.randn(*shape).to(dtype)
    seeds, codes = torch.randint(0, 2**32, shape[:1]), torch.randint(0, 2**32, shape[1:])
    want = reference.watermark_bias(logits, seeds, codes, 2**30, 2.0)
    got = ops.watermark_bias(logits.to(DEVICE), seeds.to(DEVICE), codes.to(DEVICE), 2**30, 2.0).cpu()
    assert got.dtype == dtype
    # fp32 adds are exact; the downcast rounds to nearest on both sides
    assert torch.equal(got, want)


def test_watermarked_generation_on_device_is_detected():
    torch.manual_seed(0)
    model = GPT(GPTConfig(family="llama", vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                          max_seq_len=96)).to(DEVICE).eval()
    key = WatermarkKey(bytes(range(32)))
    prompt = torch.randint(0, 512, (8, 4), device=DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    marked = model.generate(prompt, 80, temperature=1.0, generator=g, logits_processor=key.processor()).cpu()
    plain = model.generate(prompt, 80, temperature=1.0, generator=g).cpu()
    assert min(key.detect(row[3:])["z"] for row in marked) > 4   # an untrained model: ~uniform sampling
    assert max(key.detect(row[3:])["z"] for row in plain) < 3
