"""Where a CPU training step's time goes: torch.profiler by op over a few steps, fp32 against bf16.

The model and loop are train_throughput's (fastlm.bench.suites.train_throughput): fastlm's GPT,
AdamW, torch.autocast for bf16. Prints, per precision, the ops' self CPU time per step (top --top)
and a grouping into GEMMs, attention, casts, the loss, the optimizer and the rest.

    python benchmarks/train_profile.py --threads 1        # the 6-layer, width-384 LLaMA of issue 21

Where the time goes (issue 21's model: 6 layers, width 384, 6 heads (MHA), context 256, vocab 8192,
batch 8; 1 thread; FASTLM_CPU_GEMM16=native; fastlm.optim.AdamW (the trainer's on the CPU; --optimizer
torch for torch's for-loop AdamW, which took ~20 ms of these steps); profiled steps after 2 warm-up;
2026-12-03; the machine is shared (2 cores, load average 2-6 during these runs): milliseconds move
with the load by up to 2x from run to run, the shares much less. bf16 before = main at 82ea4c7, after =
branch bf16ops (the changes listed below), same minutes:

    self CPU time per step          fp32 (after)       bf16 before       bf16 after
    total (under the profiler)      1697 ms (100 %)    858 ms (100 %)    687 ms (100 %)
      tokens/s under the profiler   1207               2387              2981
    GEMMs (aten::mm, addmm)         1250 ms  (75 %)    549 ms  (65 %)    454 ms  (67 %)
    attention (fwd + bwd)            142 ms   (9 %)    131 ms  (16 %)     99 ms  (15 %)  C++, fp32 math
    casts, copies (aten::copy_)      109 ms   (7 %)     29 ms   (3 %)     32 ms   (5 %)  fp32: see below
    other (adds, cat, fills, ...)     51 ms   (3 %)     37 ms   (4 %)     24 ms   (4 %)
    gated SiLU (fwd + bwd)            36 ms   (2 %)     34 ms   (4 %)     17 ms   (3 %)
    loss (cross-entropy kernels)      30 ms   (2 %)     25 ms   (3 %)     24 ms   (3 %)
    norms                             17 ms   (1 %)     15 ms   (2 %)      9 ms   (1 %)
    RoPE                              15 ms   (1 %)     12 ms   (1 %)      8 ms   (1 %)
    optimizer (fastlm AdamW)          19 ms   (1 %)     10 ms   (1 %)      9 ms   (1 %)

(bf16 before and after ran one after the other at load ~3-4: the before run got the busier minute,
see its GEMMs; compare shares, and the lock-step figures below for the whole step.)

What changed for bf16 (branch bf16ops, issue 21), each checked against float64 references in tests:
- The 16-bit GEMM path is a CPU-feature rule (csrc/cpu/matmul.cpp): bf16 runs oneDNN's native bf16 GEMM
  where the CPU has AMX-BF16 or AVX512-BF16, a timing decides elsewhere (and for fp16), FASTLM_CPU_GEMM16
  still forces. Before, one timing per process sometimes picked fp32 panels under load on this
  AVX512-BF16 CPU (that process then trained ~1.5x slower). fastlm.ops.matmul.cpu_gemm16_choice says
  how the path was chosen; train_throughput records it per bf16 run (`cpu_gemm16`).
- Pre-norm blocks' RMSNorms emit the autocast dtype (RMSNorm(autocast_output=True), rms_norm(out_dtype=)):
  the Linears after them take bf16 as it is, and the norm's backward reads the bf16 gradient directly:
  24 (2048, 384) casts a step gone. Whole step, in-process A/B (variants alternating step by step, 20
  steps each, load ~2.7): 3523 -> 3655 tokens/s best (MFU 0.639 -> 0.663), median 2967 -> 3095.
- linear_cross_entropy's fp32 weight gradient: the first chunk writes it (no zero fill of a fresh
  (V, d) buffer) and 16-bit chunk products are converted into one reused fp32 buffer (a mixed-dtype
  add_ made a fresh 12 MiB fp32 copy per chunk, page faults included): same A/B, median 3095 -> 3160,
  best unchanged (3655 / 3641).
- RoPE: one kernel call per token (all heads share the angle, bf16 converted in registers): 0.23 ->
  0.09 ms per q or k (8x256x6x64 bf16, strided view of qkv), 24 calls a step.
- cross_entropy_bwd on bf16 logits reads and rounds in registers: 1.46 -> 1.22 ms per (512, 8192) chunk.
- SwiGLU on bf16 reads and writes in registers: backward 1.19 -> 1.03 ms, forward 0.76 -> 0.71 ms per
  (2048, 1024) halves (the kernels are compute-bound: fast_exp and a division per element).
- `fastlm bench train_throughput` steps every implementation with the trainer's AdamW.
Whole step, benchmarks/train_lockstep.py (train_throughput's loop; separate worker runs one after another
disagreed by up to 2x at this load): four processes, main's tree and this branch's, each with torch's
and fastlm's AdamW, alive together and stepping in turn (rotating order: the load hits all alike),
FASTLM_CPU_GEMM16=native, best (median) tokens/s over the steps, MFU against the peak one of them
measures right after; load average 3-5:

    bf16, 12 steps each    main 3052 (1839) -> branch 3394 (1881) torch AdamW; 3262 (2047) -> 3562 (2039)
                           fastlm AdamW; MFU (best) 0.536 -> 0.596 and 0.573 -> 0.626 (peak 510 GFLOP/s)
    bf16, 20 steps each    main 3461 (2266) -> branch 3451 (2241); 3445 (2437) -> 3563 (2239); MFU
                           0.617 -> 0.615 and 0.614 -> 0.635 (peak 503)
    fp32, 10 steps each    main 2121 (2025) -> branch 2108 (2025); 2209 (2086) -> 2152 (2091); MFU
                           0.738 -> 0.734 and 0.769 -> 0.749 (peak 258)

So bf16 MFU is ~0.60-0.64 of the same run's bf16 peak after these changes (0.54-0.62 before: the gain,
0-10 % of the step, is within this machine's noise for a single run), and fp32 is unchanged.

`fastlm bench train_throughput` (its CPU shapes: 4 layers, width 256, vocab 4096, batch 8x256; 1 thread,
FASTLM_CPU_GEMM16=native), main and this branch alternating, two runs each, load average 1.1-2.1 (the
suite flagged the busier runs); fastlm's MFU against each run's own peak, tokens/s in brackets. On the
branch the suite steps with the trainer's AdamW (fastlm.optim.AdamW), on main with torch's for-loop one:
part of the gain is that, and it is what `fastlm train` runs:

                  main                           branch bf16ops
    llama bf16    0.486 (8739), 0.494 (8536)     0.549 (9725), 0.544 (9835)
    llama fp32    0.611 (5574), 0.621 (5416)     0.630 (5453), 0.621 (5445)
    gpt2 bf16     0.504 (9223), 0.509 (9100)     0.490 (8642), 0.544 (9506)
    gpt2 fp32     0.604 (5426), 0.605 (5169)     0.622 (5344), 0.612 (5419)

Branch bf16more (after integ4: bf16 attention kernels, the changes above), 2026-12-03, same machine:
- fastlm._malloc.tune_malloc (the trainer on the CPU, the bench workers, this script; FASTLM_MALLOC_TUNE=0
  opts out): glibc M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 256 MiB, so the step's large buffers are
  reused from the heap instead of being faulted in again every step.
- Weight casts (checked, nothing repeated): each Linear's fp32 master weight is cast to bf16 once in the
  forward and its bf16 gradient back once in the backward (24 + 24 a step for this model), the head's
  weight once inside linear_cross_entropy (its fp32 gradient needs no cast); no activation checkpointing
  by default, the head is not tied here (a tied head also casts once, inside the loss op).
- ops.gated_packed: the MLP's SwiGLU takes fc's [gate | up] output whole; its backward writes h's
  gradient as one tensor (no cat of the halves): MLP activation fwd+bwd per layer (2048 x 2048 bf16,
  1 thread, interleaved best of 100) 2.26 -> 1.87 ms.
- ops.add_rms_norm: x + attn(...) and norm2 in one op (bf16 branch converted in the rows, no fp32
  temporary; one backward pass gives the residual gradient and the branch's bf16 one): add + norm
  fwd+bwd at (8, 256, 384) 1.20 -> 0.91 ms (best of 200, 1 thread). aten::copy_ 97 -> 85 calls a step.
Whole step, train_lockstep (load average 1.3-2.1; CI was running part of the time), MFU best (median):

    bf16, 1 thread    integ4 0.765 (0.698) -> branch 0.777 (0.733), 30 steps each
    bf16, 2 threads   integ4 0.698 (0.653) -> branch 0.732 (0.708), 30 steps each (peak 993 GFLOP/s)
    fp32, 1 thread    integ4 0.755 (0.717) -> branch 0.808 (0.786), 12 steps each (load 4.2)
    fp32, 2 threads   integ4 0.716 (0.692) -> branch 0.740 (0.733), 12 steps each
    same branch tree, malloc tuned vs FASTLM_MALLOC_TUNE=0: bf16 1 thread 0.760 (0.709) -> 0.770 (0.752);
                      bf16 2 threads 0.731 (0.674) -> 0.764 (0.726)
    both trees untuned (the two kernel changes alone): 0.744 (0.715) -> 0.745 (0.708): within noise
benchmarks/train_throughput.py (the 2-thread command of issue 21, separate runs alternating): integ4
66.1 %, 61.5 % -> branch 72.0 %, 69.7 %. This script at 2 threads: 284 ms/step under the profiler
(integ4: 313), aten::mm 194 ms (71 %), attention 24, copy_ 8.2, adamw 7.2, loss 7.3, gated act 7.1.

What it says:
- bf16 makes the GEMMs 3-4x faster; they run at ~85 % of the peak the same process measures. MFU
  counts 6N + attention FLOPs (183.7 GFLOP a step here): at a ~490 GFLOP/s bf16 peak, 75 % MFU is a
  500 ms step. The GEMMs alone take ~400 ms of it, so everything else must fit in
  ~100 ms: attention (~95 ms, fp32 math in its kernels) alone fills that budget. 75 % needs bf16
  attention kernels (another helper's work) at ~30 ms AND the rest (~135 ms before this branch) cut to
  ~70 ms, or GEMMs closer to the peak.
- What is left outside the GEMMs and attention, by size: the gated activation (compute-bound on
  fast_exp + a division; storing the sigmoid from the forward in bf16 would trade 4 MB a layer for the
  backward's exp), the Linears' weight casts (fp32 master -> bf16 in the forward, the bf16 gradient ->
  fp32 in the backward: at::mm has no bf16 x bf16 -> fp32 output on the CPU, so both are needed), the
  residual adds (fp32 + bf16: a mixed add converts the bf16 operand into a fresh temporary; a fused
  add + RMSNorm would remove the pass), the cat of the qkv / [gate | up] gradients (split/chunk's
  backward), the loss kernels, and fresh (V, d) buffers whose first touch costs page faults (glibc
  returns freed 12 MiB blocks to the OS: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:
  glibc.malloc.trim_threshold=268435456 cut those copies/fills from ~25 to ~15 ms in one profile;
  THP_MEM_ALLOC_ENABLE=1 made them slower here).
- fp32: unchanged by these changes (the norms keep x's dtype without autocast; the loss's fp32 path only
  drops its zero fill). Its "copies" are not casts: fastlm's fp32 GEMM (fastlm::mm_f32 -> oneDNN through
  mkldnn::_linear_pointwise, csrc/cpu/gemm32.cpp) makes a contiguous copy of a transposed operand, e.g.
  the (2048, 2048) gradient of the weight-gradient GEMMs: ~105 ms (6 %) of an fp32 step. Passing the
  transposed operand to a matmul that takes strides (or using torch's BLAS for those shapes) would
  remove it; a question for the fp32 GEMM's owner.
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
    from fastlm._malloc import tune_malloc

    tune_malloc()  # as the trainer does on the CPU (FASTLM_MALLOC_TUNE=0 to profile without)
    if args.threads:
        torch.set_num_threads(args.threads)
    for precision in args.precision.split(","):
        profile(args, precision)


if __name__ == "__main__":
    main()
