"""Fused training ops against the eager PyTorch they replace, same inputs, same run; and the peak
memory of the fused linear cross-entropy against an unfused head + loss (HF's eager recipe).

Speed rows (forward + backward): rope vs HF's q*cos + rotate_half(q)*sin; swiglu / geglu vs
act(gate) * up; cross_entropy vs F.cross_entropy(logits.float()); linear_cross_entropy vs
F.linear + F.cross_entropy(logits.float()). Memory rows: each point runs in a fresh child process;
on CPU the peak is the growth of the peak resident set size (VmHWM, reset through
/proc/self/clear_refs just before the pass) over the resident set then (inputs and weights already
allocated); on CUDA the growth of torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import subprocess
import sys

import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import compare, time_callable

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _cases(device, dtype, quick):
    """(name, fastlm fn, eager fn, inputs needing grads, output grads builder)."""
    b, t, h, hkv, d = (2, 512, 16, 4, 128) if not quick else (1, 256, 8, 2, 64)
    q = torch.randn(b, h, t, d, device=device, dtype=dtype, requires_grad=True)  # HF layout
    k = torch.randn(b, hkv, t, d, device=device, dtype=dtype, requires_grad=True)
    angles = torch.randn(t, d // 2, device=device)
    cos, sin = angles.cos(), angles.sin()
    cos_full, sin_full = torch.cat((cos, cos), -1).to(dtype), torch.cat((sin, sin), -1).to(dtype)
    yield ("rope", lambda: ops.rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin),
           lambda: (q * cos_full + _rotate_half(q) * sin_full, k * cos_full + _rotate_half(k) * sin_full), (q, k))

    rows, ff = (4096, 2816) if not quick else (1024, 1408)
    gate = torch.randn(rows, ff, device=device, dtype=dtype, requires_grad=True)
    up = torch.randn(rows, ff, device=device, dtype=dtype, requires_grad=True)
    yield "swiglu", lambda: ops.swiglu(gate, up), lambda: F.silu(gate) * up, (gate, up)
    yield "geglu_tanh", lambda: ops.geglu(gate, up, "tanh"), lambda: F.gelu(gate, approximate="tanh") * up, (gate, up)

    n, v, hidden = (2048, 32768, 512) if not quick else (512, 32768, 256)
    logits = torch.randn(n, v, device=device, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, v, (n,), device=device)
    yield ("cross_entropy", lambda: ops.cross_entropy(logits, labels),
           lambda: F.cross_entropy(logits.float(), labels), (logits,))
    x = torch.randn(n, hidden, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(v, hidden, device=device, dtype=dtype) / hidden ** 0.5).requires_grad_()
    yield ("linear_cross_entropy", lambda: ops.linear_cross_entropy(x, w, labels),
           lambda: F.cross_entropy(F.linear(x, w).float(), labels), (x, w))


def _fwd_bwd(fn, inputs):
    def run():
        out = fn()
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs])

    return run


def measure_speed(options: Options, dtype: str | None = None) -> list[dict]:
    device = options.device
    dtype_name = dtype or ("bf16" if device == "cuda" else "fp32")
    sync = device if device == "cuda" else None
    rows = []
    for name, ours, eager, inputs in _cases(device, DTYPES[dtype_name], options.quick):
        a = time_callable("fastlm", _fwd_bwd(ours, inputs), warmup=1, repeat=options.repeats(5), device=sync)
        base = time_callable("eager", _fwd_bwd(eager, inputs), warmup=1, repeat=options.repeats(5), device=sync)
        rows.append({"case": f"{name} fwd+bwd {dtype_name}", "fastlm_ms": a.seconds * 1e3,
                     "eager_ms": base.seconds * 1e3, "speedup": compare(a, base)})
    return rows


_CHILD = """
import sys, torch, torch.nn.functional as F
import fastlm.ops as ops
impl, device, dtype = sys.argv[1], sys.argv[5], sys.argv[6]
n, v, d = (int(a) for a in sys.argv[2:5])
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
x = torch.randn(n, d, device=device, dtype=dtype, requires_grad=True)
w = (torch.randn(v, d, device=device, dtype=dtype) / d ** 0.5).requires_grad_()
labels = torch.randint(0, v, (n,), device=device)
def status_kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # resets the peak resident set (VmHWM) to the current one
base = status_kb("VmRSS")
if device == "cuda":
    torch.cuda.synchronize(); start = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
if impl == "fastlm":
    loss = ops.linear_cross_entropy(x, w, labels)
else:  # what a Hugging Face causal LM does: logits from the head, then the loss on logits.float()
    loss = F.cross_entropy(F.linear(x, w).float(), labels)
loss.backward()
if device == "cuda":
    print((torch.cuda.max_memory_allocated() - start) / 2**20)
else:
    print((status_kb("VmHWM") - base) / 1024)
"""


def peak_mb(impl: str, n: int, v: int, d: int, device: str, dtype: str) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, impl, str(n), str(v), str(d), device, dtype],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"linear cross-entropy memory child ({impl}) failed: {out.stderr.strip()[-500:]}")
    return float(out.stdout.strip().splitlines()[-1])


def measure_memory(options: Options, tokens=None, vocab: int = 32768, hidden: int = 1024,
                   dtype: str | None = None) -> list[dict]:
    device = options.device
    dtype = dtype or ("bf16" if device == "cuda" else "fp32")
    tokens = tokens or ([1024, 4096] if options.quick else [1024, 2048, 4096, 8192])
    elem = 2 if dtype == "bf16" else 4
    rows = []
    for n in tokens:
        ours = peak_mb("fastlm", n, vocab, hidden, device, dtype)
        eager = peak_mb("eager", n, vocab, hidden, device, dtype)
        rows.append({"case": f"linear_cross_entropy memory N={n} V={vocab} {dtype}", "tokens": n,
                     "logits_MB": n * vocab * elem / 2**20, "fastlm_MB": ours, "eager_MB": eager,
                     "memory_ratio": ours / eager if eager > 0 else None})
    return rows


def measure(options: Options) -> list[dict]:
    return measure_speed(options) + measure_memory(options)


SUITE = Suite(name="fused_ops", baseline="eager PyTorch (HF-style RoPE, act(gate)*up, F.cross_entropy on fp32 logits)",
              run=measure)
