"""2:4 sparse GEMM on CPU (fastlm.ops.sparse24_matmul) against dense fp32, same run, one thread by default.

    python benchmarks/sparse24.py [--threads N] [--quick] [--repeat R] [--json FILE]

Shapes of a LLaMA-7B block's linears, W (N, K): attention q/o (4096, 4096), MLP gate/up (11008, 4096)
and down (4096, 11008), at M = 1 (decoding), 8, 32, 128 and 512 rows of x. Each row times, with the
same x and the same 2:4-pruned weight:
  torch_mm     torch.mm(x, W.T), the dense fp32 weight (MKL/oneDNN: what nn.Linear runs)
  fastlm_mm    fastlm.ops.matmul(x, W.T), fastlm's dense fp32 GEMM
  sparse24     fastlm.ops.sparse24_matmul(x, values, meta, K): W compressed (fp32 values + 2-bit offsets)
and reports speedup = torch_mm / sparse24, vs_fastlm = fastlm_mm / sparse24, and the weight bytes
(compressed / dense fp32). Medians of --repeat runs. Then a whole LLaMA-style model (d_model 2048,
2:4-pruned blocks, random weights): greedy decoding and prefill tokens/s with dense nn.Linear against
Sparse24Linear. FASTLM_SPARSE24_KERNEL=avx2|scalar measures another CPU path.
"""
from __future__ import annotations

import argparse

import torch

import fastlm.ops as ops
from fastlm.bench import print_table
from fastlm.bench.timing import time_callable
from fastlm.ops.reference_sparse24 import compress24
from fastlm.prune import nm_mask

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
ROWS = [1, 8, 32, 128, 512]


def measure(quick: bool = False, repeat: int = 10) -> list[dict]:
    shapes, rows_list = (SHAPES[:1], [1, 32]) if quick else (SHAPES, ROWS)
    rows = []
    for n, k in shapes:
        w = torch.randn(n, k) / k**0.5
        w = w * nm_mask(w, 2, 4)
        values, meta = compress24(w)
        wt = w.t()
        ratio = (values.numel() * 4 + meta.numel()) / (w.numel() * 4)
        for m in rows_list:
            x = torch.randn(m, k)
            with torch.no_grad():
                got, want = ops.sparse24_matmul(x, values, meta, k), torch.mm(x, wt)
                assert torch.allclose(got, want, atol=1e-3, rtol=1e-3), "sparse24 disagrees with the dense product"
                reps = max(3, repeat // 4) if m >= 128 else repeat
                t_torch = time_callable("torch_mm", lambda: torch.mm(x, wt), repeat=reps).seconds
                t_fastlm = time_callable("fastlm_mm", lambda: ops.matmul(x, wt), repeat=reps).seconds
                t_sparse = time_callable("sparse24", lambda: ops.sparse24_matmul(x, values, meta, k),
                                         repeat=reps).seconds
            rows.append({"N": n, "K": k, "M": m, "torch_mm_ms": t_torch * 1e3, "fastlm_mm_ms": t_fastlm * 1e3,
                         "sparse24_ms": t_sparse * 1e3, "speedup": t_torch / t_sparse, "vs_fastlm": t_fastlm / t_sparse,
                         "sparse_GFLOPs_equiv": 2 * m * n * k / t_sparse / 1e9, "weight_bytes": ratio})
    return rows


def measure_model(quick: bool = False) -> list[dict]:
    """Greedy decoding (KV cache, batch 1) and a 128-token prefill of a LLaMA-style model with 2:4-pruned
    block linears: dense nn.Linear (the pruned weights, zeros stored) against Sparse24Linear (what
    `fastlm eval` / `generate` run on a 2:4 run on the CPU). Random weights: speed only."""
    from fastlm.models import GPT, GPTConfig
    from fastlm.prune import apply_sparse24, prune_model

    torch.manual_seed(0)
    config = GPTConfig(family="llama", vocab_size=8192, n_layer=2 if quick else 4, n_head=16, n_kv_head=16,
                       d_model=2048, max_seq_len=512)
    model = GPT(config).eval()
    masks = prune_model(model, pattern="2:4")
    prompt, new_tokens = torch.randint(0, 8192, (1, 16)), 16 if quick else 32
    prefill = torch.randint(0, 8192, (1, 128))

    def timings():
        with torch.no_grad():
            decode = time_callable("decode", lambda: model.generate(prompt, new_tokens, temperature=0.0),
                                   repeat=3, warmup=1).seconds
            pre = time_callable("prefill", lambda: model(prefill), repeat=3, warmup=1).seconds
        return decode, pre

    dense_decode, dense_prefill = timings()
    apply_sparse24(model, masks)
    sparse_decode, sparse_prefill = timings()
    return [{"model": f"llama d=2048 L={config.n_layer}", "what": "decode tokens/s", "dense": new_tokens / dense_decode,
             "sparse24": new_tokens / sparse_decode, "speedup": dense_decode / sparse_decode},
            {"model": f"llama d=2048 L={config.n_layer}", "what": "prefill 128 tokens/s", "dense": 128 / dense_prefill,
             "sparse24": 128 / sparse_prefill, "speedup": dense_prefill / sparse_prefill}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the GEMM rows as JSON lines here")
    parser.add_argument("--model-only", action="store_true", help="only the whole-model decode/prefill rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, "
          f"sparse24 paths: {', '.join(torch.ops.fastlm.sparse24_cpu_kernels())}")
    if not args.model_only:
        print_table(measure(args.quick, args.repeat), json_path=args.json)
        print()
    print_table(measure_model(args.quick))


if __name__ == "__main__":
    main()
