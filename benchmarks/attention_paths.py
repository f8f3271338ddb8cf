"""The CPU attention kernels on one shape, each forced path against torch SDPA, interleaved in one run.

    python benchmarks/attention_paths.py                      # issue 21's training shape, 1 and 2 threads
    python benchmarks/attention_paths.py --shape 8 256 6 64 --threads 1 --repeat 7

Shape (batch, seqlen, heads, head_dim), causal by default. Rows: fastlm fp32 inputs; fastlm bf16 inputs
with FASTLM_ATTN_KERNEL forced to each path this CPU runs (fp32 micro-kernel on bf16 tiles converted
to fp32, or the AVX512-BF16 one); torch SDPA (its CPU flash kernel) in fp32 and bf16. Each repeat
times every row once (median of --inner calls), rows interleaved; the figure is the best repeat.

Issue 21's shape (8 x 256, 6 heads of 64, causal) on the AMD EPYC Zen4 (AVX-512 + AVX512-BF16, no
AMX), 2026-12-03, 2 cores shared with other sessions, best of 9, ms (1 thread: load average 2.0, at
commit "softmax scale in the micro-kernel's epilogue"; 2 threads: load 3.1, one commit earlier, which
the epilogue change made ~10 % faster in the backward on 1 thread):

                                   1 thread           2 threads
                                   fwd    fwd+bwd     fwd    fwd+bwd
    fp32 inputs, fp32 kernel       3.09   14.71       1.84    8.51
    bf16 inputs, fp32 kernel       3.27   15.70       1.79    7.86    (before: bf16 tiles -> fp32)
    bf16 inputs, bf16 kernel       1.70    7.55       0.96    3.75    (AVX512-BF16 products)
    torch SDPA bf16 (flash, CPU)   9.41   31.53       5.13   16.90

Later 2-thread runs gave every fastlm forward 8.0 ms whatever the kernel: a thread starved by the other
processes (compare the rows before believing a 2-thread figure). torch SDPA was slower on every shape
tried (also 2 x 1024, 8 heads of 128, causal, 1 thread: bf16 kernel 13.0 / 85 ms, SDPA bf16 65 / 357 ms).

Before the bf16 kernel, bf16 inputs spent about half their time in the fp32 products and a third
converting bf16 rows to fp32 tiles and back (perf: gemm_acc vs bf16_to_float / float_to_bf16 and the
packing); exp and the online softmax were ~5 %. With it, the products are ~50 % of the backward and
~45 % of the forward; the rest is moving rows in and out of the strided (B, S, H, D) tensors, the
softmax (~15 % of the forward) and the transposes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.bench.suites.attention import flops


def _time(fn, inner):
    fn()
    runs = []
    for _ in range(inner):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _cases(b, s, h, d, causal, mode):
    """(name, dtype, forced kernel or None, callable) for each row."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(b, s, h, d, dtype=dtype, requires_grad=True) for _ in range(3))
        g = torch.randn(b, s, h, d, dtype=dtype)
        qs, ks, vs = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        gs = g.transpose(1, 2).contiguous()

        def ours(q=q, k=k, v=v, g=g):
            if mode == "fwd":
                with torch.no_grad():
                    ops.attention(q, k, v, causal=causal)
            else:
                torch.autograd.grad(ops.attention(q, k, v, causal=causal), (q, k, v), g)

        def sdpa(qs=qs, ks=ks, vs=vs, gs=gs):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                if mode == "fwd":
                    with torch.no_grad():
                        F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)
                else:
                    torch.autograd.grad(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal),
                                        (qs, ks, vs), gs)

        name = "fp32" if dtype == torch.float32 else "bf16"
        kernels = ["fp32"] + (["bf16"] if dtype == torch.bfloat16 and _has_bf16_kernel() else [])
        for kernel in kernels:
            rows.append((f"fastlm {name} inputs, {kernel} kernel", kernel, ours))
        rows.append((f"torch SDPA {name}", None, sdpa))
    return rows


def _has_bf16_kernel() -> bool:
    op = getattr(torch.ops.fastlm, "attention_cpu_kernel", None)
    if op is None:
        return False
    os.environ["FASTLM_ATTN_KERNEL"] = "auto"
    return op(torch.bfloat16) == "bf16"


def _kernel_ran(kernel, dtype_bf16: bool) -> str:
    op = getattr(torch.ops.fastlm, "attention_cpu_kernel", None)
    return "?" if op is None else op(torch.bfloat16 if dtype_bf16 else torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 256, 6, 64], metavar=("B", "S", "H", "D"))
    parser.add_argument("--full", action="store_true", help="no causal mask")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5)
    args = parser.parse_args()
    b, s, h, d = args.shape
    causal = not args.full
    torch.manual_seed(0)
    print(f"B={b} S={s} H={h} D={d} {'causal' if causal else 'full'}; best of {args.repeat} interleaved repeats "
          f"(each the median of {args.inner} calls); load average {os.getloadavg()[0]:.1f}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for mode in args.modes:
            rows = _cases(b, s, h, d, causal, mode)
            best = {name: float("inf") for name, _, _ in rows}
            ran = {}
            for _ in range(args.repeat):
                for name, kernel, fn in rows:
                    if kernel is not None:
                        os.environ["FASTLM_ATTN_KERNEL"] = kernel
                        ran[name] = _kernel_ran(kernel, "bf16 inputs" in name)
                    best[name] = min(best[name], _time(fn, args.inner))
            os.environ.pop("FASTLM_ATTN_KERNEL", None)
            f = flops(b, s, h, d, causal, mode)
            print(f"\n{threads} thread(s), {mode}")
            for name, _, _ in rows:
                t = best[name]
                extra = f"  (ran: {ran[name]})" if name in ran else ""
                print(f"  {name:<34} {t * 1e3:8.2f} ms  {f / t / 1e9:7.1f} GFLOP/s{extra}")


if __name__ == "__main__":
    main()
