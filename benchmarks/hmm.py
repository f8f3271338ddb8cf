"""HMM: fastlm.lm.HMM against hmmlearn's CategoricalHMM from identical parameters, same run.

    python benchmarks/hmm.py [--threads N] [--device cpu|cuda] [--quick]

Prints fit (Baum-Welch), forward (score) and viterbi (decode) tokens/s of both, the speedup (>1 =
fastlm faster), the threads torch ran and how far the log-likelihood trajectories differ.
The measuring code is fastlm.bench.suites.hmm (also run by `fastlm bench hmm`).
"""
from __future__ import annotations

import argparse

import torch

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import hmm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-iter", type=int, default=None, help=f"EM iterations per fit (default {hmm.N_ITER})")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = hmm.measure(Options(device=args.device, quick=args.quick, repeat=args.repeat), n_iter=args.n_iter)
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print_table(rows, columns=["case", "threads", "fastlm_tok_s", "hmmlearn_tok_s", "speedup", "max_rel_diff_history"],
                json_path=args.json)


if __name__ == "__main__":
    main()
