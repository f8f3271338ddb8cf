"""Shapes and dtypes shared by the native, Triton and CUDA norm tests; the fixed tolerances below
serve only tests/gpu (the CPU and Triton tests use accuracy.py's criterion)."""
import torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HIDDEN_SIZES = [1, 8, 127, 769, 5120]

# Tolerances sized to the dtype's own rounding (one or two ulps of the output).
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
# Weight gradients sum over every row: allow for fp32 summation order.
GRAD_W_TOL = dict(atol=1e-3, rtol=1e-4)


def close(actual, expected, dtype, **override):
    torch.testing.assert_close(actual.float(), expected.float(), **{**TOL[dtype], **override})
