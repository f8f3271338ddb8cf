"""Per-call overhead of fastlm's ops at decoding sizes (one token), against the torch call doing the same work.

    python benchmarks/op_overhead.py [--calls 20000]

Decoding a small model is a long run of tiny calls: their Python wrapper, autograd registration and
dispatch cost more than the arithmetic. Each row times one op on a single token (M = 1, width 384,
6 heads of 64), with torch.no_grad() as generation runs and, for matmul, with a weight that needs a
gradient (training); `overhead_us` is fastlm's time minus torch's. One thread; best of 5 rounds.
Run it on two checkouts to compare them (the script uses the public API only).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.bench import print_table

D, HEADS, HEAD_DIM = 384, 6, 64


def per_call_us(fn, calls: int) -> float:
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def cases():
    x, w, b = torch.randn(1, D), torch.randn(D, D) / D**0.5, torch.randn(D)
    wt, norm_w = w.t(), torch.ones(D)
    q = torch.randn(1, 1, HEADS, HEAD_DIM)
    cos, sin = torch.randn(1, HEAD_DIM // 2), torch.randn(1, HEAD_DIM // 2)
    gate, up = torch.randn(1, 4 * D), torch.randn(1, 4 * D)
    kv = torch.randn(1, 256, HEADS, HEAD_DIM)
    k_t, v_t = kv.transpose(1, 2), kv.transpose(1, 2)

    def torch_rope():
        x1, x2 = q[..., ::2], q[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)
    yield "matmul M=1", lambda: ops.matmul(x, wt, b), lambda: torch.addmm(b, x, wt)
    yield "rms_norm", lambda: ops.rms_norm(x, norm_w), lambda: F.rms_norm(x, (D,), norm_w, 1e-6)
    yield "rope", lambda: ops.rope(q, q, cos, sin), torch_rope
    yield "swiglu", lambda: ops.swiglu(gate, up), lambda: F.silu(gate) * up
    yield "attention 1 x 256", lambda: ops.attention(q, kv, kv, causal=False), \
        lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k_t, v_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with torch.no_grad():
        for name, ours, theirs in cases():
            a, b = per_call_us(ours, args.calls), per_call_us(theirs, args.calls)
            rows.append({"case": f"{name} (no_grad)", "fastlm_us": a, "torch_us": b, "overhead_us": a - b})
    x, w, b = torch.randn(1, D), (torch.randn(D, D) / D**0.5).requires_grad_(), torch.randn(D)
    a = per_call_us(lambda: ops.matmul(x, w.t(), b), args.calls)
    t = per_call_us(lambda: F.linear(x, w, b), args.calls)
    rows.append({"case": "matmul M=1 (weight needs grad)", "fastlm_us": a, "torch_us": t, "overhead_us": a - t})
    print_table(rows)


if __name__ == "__main__":
    main()
