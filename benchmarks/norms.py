"""RMSNorm / LayerNorm: fastlm's C++ CPU kernels against torch.nn.functional, same inputs, same run.

    python benchmarks/norms.py [--dtypes fp32 bf16] [--threads N]

Prints forward and forward+backward times and the speedup over torch (>1 = fastlm faster).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.bench import compare, print_table, time_callable

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = [(8192, 768), (4096, 2048), (2048, 4096), (1024, 5120), (16384, 127)]


def _cases(kind: str, rows: int, n: int, dtype: torch.dtype):
    x = torch.randn(rows, n, dtype=dtype, requires_grad=True)
    # Parameters in the input dtype, so torch's fused path applies to the baseline too.
    w = torch.randn(n, dtype=dtype, requires_grad=True)
    b = torch.randn(n, dtype=dtype, requires_grad=True)
    if kind == "rms_norm":
        return x, (lambda: ops.rms_norm(x, w, 1e-6)), (lambda: F.rms_norm(x, (n,), w, 1e-6)), (x, w)
    return x, (lambda: ops.layer_norm(x, w, b, 1e-5)), (lambda: F.layer_norm(x, (n,), w, b, 1e-5)), (x, w, b)


def _fwd_bwd(fn, inputs, grad):
    def run():
        torch.autograd.grad(fn(), inputs, grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for kind in ("rms_norm", "layer_norm"):
        for dtype_name in args.dtypes:
            for n_rows, n in SHAPES:
                x, ours, theirs, inputs = _cases(kind, n_rows, n, DTYPES[dtype_name])
                with torch.no_grad():
                    fwd_ours = time_callable("fastlm", ours, repeat=args.repeat)
                    fwd_torch = time_callable("torch", theirs, repeat=args.repeat)
                grad = torch.randn_like(x)
                bwd_ours = time_callable("fastlm", _fwd_bwd(ours, inputs, grad), repeat=args.repeat)
                bwd_torch = time_callable("torch", _fwd_bwd(theirs, inputs, grad), repeat=args.repeat)
                rows.append({
                    "op": kind, "dtype": dtype_name, "shape": f"{n_rows}x{n}",
                    "fwd_ms": fwd_ours.seconds * 1e3, "torch_fwd_ms": fwd_torch.seconds * 1e3,
                    "fwd_speedup": compare(fwd_ours, fwd_torch),
                    "fwd_bwd_ms": bwd_ours.seconds * 1e3, "torch_fwd_bwd_ms": bwd_torch.seconds * 1e3,
                    "fwd_bwd_speedup": compare(bwd_ours, bwd_torch),
                })
    print(f"CPU threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print_table(rows, json_path=args.json)


if __name__ == "__main__":
    main()
