"""fp32 training GEMMs: fastlm.ops.matmul (forward + backward) against torch's F.linear, same inputs, same run.

    python benchmarks/gemm_fp32.py [--threads 2] [--tokens 2048] [--repeat 10]

The shapes of the 6-layer, width-384, context-256 LLaMA-style model at batch 8 (2048 tokens): the
attention's q/k/v and output projections, the SwiGLU MLP's gate/up and down projections and the
vocabulary-8192 head. Each row times forward, input gradient and weight gradient (one backward)
of a weight that needs a gradient; GFLOP/s count the three GEMMs. fastlm's fp32 GEMM is torch's
BLAS or oneDNN, whichever this CPU runs faster (the `gemm32` column says which: FASTLM_CPU_GEMM32
forces one). Best of --repeat runs, fastlm and torch interleaved.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.bench import print_table

D = 384
SHAPES = {"qkv": (D, 3 * D), "attn out": (D, D), "mlp gate/up": (D, 2 * 1024), "mlp down": (1024, D),
          "head": (D, 8192)}


def fwd_bwd(fn, x, w, grad):
    def run():
        w.grad = None
        fn(x, w).backward(grad)
    return run


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, total = [], {"fastlm": 0.0, "torch": 0.0}
    for name, (k, n) in SHAPES.items():
        x = torch.randn(args.tokens, k, requires_grad=True)
        w = (torch.randn(n, k) / k**0.5).requires_grad_()
        grad = torch.randn(args.tokens, n)
        ours = fwd_bwd(lambda x, w: ops.matmul(x, w.t()), x, w, grad)
        theirs = fwd_bwd(F.linear, x, w, grad)
        t = {"fastlm": float("inf"), "torch": float("inf")}
        for _ in range(3):  # interleaved rounds
            t["fastlm"] = min(t["fastlm"], best(ours, args.repeat))
            t["torch"] = min(t["torch"], best(theirs, args.repeat))
        flops = 3 * 2.0 * args.tokens * k * n
        for key in total:
            total[key] += t[key]
        rows.append({"case": f"{name} {k}x{n}", "fastlm_ms": t["fastlm"] * 1e3, "torch_ms": t["torch"] * 1e3,
                     "fastlm_gflops": flops / t["fastlm"] / 1e9, "torch_gflops": flops / t["torch"] / 1e9,
                     "speedup": t["torch"] / t["fastlm"]})
    rows.append({"case": "all (sum)", "fastlm_ms": total["fastlm"] * 1e3, "torch_ms": total["torch"] * 1e3,
                 "speedup": total["torch"] / total["fastlm"]})
    print(f"{args.threads} threads, {args.tokens} tokens, fp32 forward + backward; "
          f"gemm32 = {torch.ops.fastlm.matmul_cpu_gemm32()}")
    print_table(rows)


if __name__ == "__main__":
    main()
