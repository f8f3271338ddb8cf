"""RMSNorm / LayerNorm: fastlm's kernels against torch.nn.functional, same inputs, same run.

    python benchmarks/norms.py [--dtypes fp32 bf16] [--threads N] [--device cpu|cuda]

Prints forward and forward+backward times and the speedup over torch (>1 = fastlm faster).
The measuring code is fastlm.bench.suites.norms (also run by `fastlm bench norms`).
"""
from __future__ import annotations

import argparse

import torch

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", nargs="+", default=None, choices=list(norms.DTYPES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = norms.measure(Options(device=args.device, quick=args.quick, repeat=args.repeat), dtypes=args.dtypes)
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print_table(rows, json_path=args.json)


if __name__ == "__main__":
    main()
