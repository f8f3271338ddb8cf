"""The Triton AdamW kernel (under TRITON_INTERPRET=1) against the plain-torch reference."""
from __future__ import annotations

import pytest
import torch

from fastlm.ops import reference_adamw

pytestmark = pytest.mark.triton


def _state(shapes, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    masters = [p.float() if dtype != torch.float32 else torch.empty(0) for p in params]
    moments = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    return params, masters, moments


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_adamw_matches_reference(dtype):
    from fastlm.kernels.adamw import adamw_step_

    shapes = [(37, 19), (1,), (3000,)]
    ours, ours_w, (ours_m, ours_v) = _state(shapes, dtype, 0)
    ref, ref_w, (ref_m, ref_v) = _state(shapes, dtype, 0)
    gen = torch.Generator().manual_seed(1)
    ours_steps, ref_steps = ([torch.tensor(float(s)) for s in (0, 0, 3)] for _ in range(2))
    for step in range(1, 6):
        grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        lr = 1e-2 * (1 + step % 3)
        args = (lr, 0.9, 0.95, 1e-8, 0.1)
        adamw_step_(ours, grads, ours_m, ours_v, ours_w, ours_steps, *args)
        reference_adamw.adamw_step_(ref, grads, ref_m, ref_v, ref_w, ref_steps, *args)
    assert [s.item() for s in ours_steps] == [s.item() for s in ref_steps] == [5, 5, 8]
    for a, b in zip(ours_m + ours_v, ref_m + ref_v):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if dtype == torch.float32:
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    else:
        for a, b, p in zip(ours_w, ref_w, ours):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            # the interpreter's bf16 emulation truncates (GPUs round to nearest even): one ulp at most
            torch.testing.assert_close(p.float(), a.to(torch.bfloat16).float(), rtol=2.0**-7, atol=0)
