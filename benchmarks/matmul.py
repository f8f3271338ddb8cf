"""int8 matmuls (W8A8, W8A16) against fp32 torch.matmul and torch's dynamic int8 linear, same run.

    python benchmarks/matmul.py [--device cpu|cuda] [--threads N] [--quick] [--json FILE]

The measuring code is fastlm.bench.suites.matmul (also run by `fastlm bench matmul`). On the CPU it
forces each int8 vector path this CPU runs in turn (column `kernel`); FASTLM_INT8_KERNEL=avx2 (etc.)
measures that one path only. When
benchmarks/matmul_fp.py exists (fp16/bf16 GEMMs with fused epilogues), its rows are printed too.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import matmul


def _fp_rows(options: Options) -> list[dict]:
    """The fp16/bf16 GEMM rows of benchmarks/matmul_fp.py, if that file is there."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        module = importlib.import_module("matmul_fp")
    except ImportError:
        return []
    measure = getattr(module, "measure", None) or getattr(module, "run", None)
    return measure(options) if measure is not None else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = Options(device=args.device, quick=args.quick, repeat=args.repeat)
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, device {args.device}")
    print_table(matmul.measure(options), json_path=args.json)
    fp_rows = _fp_rows(options)
    if fp_rows:
        print()
        print_table(fp_rows)


if __name__ == "__main__":
    main()
