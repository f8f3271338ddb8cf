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

On a machine shared with other jobs, pass --threads 1: with more OpenMP threads than free cores,
a run can come out 10-20x slower than the same run a minute later (threads spin at barriers
waiting for a descheduled peer), which swamps the fastlm/HF difference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

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
    p.add_argument("--impls", default="fastlm,hf", help="comma list of fastlm, torch_linear (fastlm with "
                   "torch.nn.Linear), hf")
    p.add_argument("--gemm16", default=None, choices=["auto", "native", "fp32"],
                   help="FASTLM_CPU_GEMM16 for the runs (fastlm's 16-bit CPU GEMM path)")
    p.add_argument("--no-native-bf16", action="store_true",
                   help="ONEDNN_MAX_CPU_ISA=AVX2 in every run: torch's bf16 GEMM as on a CPU without native bf16")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one run, JSON spec
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_one(spec: dict) -> dict:
    """One training run in this process; returns tokens/s and memory."""
    import torch

    from fastlm.models import GPT, GPTConfig, to_hf

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    family = spec["family"]
    cfg = GPTConfig(family=family, vocab_size=spec["vocab_size"], n_layer=spec["n_layer"], n_head=spec["n_head"],
                    n_kv_head=spec["n_kv_head"] if family == "llama" else None, d_model=spec["d_model"],
                    max_seq_len=spec["seq_len"])
    torch.manual_seed(0)
    model = GPT(cfg)
    if spec["impl"] == "torch_linear":  # the baseline: the same model with torch's own linears
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.__class__ = torch.nn.Linear
    if spec["impl"] == "hf":
        model = to_hf(model, attn_implementation="sdpa")  # same weights, HF's fastest CPU attention
        step_loss = lambda x: model(input_ids=x, labels=x).loss
    else:
        step_loss = lambda x: model(x, labels=x)[1]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(1234)
    n = spec["warmup"] + spec["steps"]
    batches = [torch.randint(0, spec["vocab_size"], (spec["batch_size"], spec["seq_len"]), generator=g)
               for _ in range(n)]
    bf16 = spec["precision"] == "bf16"
    rss_before = _rss_kb()
    losses, times = [], []
    for x in batches:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    # The median step time: robust to other processes stealing the CPU for part of a run.
    step_s = statistics.median(times[spec["warmup"]:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return dict(tokens_per_s=spec["batch_size"] * spec["seq_len"] / step_s, step_s=step_s,
                peak_rss_mb=peak / 1024, train_mem_mb=(peak - rss_before) / 1024, first_loss=losses[0],
                last_loss=losses[-1])


def spawn(spec: dict) -> dict:
    env = dict(os.environ)
    if spec.get("gemm16"):
        env["FASTLM_CPU_GEMM16"] = spec["gemm16"]
    if spec.get("no_native_bf16"):
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run {spec['impl']}/{spec['family']}/{spec['precision']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(json.loads(args.worker))))
        return
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=base, rows=rows), f, indent=2)


IMPLS = ("fastlm", "torch_linear", "hf")


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
