"""Where a CPU training step's time goes: torch.profiler by op over a few steps, fp32 against bf16.

The model and loop are train_throughput's (fastlm.bench.suites.train_throughput): fastlm's GPT,
AdamW, torch.autocast for bf16. Prints, per precision, the ops' self CPU time per step (top --top)
and a grouping into GEMMs, attention, casts, the loss, the optimizer and the rest.

    python benchmarks/train_profile.py --threads 1        # the 6-layer, width-384 LLaMA of issue 21

Where the time goes (issue 21's model: 6 layers, width 384, 6 heads (MHA), context 256, vocab 8192,
batch 8; 1 thread; FASTLM_CPU_GEMM16=native; 3 profiled steps after 2 warm-up; 2026-12-03, after the
linear_cross_entropy fix below; the machine is shared, load average ~1.5 on 2 cores during this run;
an earlier run at load 8-10 gave the same shares at 3-5x the times):

    self CPU time per step          fp32             bf16
    total (under the profiler)      1868 ms (100 %)   636 ms (100 %)   1097 / 3219 tokens/s
    GEMMs (aten::mm, addmm)         1633 ms  (88 %)   385 ms  (62 %)   104 / 447 GFLOP/s on 6N x 2048
    attention (fwd + bwd)             87 ms   (5 %)    94 ms  (15 %)   fastlm::attention_* (C++, fp32 math)
    other (divs, adds, views, ...)    42 ms   (2 %)    40 ms   (6 %)
    gated SiLU (fwd + bwd)            24 ms   (1 %)    23 ms   (4 %)
    optimizer (torch AdamW)           20 ms   (1 %)    21 ms   (3 %)   for-loop AdamW: on CPU torch defaults
                                                                       to neither foreach nor fused
    casts (aten::copy_)                1 ms   (0 %)    21 ms   (3 %)   316 copies a step
    loss (cross-entropy kernels)      22 ms   (1 %)    16 ms   (3 %)
    RoPE                              11 ms   (1 %)    10 ms   (2 %)
    norms                             12 ms   (1 %)     8 ms   (1 %)

torch's best GEMM on the model's shapes in the same minutes: ~105-113 GFLOP/s fp32, ~480-500 GFLOP/s
bf16 (1 thread), so the GEMMs themselves run near that peak in both precisions.

What it says:
- bf16 makes the GEMMs 4.2x faster and nothing else: attention, RoPE, norms, the gated activation,
  the loss and the optimizer take the same milliseconds in both, so their share grows from 12 % to
  38 % of the step. The attention kernels (csrc, fp32 math) alone are 15 %. That, not the casts,
  caps bf16 MFU: 75 % of a ~490 GFLOP/s peak needs a step of ~500 ms, i.e. ~140 of the ~250 non-GEMM
  ms gone (bf16 attention kernels, a fused/foreach CPU AdamW, norms and activations that emit bf16
  so the Linears' input casts disappear).
- Casts: the autocast-style casts of fastlm.nn.Linear (input and fp32 master weight to bf16 in
  the forward, the gradients back in the backward) are ~3 %. Most of them are small; the costly
  ones were the (vocab, d) = (8192, 384) copies around the fused LM head + loss: the head's weight
  cast to bf16, then its fp32-accumulated gradient rounded to bf16 and converted back to fp32 by
  autograd (two (V, d) copies and a lossy round trip). Fixed: fastlm.ops.linear_cross_entropy
  now takes the fp32 weight and casts it inside, returning the fp32 gradient as is. Measured on the
  whole bf16 step (train_throughput's worker, FASTLM_CPU_GEMM16=native, before/after interleaved,
  4 runs each, load ~2.7): 3039-3088 -> 3036-3233 tokens/s (best 3088 -> 3233), MFU 55-58 % ->
  56-59 % of the same run's bf16 peak: within the machine's noise, a small gain at most; the
  point is the unrounded gradient and two fewer (V, d) copies.
- Large fresh temporaries ((V, d) buffers, 12 MiB) are mmapped by glibc each step: their first
  touch (page faults) shows as 5-10 ms copies/fills where a warm copy takes 0.6 ms.
- fastlm's 16-bit CPU GEMM path (native bf16 or converted fp32 panels) is chosen by one timing at
  first use (csrc/cpu/matmul.cpp, native_is_faster, a 2x margin). On this loaded machine it picked
  fp32 panels in some processes although the CPU has AVX512-BF16 (seen in a profile of the LM head:
  fp32 addmm_ where bf16 mm was expected): bf16 runs of the same code then come out ~1.5x slower
  (2000 against 3100 tokens/s), and fastlm's bf16 linears trained slower than torch.nn.Linear in
  one run (455 against 535 tokens/s, `--impls fastlm,torch_linear`). train_throughput now records
  `cpu_gemm16_native` per bf16 run; FASTLM_CPU_GEMM16=native pins the path. A CPU-feature check
  (AMX / AVX512-BF16) would make the choice stable: a question for csrc.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

# op-name substrings -> group (first match wins; matched against the lower-cased op name)
GROUPS = [("optimizer", ("adamw", "_foreach", "optimizer.step", "lerp", "addcdiv", "sqrt")),
          ("loss", ("cross_entropy", "nll_loss", "log_softmax")),
          ("attention", ("attention", "sdpa", "flash")),
          ("gemm", ("matmul", "mm", "linear", "gemm", "addmm", "bmm")),
          ("casts", ("to_copy", "aten::to", "copy_", "_autocast", "cast")),
          ("norms", ("rms_norm", "layer_norm")),
          ("rope", ("rope", "rotary")),
          ("activations", ("silu", "gelu", "gated", "swiglu"))]


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def profile(args, precision: str) -> None:
    from fastlm.models import GPT, GPTConfig

    cfg = GPTConfig(family="llama", vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                    n_kv_head=args.n_kv_head, d_model=args.d_model, max_seq_len=args.seq_len).resolved()
    torch.manual_seed(0)
    model = GPT(cfg).train()
    if args.optimizer == "fastlm":  # the trainer's AdamW on the CPU ([train] optimizer = "adamw")
        from fastlm.optim import AdamW

        opt = AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len))
    bf16 = precision == "bf16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, labels=x, return_logits=False)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - t0) / args.steps
    events = prof.key_averages()
    print(f"\n== {precision}: {wall * 1e3:.0f} ms/step under the profiler "
          f"({args.batch_size * args.seq_len / wall:.0f} tok/s) ==")
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / args.steps / 1e3
    groups = defaultdict(float)
    for e in events:
        groups[group_of(e.key)] += e.self_cpu_time_total / args.steps / 1e3
    print(f"{'op':55} {'ms/step':>8} {'%':>6} {'calls':>6}")
    for e in rows[:args.top]:
        ms = e.self_cpu_time_total / args.steps / 1e3
        print(f"{e.key[:55]:55} {ms:8.1f} {ms / total:6.1%} {e.count // args.steps:6}")
    print("by group: " + ", ".join(f"{g} {ms:.0f} ms ({ms / total:.0%})"
                                   for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-kv-head", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--optimizer", default="fastlm", choices=["fastlm", "torch"],
                   help="fastlm.optim.AdamW (the trainer's on the CPU) or torch.optim.AdamW")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for precision in args.precision.split(","):
        profile(args, precision)


if __name__ == "__main__":
    main()
