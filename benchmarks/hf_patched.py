"""A Hugging Face LLaMA patched with fastlm (apply_fastlm) against the same model unpatched:
training tokens/s and the peak memory of a training step (32k vocabulary, random weights).

    python benchmarks/hf_patched.py --threads 1             # CPU: llama-tiny and llama-small
    python benchmarks/hf_patched.py --quick
    python benchmarks/hf_patched.py --device cuda --sizes llama-small llama-1b-ish

The measuring code is fastlm.bench.suites.hf_patched (also `fastlm bench hf_patched`).
"""
from __future__ import annotations

import argparse
import sys

import torch

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import hf_patched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: fp32 CPU, bf16 CUDA")
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(hf_patched.SIZES))
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
    print_table(hf_patched.measure_throughput(options, sizes=args.sizes, dtype=args.dtype), json_path=args.json)
    if not args.skip_memory:
        print()
        mem = hf_patched.measure_memory(options, sizes=args.sizes, dtype=args.dtype)
        print_table(mem, json_path=args.json and args.json + ".memory")


if __name__ == "__main__":
    main()
