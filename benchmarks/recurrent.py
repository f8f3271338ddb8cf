"""Recurrent layers: fastlm.nn.LSTM / GRU against torch.nn.LSTM / GRU (oneDNN / cuDNN), same weights, same run.

    python benchmarks/recurrent.py [--families lstm gru] [--threads N] [--device cpu|cuda] [--quick]

Prints training tokens/s (forward + backward, B=32, T=64..128, H=256..512, 1-2 layers) and batch-1
token-by-token inference (microseconds per token), each with the speedup over torch (>1 = fastlm
faster) and the thread count. Targets on CPU: >= 1.0x training, >= 1.5x batch-1 inference.
The measuring code is fastlm.bench.suites.recurrent (also run by `fastlm bench recurrent`).
"""
from __future__ import annotations

import argparse

import torch

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import recurrent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--families", nargs="+", default=None, choices=list(recurrent.PAIRS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = recurrent.measure(Options(device=args.device, quick=args.quick, repeat=args.repeat), families=args.families)
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print_table(rows, json_path=args.json)


if __name__ == "__main__":
    main()
