"""Fused attention: fastlm (C++ on CPU, Triton on CUDA) against torch SDPA, same inputs, same run.

    python benchmarks/attention.py                              # CPU, fp32, S = 512..2048, a few minutes
    python benchmarks/attention.py --seqlens 512 1024 2048 4096 8192 --dtype bf16
    python benchmarks/attention.py --device cuda --dtype bf16 --head-dims 128 --seqlens 512 1024 2048 4096 8192
    python benchmarks/attention.py --memory                     # peak memory vs S (fastlm vs SDPA's math path)

The measuring code is fastlm.bench.suites.attention / attention_memory (also `fastlm bench attention`).
benchmarks/attention_paths.py compares the CPU kernel paths (fp32, AVX512-BF16) on one shape.
"""
from __future__ import annotations

import argparse
import sys

import torch

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import attention, attention_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=list(attention.DTYPES), help="default: fp32 CPU, bf16 CUDA")
    parser.add_argument("--seqlens", type=int, nargs="+", default=None)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--tokens", type=int, default=None, help="B*S per batch (default 4096 CPU, 16384 CUDA)")
    parser.add_argument("--heads-dim", type=int, default=None, help="H*D (default 512 CPU, 2048 CUDA)")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    parser.add_argument("--causal", nargs="+", default=["false", "true"], choices=["false", "true"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="peak memory of fwd+bwd vs S instead of speed")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = Options(device=args.device, repeat=args.repeat)
    if args.memory:
        rows = attention_memory.measure(options, seqlens=args.seqlens)
    else:
        rows = attention.measure(options, dtype=args.dtype, seqlens=args.seqlens, head_dims=args.head_dims,
                                 tokens=args.tokens, heads_dim=args.heads_dim, modes=args.modes,
                                 causal=[c == "true" for c in args.causal])
    print_table(rows, json_path=args.json)


if __name__ == "__main__":
    main()
