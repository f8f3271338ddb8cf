"""The accuracy criterion of every op test (FlashAttention's): against a float64 oracle, the fast path's
error is at most 2x the error of the plain-torch reference computed at the input dtype, plus a floor of
a fraction of an ulp of the output dtype (at the result's magnitude) for results both round alike.
No fixed tolerances: the bound is what plain torch itself achieves on the same inputs, fp32 included.
"""
import torch

# The floor, relative to the oracle's largest magnitude (at least 1): half an ulp of bf16 / fp16 (a
# kernel that rounds an intermediate to the input dtype, as FlashAttention does with P, can be unluckier
# than the plain math on tiny shapes); eight ulps of fp32 (a result that plain torch gets exactly, e.g.
# a difference of equal terms, may be left with the rounding of those terms in another formulation).
FLOOR = {torch.float32: 2.0**-20, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_as_accurate(name: str, got: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor,
                       dtype: torch.dtype | None = None, floor: float | None = None) -> None:
    """|got - ref64| <= 2 |ref_lowp - ref64| + floor * max(1, |ref64|); dtype (default got's) picks the floor."""
    err, base = max_err(got, ref64), max_err(ref_lowp, ref64)
    if floor is None:
        floor = FLOOR[dtype or got.dtype]
    eps = floor * max(1.0, ref64.abs().max().item() if ref64.numel() else 0.0)
    assert err <= 2 * base + eps, f"{name}: max error {err:.3g} > 2 * {base:.3g} (plain torch) + {eps:.3g}"


def oracle_and_plain(fn, *inputs, grad=None, dtype=None):
    """fn (differentiable plain torch) run on float64 copies of the inputs and on the inputs as they are.

    Returns [(out, grads) in float64, (out, grads) at the input dtype]; grads (w.r.t. the floating inputs
    that require grad) only when grad (the output gradient) is given. dtype: the low-precision compute
    dtype when it differs from the inputs' (a reference that upcasts internally needs none).
    """
    results = []
    for cast in (torch.float64, dtype):
        xs = [x.detach().to(cast or x.dtype).requires_grad_(x.requires_grad)
              if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
        out = fn(*xs)
        grads = None
        if grad is not None:
            wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
            grads = torch.autograd.grad(out, wrt, grad.to(out.dtype))
        results.append((out.detach(), grads))
    return results
