"""Training throughput and peak memory: fastlm GPT vs Hugging Face transformers, same shape.

For each family (GPT-2, LLaMA) and precision (fp32, bf16 autocast), both implementations train
from the same initial weights (the HF model is fastlm's, converted with fastlm.models.to_hf) on
the same batches with the same AdamW. Each run is its own subprocess so the peak RSS is that
run's alone. Prints a table with the fastlm/HF ratios (tokens/s: higher is better; memory:
lower is better).

16-bit training on CPU: with both fp32 and bf16 measured, a second table gives each
implementation's bf16/fp32 tokens/s ratio (same run). fastlm's linears (fastlm.nn.Linear ->
fastlm.ops.matmul) compute bf16 in fp32 on the faster of the CPU's native bf16 GEMM and converted
fp32 panels; the `torch_linear` implementation is the same fastlm model with its linears turned
back into torch.nn.Linear (bf16 GEMMs by torch), the baseline. --gemm16 forces fastlm's CPU path;
--no-native-bf16 (ONEDNN_MAX_CPU_ISA=AVX2 in every run) makes torch's bf16 GEMM behave as on a CPU
without AVX512-BF16/AMX, the case where torch's bf16 training is many times slower than fp32.

    python benchmarks/train_throughput.py --quick
    python benchmarks/train_throughput.py --family llama --d-model 512 --n-layer 8 --steps 20
    python benchmarks/train_throughput.py --family gpt2 --impls fastlm,torch_linear --no-native-bf16 --threads 1
    python benchmarks/train_throughput.py --impls fastlm,fastlm_compiled --threads 1     # [train] compile

On a machine shared with other jobs, pass --threads 1: with more OpenMP threads than free cores,
a run can come out 10-20x slower than the same run a minute later (threads spin at barriers
waiting for a descheduled peer), which swamps the fastlm/HF difference.
A third table gives each run's model FLOPs utilisation: PaLM's 6N + 12 L H Q T FLOPs per token x
tokens/s over torch's best GEMM on the model's shapes in the run's dtype, measured in the same process
right after the training steps (fastlm.bench.roofline).
The runs themselves are fastlm.bench.suites.train_throughput (also `fastlm bench train_throughput`).
"""
from __future__ import annotations

import argparse
import json
import sys

from fastlm.bench.suites.train_throughput import IMPLS, spawn

QUICK = dict(d_model=128, n_layer=2, n_head=4, n_kv_head=2, vocab_size=2048, seq_len=128, batch_size=4,
             warmup=2, steps=8, repeats=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and few steps (about 2 minutes on 2 cores)")
    p.add_argument("--family", default="gpt2,llama", help="comma list of gpt2, llama")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-kv-head", type=int, default=4, help="llama only (GQA when < n_head)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--repeats", type=int, default=1, help="run each pair this many times, keep the best tokens/s")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--impls", default="fastlm,hf", help="comma list of fastlm, fastlm_compiled (blocks compiled "
                   "by torch.compile), torch_linear (fastlm with torch.nn.Linear), reference (fastlm on plain-PyTorch "
                   "ops), hf")
    p.add_argument("--gemm16", default=None, choices=["auto", "native", "fp32"],
                   help="FASTLM_CPU_GEMM16 for the runs (fastlm's 16-bit CPU GEMM path)")
    p.add_argument("--no-native-bf16", action="store_true",
                   help="ONEDNN_MAX_CPU_ISA=AVX2 in every run: torch's bf16 GEMM as on a CPU without native bf16")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    families = [f for f in args.family.split(",") if f]
    precisions = [p for p in args.precision.split(",") if p]
    for f in families:
        if f not in ("gpt2", "llama"):
            raise SystemExit(f"--family: unknown family {f!r} (expected gpt2, llama)")
    for p in precisions:
        if p not in ("fp32", "bf16"):
            raise SystemExit(f"--precision: unknown precision {p!r} (expected fp32, bf16)")
    impls = [i for i in args.impls.split(",") if i]
    for i in impls:
        if i not in IMPLS:
            raise SystemExit(f"--impls: unknown implementation {i!r} (expected {', '.join(IMPLS)})")
    base = dict(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size,
                warmup=args.warmup, steps=args.steps, threads=args.threads, gemm16=args.gemm16,
                no_native_bf16=args.no_native_bf16)
    print(f"shape: d_model={args.d_model} n_layer={args.n_layer} n_head={args.n_head} "
          f"n_kv_head(llama)={args.n_kv_head} vocab={args.vocab_size} batch={args.batch_size}x{args.seq_len} "
          f"warmup={args.warmup} steps={args.steps} threads={args.threads or 'default'} "
          f"gemm16={args.gemm16 or 'auto'} no_native_bf16={args.no_native_bf16}", flush=True)
    rows = []
    for family in families:
        for precision in precisions:
            best: dict[str, dict] = {}
            for _ in range(args.repeats):
                for impl in impls:  # alternate, so drift on a shared machine hits all
                    r = spawn(dict(base, family=family, precision=precision, impl=impl))
                    if impl not in best or r["tokens_per_s"] > best[impl]["tokens_per_s"]:
                        best[impl] = r
            rows.append(dict(family=family, precision=precision, **best))
            if "fastlm" in best and "hf" in best:
                ours, hf = best["fastlm"], best["hf"]
                rows[-1].update(speed_ratio=ours["tokens_per_s"] / hf["tokens_per_s"],
                                mem_ratio=ours["train_mem_mb"] / max(hf["train_mem_mb"], 1e-9))
            print(f"  done {family}/{precision}", file=sys.stderr, flush=True)
    print_vs_hf([r for r in rows if "speed_ratio" in r])
    print_precision_ratios(rows, families, impls)
    print_mfu(rows, impls)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=base, rows=rows), f, indent=2)


def print_mfu(rows: list[dict], impls: list[str]) -> None:
    """Model GFLOP/s against the run's own measured GEMM peak."""
    print()
    hdr = (f"{'family':7} {'prec':5} {'impl':15} | {'tok/s':>8} {'MFLOP/tok':>9} {'model GFLOP/s':>13} "
           f"{'peak GFLOP/s':>12} {'MFU':>6} | peak at (M, K, N)")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        for impl in impls:
            o = r[impl]
            achieved = o["tokens_per_s"] * o["flops_per_token"] / 1e9
            print(f"{r['family']:7} {r['precision']:5} {impl:15} | {o['tokens_per_s']:8.0f} "
                  f"{o['flops_per_token'] / 1e6:9.1f} {achieved:13.1f} {o['peak_gflops']:12.1f} {o['mfu']:6.1%} | "
                  f"{tuple(o['peak_shape'])}")
    print("FLOPs per token: 6N + 12 L H Q T (PaLM; N = Linear weights); peak = torch's best GEMM on the model's shapes")


def print_precision_ratios(rows: list[dict], families: list[str], impls: list[str]) -> None:
    """bf16 / fp32 tokens/s of each implementation (1.0: bf16 as fast as fp32; < 1: slower)."""
    by_key = {(r["family"], r["precision"]): r for r in rows}
    lines = []
    for family in families:
        fp32, bf16 = by_key.get((family, "fp32")), by_key.get((family, "bf16"))
        if fp32 is None or bf16 is None:
            continue
        for impl in impls:
            t32, t16 = fp32[impl]["tokens_per_s"], bf16[impl]["tokens_per_s"]
            lines.append(f"{family:7} {impl:13} | {t32:10.0f} {t16:10.0f} | {t16 / t32:9.2f} {t32 / t16:13.2f}")
    if not lines:
        return
    print()
    hdr = f"{'family':7} {'impl':13} | {'fp32 tok/s':>10} {'bf16 tok/s':>10} | {'bf16/fp32':>9} {'fp32/bf16 (x)':>13}"
    print(hdr)
    print("-" * len(hdr))
    print("\n".join(lines))
    print("fp32/bf16 = how many times slower bf16 trains than fp32 (fastlm's target on CPU: <= 1.5)")


def print_vs_hf(rows: list[dict]) -> None:
    if not rows:
        return
    hdr = (f"{'family':7} {'prec':5} | {'fastlm tok/s':>12} {'HF tok/s':>10} {'ratio':>6} | "
           f"{'fastlm peak MB':>14} {'HF peak MB':>10} | {'fastlm train MB':>15} {'HF train MB':>11} {'ratio':>6} | "
           f"{'loss0 fastlm/HF':>17}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        o, h = r["fastlm"], r["hf"]
        print(f"{r['family']:7} {r['precision']:5} | {o['tokens_per_s']:12.0f} {h['tokens_per_s']:10.0f} "
              f"{r['speed_ratio']:6.2f} | {o['peak_rss_mb']:14.0f} {h['peak_rss_mb']:10.0f} | "
              f"{o['train_mem_mb']:15.0f} {h['train_mem_mb']:11.0f} {r['mem_ratio']:6.2f} | "
              f"{o['first_loss']:8.4f}/{h['first_loss']:.4f}")
    print("ratio = fastlm / HF (tokens/s: higher is better; train MB = peak RSS minus RSS before the first step: lower is better)")


if __name__ == "__main__":
    main()
