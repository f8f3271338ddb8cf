"""fastlm.optim.AdamW against torch.optim.AdamW (foreach=True and fused=True) on CPU, same run.

    python benchmarks/adamw.py                        # 1M, 10M, 50M parameters; 1 and 2 threads
    python benchmarks/adamw.py --sizes 10M --threads 1 --paths    # also every forced vector path

Parameters come in the tensor sizes of a LLaMA-style model (embedding, q/k/v/o, SwiGLU MLP, norms),
fp32, with fp32 gradients. The optimizers step in turn (interleaved, so load from other processes
hits them alike) and each figure is the best of the repeats. GB/s counts the 28 bytes per parameter
a step has to move (read p, g, m, v; write p, m, v).

Measured 2026-12-03 (AMD CPU with AVX-512, 2 cores shared with other jobs: load average ~12 during
the run, so the figures are noisy; one run, --paths --repeat 20), ms/step (x = torch fused / fastlm):

    params  threads  torch foreach  torch fused  fastlm avx512     fastlm avx2      fastlm scalar
    1.25M   1          8.69          1.07         0.92 (1.16x)     0.86 (1.24x)     1.06 (1.01x)
    1.25M   2         16.04          0.88         0.65 (1.36x)     0.56 (1.58x)     0.65 (1.37x)
    12.9M   1         94.8          11.06        11.18 (0.99x)    10.20 (1.08x)    16.52 (0.67x)
    12.9M   2        246.0          18.83        15.98 (1.18x)    11.93 (1.58x)    16.96 (1.11x)
    51.5M   1        339.7          47.82        48.55 (0.98x)    46.03 (1.04x)    59.96 (0.80x)
    51.5M   2        974.6          99.00        39.65 (2.50x)    48.89 (2.02x)    75.74 (1.31x)

With one thread both fused steps run at the memory bandwidth one core gets (~30-35 GB/s of the
28 bytes per parameter), so fastlm matches torch's fused step there rather than beating it 1.5x;
with two threads it splits all tensors evenly over the threads in one call and is 1.2-2.5x faster.
Against torch's foreach step (what the trainer used on the CPU before) it is 7-25x faster.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from fastlm.ops.adamw import adamw_cpu_kernel
from fastlm.optim import AdamW

# name -> (d_model, n_layer, vocab): about 1M, 10M (the 6-layer width-384 model) and 50M parameters
MODELS = {"1M": (128, 4, 2048), "10M": (384, 6, 8192), "50M": (768, 6, 16384)}


def model_shapes(d: int, n_layer: int, vocab: int) -> list[tuple[int, ...]]:
    hidden = 256 * ((8 * d // 3 + 255) // 256)
    layer = [(d,), (d, d), (d // 2, d), (d // 2, d), (d, d), (d,), (hidden, d), (hidden, d), (d, hidden)]
    return [(vocab, d), *layer * n_layer, (d,)]


def _params(shapes, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    return params


def _optimizers(shapes, paths: list[str]) -> dict[str, tuple[torch.optim.Optimizer, str | None]]:
    kw = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    opts = {"torch foreach": (torch.optim.AdamW(_params(shapes), foreach=True, **kw), None),
            "torch fused": (torch.optim.AdamW(_params(shapes), fused=True, **kw), None)}
    for path in paths:
        opts[f"fastlm {path}"] = (AdamW(_params(shapes), **kw), path)
    return opts


def measure(shapes, threads: int, repeat: int, paths: list[str]) -> dict[str, float]:
    torch.set_num_threads(threads)
    opts = _optimizers(shapes, paths)
    best = {name: float("inf") for name in opts}
    for r in range(repeat + 1):  # round 0 warms up (creates the state)
        for name, (opt, path) in opts.items():
            if path is not None:
                os.environ["FASTLM_ADAMW_KERNEL"] = path
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            if r > 0:
                best[name] = min(best[name], elapsed)
    os.environ.pop("FASTLM_ADAMW_KERNEL", None)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--paths", action="store_true", help="every vector path this CPU runs, not only the best")
    args = parser.parse_args()
    best_path = adamw_cpu_kernel()
    paths = list(torch.ops.fastlm.adamw_cpu_kernels()) if args.paths and best_path != "reference" else [best_path]
    print(f"torch {torch.__version__}; fastlm AdamW path: {best_path} (this CPU runs: "
          f"{', '.join(torch.ops.fastlm.adamw_cpu_kernels()) if best_path != 'reference' else 'reference only'})")
    print(f"{'params':>8} {'tensors':>7} {'thr':>3} {'optimizer':>16} {'ms/step':>9} {'GB/s':>6} {'vs fused':>8} "
          f"{'vs foreach':>10}")
    for size in args.sizes:
        shapes = model_shapes(*MODELS[size])
        numel = sum(torch.Size(s).numel() for s in shapes)
        for threads in args.threads:
            best = measure(shapes, threads, args.repeat, paths)
            for name, seconds in best.items():
                print(f"{numel / 1e6:7.2f}M {len(shapes):7d} {threads:3d} {name:>16} {seconds * 1e3:9.3f} "
                      f"{28 * numel / seconds / 1e9:6.1f} {best['torch fused'] / seconds:7.2f}x "
                      f"{best['torch foreach'] / seconds:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
