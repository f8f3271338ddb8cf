"""Where a CPU training step's time goes: torch.profiler by op over a few steps, fp32 against bf16.

The model and loop are train_throughput's (fastlm.bench.suites.train_throughput): fastlm's GPT,
AdamW, torch.autocast for bf16. Prints, per precision, the ops' self CPU time per step (top --top)
and a grouping into GEMMs, attention, casts, the loss, the optimizer and the rest.

    python benchmarks/train_profile.py --threads 1        # the 6-layer, width-384 LLaMA of issue 21

Where the time goes (issue 21's model: 6 layers, width 384, 6 heads (MHA), context 256, vocab 8192,
batch 8; 1 thread; 3 profiled steps after 2 warm-up; 2026-12-03, before the linear_cross_entropy
fix below). The machine was shared (load average 8-10 on 2 cores): absolute times are inflated
and drift between the two runs, so read the shares within a run, not fp32 against bf16.

    share of self CPU time     fp32      bf16
    GEMMs (aten::mm)           87 %      62 %
    attention (fwd + bwd)       5 %      15 %   fastlm::attention_bwd and its autograd node
    other (views, adds, ...)    3 %       7 %
    optimizer (torch AdamW)     1 %       4 %   for-loop AdamW: on CPU torch defaults to neither
                                                foreach nor fused (39 params x ~8 ops)
    activations (gated SiLU)    1 %       3 %
    casts (aten::copy_)         0 %       3 %   318 copies a step
    loss (cross-entropy)        2 %       2 %
    RoPE                        1 %       2 %
    norms                       1 %       2 %

What it says:
- bf16 makes the GEMMs faster but nothing else: attention, RoPE, norms, the gated activation and
  the optimizer compute in fp32 in both, so their share grows from ~13 % to ~38 % of the step; the
  attention kernels (csrc, fp32 math) alone are 15 %. That, not the casts, caps bf16 MFU.
- Casts: the autocast-style casts of fastlm.nn.Linear (input and fp32 master weight to bf16 in
  the forward, the gradients back in the backward) are ~3 %. Most of them are small; the costly
  ones were the (vocab, d) = (8192, 384) copies around the fused LM head + loss: the head's weight
  cast to bf16, then its fp32-accumulated gradient rounded to bf16 and converted back to fp32 by
  autograd (two (V, d) copies and a lossy round trip). Fixed: fastlm.ops.linear_cross_entropy
  now takes the fp32 weight and casts it inside, returning the fp32 gradient as is.
- Large fresh temporaries ((V, d) buffers, 12 MiB) are mmapped by glibc each step: their first
  touch (page faults) shows as 5-10 ms copies/fills where a warm copy takes 0.6 ms.
- fastlm's bf16 linears (fastlm.ops.matmul, C++) trained slower than torch.nn.Linear in the same
  model in one run (455 against 535 tokens/s: `--impls fastlm,torch_linear`); a question for the
  C++ GEMM path (csrc/cpu/matmul.cpp).
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
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for precision in args.precision.split(","):
        profile(args, precision)


if __name__ == "__main__":
    main()
