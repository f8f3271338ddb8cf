"""Data-parallel step time: fastlm DataParallel vs torch DDP (same bucket size) vs no communication.

    python benchmarks/data_parallel.py [--nproc 2] [--model tiny|small] [--bucket-mb 25] [--steps 10]

The measuring code is fastlm.bench.suites.data_parallel (also `fastlm bench data_parallel`).
"""
from __future__ import annotations

import argparse

import torch

from fastlm.bench.suites.data_parallel import MODELS, DPSettings, step_times

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--batch", type=int, default=8, help="sequences per rank per step")
    parser.add_argument("--bucket-mb", type=float, default=25.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    a = parser.parse_args()
    t = step_times(DPSettings(nproc=a.nproc, model=a.model, batch=a.batch, bucket_mb=a.bucket_mb, steps=a.steps,
                              warmup=a.warmup, threads=a.threads))
    base = t["local"]
    print(f"model {a.model}, {a.nproc} processes, {a.batch} x {MODELS[a.model]['max_seq_len']} tokens per rank, "
          f"bucket {a.bucket_mb:g} MB ({'cuda' if torch.cuda.is_available() else 'cpu'})")
    print(f"{'':28s}{'step ms':>10s}{'overhead vs no comm':>22s}")
    for name, label in (("local", "no communication (baseline)"), ("ddp", "torch DDP"), ("fastlm", "fastlm DataParallel")):
        print(f"{label:28s}{t[name] * 1e3:10.1f}{(t[name] / base - 1) * 100:21.1f}%")
    print(f"fastlm / DDP step time: {t['fastlm'] / t['ddp']:.3f}")
