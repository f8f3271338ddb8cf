"""Fused attention: fastlm (C++ on CPU, Triton on CUDA) against torch SDPA, same inputs, same run.

    python benchmarks/attention.py                              # CPU, fp32, S = 512..2048, a few minutes
    python benchmarks/attention.py --seqlens 512 1024 2048 4096 8192 --dtype bf16
    python benchmarks/attention.py --device cuda --dtype bf16 --head-dims 128 --seqlens 512 1024 2048 4096 8192
    python benchmarks/attention.py --memory                     # peak memory vs S (CPU: fastlm vs SDPA's math path)

Forward and forward+backward time and TFLOP/s with FlashAttention's FLOP convention (forward
4*B*S^2*H*D, halved when causal; backward 2.5x the forward), and the speedup over SDPA (>1 = fastlm
faster). The tokens per batch stay fixed (B*S = --tokens), as in FlashAttention's benchmark.
On CPU SDPA runs its flash path (fp32/bf16, no mask tensor); on CUDA its flash / cuDNN backends.
"""
from __future__ import annotations

import argparse
import resource
import sys

import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.bench import print_table, time_callable

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def flops(b, s, h, d, causal, mode):
    f = 4 * b * s * s * h * d / (2 if causal else 1)
    return f if mode == "fwd" else 3.5 * f  # fwd + bwd (2.5x fwd)


def _sdpa_context(device):
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION])
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def run_case(b, s, h, d, causal, dtype, device, mode, repeat):
    q, k, v = (torch.randn(b, s, h, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    qs, ks, vs = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))  # SDPA's layout
    g = torch.randn(b, s, h, d, device=device, dtype=dtype)
    gs = g.transpose(1, 2).contiguous()

    def ours():
        if mode == "fwd":
            with torch.no_grad():
                ops.attention(q, k, v, causal=causal)
        else:
            torch.autograd.grad(ops.attention(q, k, v, causal=causal), (q, k, v), g)

    def sdpa():
        with _sdpa_context(device):
            if mode == "fwd":
                with torch.no_grad():
                    F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)
            else:
                torch.autograd.grad(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal), (qs, ks, vs), gs)

    dev = device if device == "cuda" else None
    a = time_callable("fastlm", ours, warmup=1, repeat=repeat, device=dev)
    base = time_callable("sdpa", sdpa, warmup=1, repeat=repeat, device=dev)
    f = flops(b, s, h, d, causal, mode)
    return {"mode": mode, "S": s, "B": b, "H": h, "D": d, "causal": causal,
            "fastlm_ms": a.seconds * 1e3, "sdpa_ms": base.seconds * 1e3,
            "fastlm_TFLOPs": f / a.seconds / 1e12, "sdpa_TFLOPs": f / base.seconds / 1e12,
            "speedup": base.seconds / a.seconds}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_case(impl, s, h, d, dtype, device):
    """Peak memory of one forward+backward at sequence length s, measured in a fresh child process on CPU."""
    import subprocess

    code = (
        "import torch, resource, torch.nn.functional as F, fastlm.ops as ops\n"
        f"q,k,v=(torch.randn(1,{s},{h},{d},dtype=torch.{str(dtype).split('.')[-1]},device='{device}',"
        "requires_grad=True) for _ in range(3))\n"
        "base=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "if torch.cuda.is_available() and q.is_cuda: torch.cuda.reset_peak_memory_stats()\n"
        + ("o=ops.attention(q,k,v,causal=True)\n" if impl == "fastlm" else
           "from torch.nn.attention import SDPBackend, sdpa_kernel\n"
           "with sdpa_kernel([SDPBackend.MATH]):\n"
           "    o=F.scaled_dot_product_attention(q.transpose(1,2),k.transpose(1,2),v.transpose(1,2),is_causal=True)\n")
        + "o.sum().backward()\n"
        "peak=(torch.cuda.max_memory_allocated()/2**20 if q.is_cuda else "
        "(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss-base)/1024)\n"
        "print(peak)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--seqlens", type=int, nargs="+", default=None,
                        help="default: 512 1024 2048 on CPU, 512 .. 8192 on CUDA")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--tokens", type=int, default=None, help="B*S per batch (default 4096 CPU, 16384 CUDA)")
    parser.add_argument("--heads-dim", type=int, default=None, help="H*D (default 512 CPU, 2048 CUDA)")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    parser.add_argument("--causal", nargs="+", default=["false", "true"], choices=["false", "true"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="peak memory of fwd+bwd vs S instead of speed")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    seqlens = args.seqlens or ([512, 1024, 2048, 4096, 8192] if cuda else [512, 1024, 2048])
    tokens = args.tokens or (16384 if cuda else 4096)
    hd_total = args.heads_dim or (2048 if cuda else 512)

    if args.memory:
        rows = []
        for s in seqlens:
            row = {"S": s, "H": 8, "D": 64, "fastlm_MB": memory_case("fastlm", s, 8, 64, dtype, args.device)}
            if not cuda or s <= 8192:
                row["sdpa_math_MB"] = memory_case("sdpa_math", s, 8, 64, dtype, args.device)
            rows.append(row)
        print_table(rows, json_path=args.json)
        return

    rows = []
    for d in args.head_dims:
        for s in seqlens:
            b = max(1, tokens // s)
            h = max(1, hd_total // d)
            for causal in (c == "true" for c in args.causal):
                for mode in args.modes:
                    rows.append(run_case(b, s, h, d, causal, dtype, args.device, mode, args.repeat))
                    r = rows[-1]
                    print(f"{mode:8s} S={s:5d} D={d:3d} causal={causal!s:5s}  fastlm {r['fastlm_ms']:8.1f} ms  "
                          f"sdpa {r['sdpa_ms']:8.1f} ms  speedup {r['speedup']:.2f}", file=sys.stderr)
    print_table(rows, json_path=args.json)


if __name__ == "__main__":
    main()
