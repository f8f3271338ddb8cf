"""Fused attention: fastlm (C++ on CPU, Triton on CUDA) against torch SDPA, same inputs, same run.

FLOPs follow FlashAttention's convention: forward 4*B*S^2*H*D (halved when causal), backward 2.5x
the forward. Tokens per batch stay fixed (B*S), as in FlashAttention's benchmark. SDPA runs its
flash path on CPU (fp32/bf16, no mask tensor) and its flash / cuDNN backends on CUDA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import compare, time_callable

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def flops(b, s, h, d, causal, mode):
    f = 4 * b * s * s * h * d / (2 if causal else 1)
    return f if mode == "fwd" else 3.5 * f  # fwd + bwd (2.5x fwd)


def _sdpa_context(device):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device == "cuda":
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION])
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

    sync = device if device == "cuda" else None
    a = time_callable("fastlm", ours, warmup=1, repeat=repeat, device=sync)
    base = time_callable("sdpa", sdpa, warmup=1, repeat=repeat, device=sync)
    f = flops(b, s, h, d, causal, mode)
    dtype_name = str(dtype).split(".")[-1]
    return {"case": f"{mode} S={s} D={d} {'causal' if causal else 'full'} {dtype_name}", "mode": mode,
            "S": s, "B": b, "H": h, "D": d, "causal": causal,
            "fastlm_ms": a.seconds * 1e3, "sdpa_ms": base.seconds * 1e3,
            "fastlm_TFLOPs": f / a.seconds / 1e12, "sdpa_TFLOPs": f / base.seconds / 1e12,
            "speedup": compare(a, base)}


def measure(options: Options, dtype: str | None = None, seqlens=None, head_dims=(64, 128), tokens=None,
            heads_dim=None, modes=("fwd", "fwd_bwd"), causal=(False, True)) -> list[dict]:
    cuda = options.device == "cuda"
    dtype_t = DTYPES[dtype or ("bf16" if cuda else "fp32")]
    if seqlens is None:
        seqlens = ([512, 1024, 2048, 4096, 8192] if cuda else [512, 1024, 2048])
        seqlens = seqlens[:2] if options.quick else seqlens
    if options.quick:
        head_dims = head_dims[:1]
    tokens = tokens or (16384 if cuda else 4096)
    hd_total = heads_dim or (2048 if cuda else 512)
    rows = []
    for d in head_dims:
        for s in seqlens:
            b, h = max(1, tokens // s), max(1, hd_total // d)
            for is_causal in causal:
                for mode in modes:
                    rows.append(run_case(b, s, h, d, is_causal, dtype_t, options.device, mode, options.repeats(3)))
    return rows


SUITE = Suite(name="attention", baseline="torch scaled_dot_product_attention (flash backend)", run=measure)
