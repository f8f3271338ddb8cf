"""16-bit (and fp32) GEMMs: fastlm.ops.matmul against torch.matmul, same inputs, same run.

    python benchmarks/matmul_fp.py [--device cpu|cuda] [--dtypes bf16 fp32] [--activation gelu_tanh] [--quick]

Rows for M in {1, 16, 256, 2048} and K = N in {1024, 4096}: b is a weight read as weight.t()
(nn.Linear's layout). Columns: fastlm and torch times, speedup = torch / fastlm (>1: fastlm
faster), GFLOP/s. With --activation, fastlm's fused epilogue (bias + activation in the GEMM) is
timed against torch's unfused matmul + bias + activation. On CPU, 16-bit rows also show fastlm
with its fp32-panel GEMM forced (FASTLM_CPU_GEMM16=fp32: what CPUs without native bf16 run) and
torch's fp32 GEMM on the same shape ("vs torch fp32"). benchmarks/matmul.py calls `measure`.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from fastlm import ops
from fastlm.bench import print_table, time_callable
from fastlm.bench.registry import Options

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_TORCH_ACT = {None: lambda h: h, "gelu": F.gelu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"), "silu": F.silu}


def _with_gemm16(mode: str | None, fn):
    """fn with FASTLM_CPU_GEMM16 set to mode (None: unchanged) while it runs."""
    def run():
        old = os.environ.get("FASTLM_CPU_GEMM16")
        if mode is not None:
            os.environ["FASTLM_CPU_GEMM16"] = mode
        try:
            return fn()
        finally:
            if mode is not None:
                if old is None:
                    os.environ.pop("FASTLM_CPU_GEMM16", None)
                else:
                    os.environ["FASTLM_CPU_GEMM16"] = old
    return run


def bench_fp16_matmul(device: str = "cpu", dtypes=("bf16", "fp32"), ms=(1, 16, 256, 2048), sizes=(1024, 4096),
                      activation: str | None = None, repeat: int = 5) -> list[dict]:
    """One row per (dtype, M, K = N): fastlm.ops.matmul vs torch.matmul (and the CPU extras above)."""
    rows = []
    sync = device if device == "cuda" else None
    for name in dtypes:
        dtype = DTYPES[name]
        for k in sizes:
            w = (torch.randn(k, k, device=device) / k ** 0.5).to(dtype)  # (N, K) weight
            bias = torch.randn(k, device=device).to(dtype) if activation else None
            for m in ms:
                a = torch.randn(m, k, device=device).to(dtype)
                flops = 2.0 * m * k * k
                reps = max(2, repeat if flops < 2e10 else repeat // 2)
                fast = lambda: ops.matmul(a, w.t(), bias, activation)  # noqa: E731
                if activation:
                    ref = lambda: _TORCH_ACT[activation](torch.matmul(a, w.t()) + bias)  # noqa: E731
                else:
                    ref = lambda: torch.matmul(a, w.t())  # noqa: E731
                t_fast = time_callable("fastlm", fast, warmup=2, repeat=reps, device=sync)
                t_ref = time_callable("torch", ref, warmup=2, repeat=reps, device=sync)
                row = dict(dtype=name, M=m, K_N=k, act=activation or "-", fastlm_ms=t_fast.seconds * 1e3,
                           torch_ms=t_ref.seconds * 1e3, speedup=t_ref.seconds / t_fast.seconds,
                           fastlm_gflops=flops / t_fast.seconds / 1e9)
                if device == "cpu" and dtype != torch.float32:
                    t_panel = time_callable("fastlm fp32 panels", _with_gemm16("fp32", fast), warmup=2, repeat=reps)
                    a32, w32 = a.float(), w.float()
                    t32 = time_callable("torch fp32", lambda: torch.matmul(a32, w32.t()), warmup=2, repeat=reps)
                    row.update(fp32_panels_ms=t_panel.seconds * 1e3, torch_fp32_ms=t32.seconds * 1e3,
                               fastlm_vs_torch_fp32=t32.seconds / t_fast.seconds,
                               panels_vs_torch_fp32=t32.seconds / t_panel.seconds)
                rows.append(row)
    return rows


def measure(options: Options) -> list[dict]:
    """The rows benchmarks/matmul.py prints (bf16 and fp32 on CPU; fp16, bf16 on CUDA)."""
    dtypes = ("fp16", "bf16") if options.device == "cuda" else ("bf16", "fp32")
    ms = (1, 16, 256) if options.quick else (1, 16, 256, 2048)
    return bench_fp16_matmul(options.device, dtypes, ms, repeat=options.repeats(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    parser.add_argument("--m", nargs="+", type=int, default=[1, 16, 256, 2048])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 4096], help="K = N")
    parser.add_argument("--activation", default=None, choices=["gelu", "gelu_tanh", "silu"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="M in {1, 16, 256}, K = N = 1024")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.m, args.sizes = [1, 16, 256], [1024]
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, device {args.device}, "
          f"FASTLM_CPU_GEMM16={os.environ.get('FASTLM_CPU_GEMM16', 'auto')}")
    print_table(bench_fp16_matmul(args.device, args.dtypes, args.m, args.sizes, args.activation, args.repeat),
                json_path=args.json)


if __name__ == "__main__":
    main()
