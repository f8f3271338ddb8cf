"""fastlm.ops.hashed_window_sum (C++ on CPU) against its plain-torch reference (gather / index_add_),
same inputs, same run: forward and forward + backward at the maxent preset's shape.

    python benchmarks/hashed_window_sum.py                       # rows 2048, features 2, V 4096, B 2**22
    python benchmarks/hashed_window_sum.py --rows 512 --features 4 --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch

from fastlm import ops
from fastlm.ops import reference_hashed_window as reference


def _time(fn, repeat: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--buckets", type=int, default=2**22)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    theta = torch.randn(args.buckets, requires_grad=True)
    hashes = torch.randint(0, args.buckets, (args.rows, args.features))
    grad = torch.randn(args.rows, args.vocab)

    def fastlm_fwd():
        with torch.no_grad():
            ops.hashed_window_sum(theta, hashes, args.vocab)

    def fastlm_fwd_bwd():
        theta.grad = None
        ops.hashed_window_sum(theta, hashes, args.vocab).backward(grad)

    def plain_fwd():
        with torch.no_grad():
            reference.hashed_window_sum_fwd(theta, hashes, args.vocab)

    def plain_fwd_bwd():
        reference.hashed_window_sum_fwd(theta.detach(), hashes, args.vocab)
        reference.hashed_window_sum_bwd(grad, hashes, args.buckets)

    print(f"rows {args.rows}, features {args.features}, vocab {args.vocab}, buckets {args.buckets}, "
          f"threads {torch.get_num_threads()}")
    for name, fast, plain in (("forward", fastlm_fwd, plain_fwd), ("forward+backward", fastlm_fwd_bwd, plain_fwd_bwd)):
        tf, tp = _time(fast, args.repeat), _time(plain, args.repeat)
        print(f"  {name:17s} fastlm {1e3 * tf:8.2f} ms   plain torch {1e3 * tp:8.2f} ms   speedup {tp / tf:5.1f}x")


if __name__ == "__main__":
    main()
