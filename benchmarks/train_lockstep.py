"""Whole-step A/B of source trees in lock step, for a shared, noisy machine.

One process per (tree, optimizer), all alive together, each doing one training step of issue 21's
model (6-layer, width-384 LLaMA, context 256, batch 8) when told, in turn and in rotating order: the
machine's load hits every config alike, which separate runs one after another do not. Prints best and
median tokens/s per config and MFU against the peak GEMM rate (fastlm.bench.roofline) one of them
measures right after.

    python benchmarks/train_lockstep.py --trees /path/main,/path/branch --precision bf16 --steps 20
    python benchmarks/train_lockstep.py --trees /path/branch,/path/branch@FASTLM_MALLOC_TUNE=0 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SHAPE = dict(family="llama", vocab_size=8192, n_layer=6, n_head=6, n_kv_head=6, d_model=384, max_seq_len=256)
BATCH = (8, 256)


def child(precision: str, optimizer: str, threads: str = "1") -> None:
    """Steps on command: stdin "step" -> one step, prints its seconds; "peak" -> peak GFLOP/s and FLOPs per token."""
    import torch

    from fastlm.models import GPT, GPTConfig

    try:  # the trainer's malloc setting; a tree without it runs untuned
        from fastlm._malloc import tune_malloc

        tune_malloc()
    except ImportError:
        pass
    torch.set_num_threads(int(threads))
    cfg = GPTConfig(**SHAPE).resolved()
    torch.manual_seed(0)
    model = GPT(cfg).train()
    if optimizer == "fastlm":
        from fastlm.optim import AdamW

        opt = AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    x = torch.randint(0, SHAPE["vocab_size"], BATCH)
    bf16 = precision == "bf16"
    print("ready", flush=True)
    for line in sys.stdin:
        if line.startswith("step"):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(x, labels=x, return_logits=False)[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            print(time.perf_counter() - t0, flush=True)
        elif line.startswith("peak"):
            from fastlm.bench import roofline

            fpt = roofline.model_flops_per_token(model, cfg, BATCH[1])
            dtype = torch.bfloat16 if bf16 else torch.float32
            peak, _ = roofline.peak_gflops(roofline.gemm_shapes(model, BATCH[0] * BATCH[1]), dtype, torch.device("cpu"))
            print(f"{peak} {fpt}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", help="comma list of source trees (each put first on PYTHONPATH); TREE@NAME=VALUE "
                                   "sets an environment variable for that tree's process (e.g. FASTLM_MALLOC_TUNE=0)")
    p.add_argument("--optimizers", default="torch,fastlm", help="comma list of torch, fastlm (AdamW)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (processes step in turn)")
    p.add_argument("--child", nargs=3, metavar=("PRECISION", "OPTIMIZER", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(*args.child)
    if not args.trees:
        p.error("--trees is required")
    configs = [(tree, opt) for opt in args.optimizers.split(",") for tree in args.trees.split(",")]
    procs = []
    for tree, opt in configs:
        path, *assignments = tree.split("@")
        env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(args.threads), PYTHONDONTWRITEBYTECODE="1")
        env.update(a.split("=", 1) for a in assignments)
        env.setdefault("FASTLM_CPU_GEMM16", "native")
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", args.precision, opt, str(args.threads)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if proc.stdout.readline().strip() != "ready":
            sys.exit(f"the process for {tree} ({opt}) did not start")
        procs.append(proc)

    def ask(proc, command: str) -> str:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return proc.stdout.readline()

    times: list[list[float]] = [[] for _ in configs]
    for i in range(args.warmup + args.steps):
        order = list(range(len(configs)))
        for k in order[i % len(order):] + order[:i % len(order)]:
            t = float(ask(procs[k], "step"))
            if i >= args.warmup:
                times[k].append(t)
    peak, fpt = map(float, ask(procs[-1], "peak").split())
    for proc in procs:
        proc.stdin.close()
        proc.wait()
    tokens = BATCH[0] * BATCH[1]
    print(f"{args.precision}, {args.threads} thread(s): {args.steps} steps each in lock step (load average {os.getloadavg()[0]:.1f}); "
          f"peak {peak:.0f} GFLOP/s, {fpt / 1e6:.1f} MFLOP/token")
    for (tree, opt), ts in zip(configs, times):
        best, med = tokens / min(ts), tokens / statistics.median(ts)
        print(f"  {tree} ({opt} AdamW): best {best:.0f} tok/s (MFU {best * fpt / peak / 1e9:.3f}), "
              f"median {med:.0f} tok/s (MFU {med * fpt / peak / 1e9:.3f})")


if __name__ == "__main__":
    main()
