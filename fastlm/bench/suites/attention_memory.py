"""Peak memory of one attention forward+backward against sequence length: fastlm vs SDPA's math path.

Each point runs in a fresh child process: on CPU the peak is the growth of the maximum resident set
size over the resident set just before the pass, on CUDA torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import subprocess
import sys

from fastlm.bench.registry import Options, Suite

_CHILD = """
import resource, sys, torch, torch.nn.functional as F
import fastlm.ops as ops
s, impl, device = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dtype = torch.float32 if device == "cpu" else torch.bfloat16


def run(q, k, v):
    if impl == "fastlm":
        return ops.attention(q, k, v, causal=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True)


# A small pass first: one-time set-up (libraries, thread pools) must not count as the pass's memory.
run(*(torch.randn(1, 16, 8, 64, dtype=dtype, device=device, requires_grad=True) for _ in range(3))).sum().backward()
q, k, v = (torch.randn(1, s, 8, 64, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
# the resident set now (not the high-water mark, which import-time allocations may have set)
base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
run(q, k, v).sum().backward()
if device == "cuda":
    print(torch.cuda.max_memory_allocated() / 2**20)
else:
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def peak_mb(impl: str, s: int, device: str) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(s), impl, device], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"attention memory child ({impl}, S={s}) failed: {out.stderr.strip()[-500:]}")
    return float(out.stdout.strip().splitlines()[-1])


def measure(options: Options, seqlens=None) -> list[dict]:
    seqlens = seqlens or ([1024, 2048, 4096] if options.quick else [1024, 2048, 4096, 8192])
    rows = []
    for s in seqlens:
        ours, math = peak_mb("fastlm", s, options.device), peak_mb("sdpa_math", s, options.device)
        rows.append({"case": f"S={s}", "S": s, "fastlm_MB": ours, "sdpa_math_MB": math,
                     "memory_ratio": ours / math if math > 0 else None})
    return rows


SUITE = Suite(name="attention_memory", baseline="SDPA math path (materializes S x S scores)", run=measure,
              ratio="memory_ratio", plot_x="S", plot_y=["fastlm_MB", "sdpa_math_MB"])
