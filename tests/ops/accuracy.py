"""The accuracy criterion of every op test (FlashAttention's): against a float64 oracle, the fast path's
error is at most 2x the error of the plain-torch reference computed at the input dtype, plus a floor of
at most a few ulps of the output dtype (at the result's magnitude) for results both get almost exactly.
No fixed tolerances: the bound is what plain torch itself achieves on the same inputs, fp32 included.
"""
import contextlib
import os

import torch

# The floor, relative to the oracle's largest magnitude (at least 1): half an ulp of bf16 / fp16 (a
# kernel that rounds an intermediate to the input dtype, as FlashAttention does with P, can be unluckier
# than the plain math on tiny shapes); eight ulps of fp32 (a result that plain torch gets exactly, e.g.
# a difference of equal terms, may be left with the rounding of those terms in another formulation).
FLOOR = {torch.float32: 2.0**-20, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_as_accurate(name: str, got: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor,
                       dtype: torch.dtype | None = None, floor: float | None = None,
                       scale: torch.Tensor | None = None) -> None:
    """|got - ref64| <= 2 |ref_lowp - ref64| + floor * max(1, |scale|); dtype (default got's) picks the
    floor; scale (default ref64) the magnitude it applies to, e.g. the sum of |terms| of a dot product
    whose result cancels."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(ref64.shape)}"
    err, base = max_err(got, ref64), max_err(ref_lowp, ref64)
    if floor is None:
        floor = FLOOR[dtype or got.dtype]
    scale = ref64 if scale is None else scale
    eps = floor * max(1.0, scale.abs().max().item() if scale.numel() else 0.0)
    assert err <= 2 * base + eps, f"{name}: max error {err:.3g} > 2 * {base:.3g} (plain torch) + {eps:.3g}"


@contextlib.contextmanager
def plain_torch():
    """FASTLM_BACKEND=reference inside: fastlm.ops runs its plain-torch references, at the input dtype."""
    old = os.environ.get("FASTLM_BACKEND")
    os.environ["FASTLM_BACKEND"] = "reference"
    try:
        yield
    finally:
        if old is None:
            del os.environ["FASTLM_BACKEND"]
        else:
            os.environ["FASTLM_BACKEND"] = old


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


def to64(x):
    """A float64 copy of a floating tensor (anything else as it is)."""
    return x.detach().double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def assert_like_reference(names, got, reference, *args):
    """A kernel's outputs `got` (one tensor or a tuple, named by `names`) against `reference` (its
    plain-torch reference op) run on float64 copies of args (the oracle) and on args as given."""
    want64, want = reference(*map(to64, args)), reference(*args)
    if isinstance(got, torch.Tensor):
        names, got, want64, want = (names,), (got,), (want64,), (want,)
    for name, g, w64, w in zip(names, got, want64, want):
        assert_as_accurate(name, g, w64, w)
