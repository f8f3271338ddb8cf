"""fastlm.ops.watermark_bias (C++ CPU kernel) against the plain-torch reference and a per-element loop
of the definition on Python integers: dtypes, odd sizes, the thresholds' extremes, bad input."""
import pytest
import torch

from fastlm import ops
from fastlm.ops import reference_watermark as reference
from fastlm.ops._library import has_native_op

SHAPES = [(1, 1), (3, 17), (5, 1000), (64, 4099), (0, 7)]


def _mix(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x735A2D97) & 0xFFFFFFFF
    return x ^ (x >> 15)


def naive(logits, seeds, codes, threshold, delta):
    out = logits.double().clone()
    for b in range(logits.shape[0]):
        for v in range(logits.shape[1]):
            if _mix(int(seeds[b]) ^ int(codes[v])) < threshold:
                out[b, v] += delta
    return out


def _inputs(b, v, dtype=torch.float32):
    return (torch.randn(b, v).to(dtype), torch.randint(0, 2**32, (b,)), torch.randint(0, 2**32, (v,)))


def test_the_cpu_kernel_is_native():
    assert has_native_op("watermark_bias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_the_reference(dtype, shape):
    logits, seeds, codes = _inputs(*shape, dtype)
    got = ops.watermark_bias(logits, seeds, codes, 2**30, 2.0)
    assert got.dtype == dtype and got.shape == logits.shape
    # both add in fp32 and round once to the logits' dtype: equal bit for bit
    assert torch.equal(got, reference.watermark_bias(logits, seeds, codes, 2**30, 2.0))


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 300)])
def test_equals_the_definition(shape):
    logits, seeds, codes = _inputs(*shape)
    seeds[0], codes[0] = 0, 2**32 - 1
    got = ops.watermark_bias(logits, seeds, codes, 1_234_567_890, 1.5)
    torch.testing.assert_close(got.double(), naive(logits, seeds, codes, 1_234_567_890, 1.5), rtol=0, atol=1e-6)


def test_threshold_extremes_and_the_green_fraction():
    logits, seeds, codes = _inputs(8, 5000)
    assert torch.equal(ops.watermark_bias(logits, seeds, codes, 0, 3.0), logits)
    torch.testing.assert_close(ops.watermark_bias(logits, seeds, codes, 2**32, 3.0), logits + 3.0, rtol=0, atol=0)
    frac = ((ops.watermark_bias(logits, seeds, codes, 2**30, 3.0) - logits) > 1).double().mean()
    assert abs(frac - 0.25) < 5 * (0.25 * 0.75 / logits.numel()) ** 0.5


def test_float64_and_forced_reference_run_the_reference(monkeypatch):
    logits, seeds, codes = _inputs(3, 17, torch.float64)
    assert torch.equal(ops.watermark_bias(logits, seeds, codes, 2**31, 1.0),
                       reference.watermark_bias(logits, seeds, codes, 2**31, 1.0))
    monkeypatch.setenv("FASTLM_BACKEND", "reference")
    logits32 = logits.float()
    assert torch.equal(ops.watermark_bias(logits32, seeds, codes, 2**31, 1.0),
                       reference.watermark_bias(logits32, seeds, codes, 2**31, 1.0))


def test_non_contiguous_logits():
    logits, seeds, codes = _inputs(6, 40)
    view = logits[::2]
    assert torch.equal(ops.watermark_bias(view, seeds[:3], codes, 2**31, 1.0),
                       reference.watermark_bias(view.contiguous(), seeds[:3], codes, 2**31, 1.0))


def _zeros(n, dtype=torch.long):
    return torch.zeros(n, dtype=dtype)


@pytest.mark.parametrize("args, message", [
    ((torch.randn(3), _zeros(3), _zeros(3), 5), "2-D floating-point"),
    ((torch.randn(2, 3), _zeros(3), _zeros(3), 5), r"seeds must be .* \(2,\)"),
    ((torch.randn(2, 3), _zeros(2), _zeros(3, torch.int32), 5), "codes must be an int64"),
    ((torch.randn(2, 3), _zeros(2), _zeros(3), 2**33), "threshold"),
    ((torch.randn(2, 3), _zeros(2), _zeros(3), True), "threshold"),
])
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        ops.watermark_bias(*args, 1.0)
