"""Fused training ops (rope, swiglu/geglu, cross_entropy, linear_cross_entropy) against eager PyTorch,
and the peak memory of the fused linear cross-entropy against an unfused head + loss.

    python benchmarks/fused_ops.py                    # CPU, fp32: speed, then memory for N = 1k..8k tokens
    python benchmarks/fused_ops.py --quick --threads 2
    python benchmarks/fused_ops.py --device cuda --dtype bf16

The measuring code is fastlm.bench.suites.fused_ops (also `fastlm bench fused_ops`).
"""
from __future__ import annotations

import argparse
import sys

import torch

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import fused_ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=list(fused_ops.DTYPES), help="default: fp32 CPU, bf16 CUDA")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="token counts of the memory rows")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = Options(device=args.device, quick=args.quick, repeat=args.repeat)
    rows = fused_ops.measure_speed(options, dtype=args.dtype)
    print_table(rows, json_path=args.json)
    if not args.skip_memory:
        print()
        mem = fused_ops.measure_memory(options, tokens=args.tokens, vocab=args.vocab, hidden=args.hidden,
                                       dtype=args.dtype)
        print_table(mem, json_path=args.json and args.json + ".memory")


if __name__ == "__main__":
    main()
