"""RMSNorm / LayerNorm: fastlm's kernels (C++ on CPU, Triton on CUDA) against torch.nn.functional."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import compare, time_callable

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = [(8192, 768), (4096, 2048), (2048, 4096), (1024, 5120), (16384, 127)]
QUICK_SHAPES = [(4096, 768), (1024, 4096), (2048, 127)]


def _cases(kind: str, rows: int, n: int, dtype: torch.dtype, device: str):
    x = torch.randn(rows, n, dtype=dtype, device=device, requires_grad=True)
    # Parameters in the input dtype, so torch's fused path applies to the baseline too.
    w = torch.randn(n, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(n, dtype=dtype, device=device, requires_grad=True)
    if kind == "rms_norm":
        return x, (lambda: ops.rms_norm(x, w, 1e-6)), (lambda: F.rms_norm(x, (n,), w, 1e-6)), (x, w)
    return x, (lambda: ops.layer_norm(x, w, b, 1e-5)), (lambda: F.layer_norm(x, (n,), w, b, 1e-5)), (x, w, b)


def _fwd_bwd(fn, inputs, grad):
    def run():
        torch.autograd.grad(fn(), inputs, grad)

    return run


def measure(options: Options, dtypes: list[str] | None = None, shapes=None) -> list[dict]:
    dtypes = dtypes or (["fp32", "bf16"] if options.device == "cpu" else ["bf16", "fp16"])
    shapes = shapes or (QUICK_SHAPES if options.quick else SHAPES)
    repeat = options.repeats(10)
    sync = options.device if options.device == "cuda" else None
    rows = []
    for kind in ("rms_norm", "layer_norm"):
        for dtype_name in dtypes:
            for n_rows, n in shapes:
                x, ours, theirs, inputs = _cases(kind, n_rows, n, DTYPES[dtype_name], options.device)
                with torch.no_grad():
                    fwd_ours = time_callable("fastlm", ours, repeat=repeat, device=sync)
                    fwd_torch = time_callable("torch", theirs, repeat=repeat, device=sync)
                grad = torch.randn_like(x)
                bwd_ours = time_callable("fastlm", _fwd_bwd(ours, inputs, grad), repeat=repeat, device=sync)
                bwd_torch = time_callable("torch", _fwd_bwd(theirs, inputs, grad), repeat=repeat, device=sync)
                for mode, a, base in (("fwd", fwd_ours, fwd_torch), ("fwd_bwd", bwd_ours, bwd_torch)):
                    rows.append({"case": f"{kind} {dtype_name} {n_rows}x{n} {mode}", "op": kind,
                                 "dtype": dtype_name, "shape": f"{n_rows}x{n}", "mode": mode,
                                 "fastlm_ms": a.seconds * 1e3, "torch_ms": base.seconds * 1e3,
                                 "speedup": compare(a, base)})
    return rows


SUITE = Suite(name="norms", baseline="torch.nn.functional rms_norm/layer_norm", run=measure)
