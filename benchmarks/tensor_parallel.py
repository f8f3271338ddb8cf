"""Tensor-parallel training step: per-rank step time, peak memory and bytes communicated per step.

    python benchmarks/tensor_parallel.py [--tp 1 2 4] [--layers 2] [--seq 128] [--batch 2] [--steps 4]

The gpt2-small shape (d_model 768, 12 heads, d_ff 3072, vocab 50257, tied embeddings), fewer
layers and a shorter sequence than the real model so that it runs on a small CPU. Each tp size
runs tp gloo processes (dp = 1; OMP threads per process: --threads), without and with sequence
parallel. Baseline: tp = 1 (one process, no communication), measured in the same run.

Measured, per rank (the slowest rank's figure):
- step ms: median wall time of a training step (forward, backward, clip, AdamW) after warmup;
- params MB: parameter bytes this rank holds (gradients and AdamW state are 3x that again);
- peak MB: the process's peak resident set size (ru_maxrss) minus its RSS before the model was
  built, i.e. the weights, gradients, optimizer state and peak activations (and allocator slack);
- comm MB/step: bytes this rank sends in tensor-parallel collectives per step, as ring algorithms
  do (an all-reduce of N bytes: 2 (tp - 1) / tp * N; all-gather / reduce-scatter: (tp - 1) / tp
  of the gathered / reduced tensor).
On a CPU with fewer cores than processes the step times show overheads, not speedups.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker(rank, world, port, out_dir, a, sp):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(a.threads)})
    torch.set_num_threads(a.threads)
    from fastlm.models import GPT, GPTConfig
    from fastlm.parallel import destroy_mesh, init_mesh
    from fastlm.parallel.tensor import clip_grad_norm_, parallelize_tp
    from fastlm.parallel.tensor.collectives import traffic

    rss0 = _rss_mb()
    mesh = init_mesh(tp=world) if world > 1 else None
    torch.manual_seed(0)
    model = GPT(GPTConfig(family="gpt2", vocab_size=50257, n_layer=a.layers, n_head=12, d_model=768,
                          max_seq_len=a.seq))
    if mesh is not None:
        parallelize_tp(model, mesh, sequence_parallel=sp)
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 50257, (a.batch, a.seq), generator=torch.Generator().manual_seed(1))
    times = []
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            traffic.clear()
        t0 = time.perf_counter()
        loss = model(x, labels=x)[1]
        loss.backward()
        if mesh is not None:
            clip_grad_norm_(model, 1.0, mesh)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    comm = sum(traffic.values()) / a.steps / 2**20
    result = {"step_ms": statistics.median(times[a.warmup:]) * 1e3, "params_mb": params_mb,
              "peak_mb": _peak_mb() - rss0, "comm_mb": comm,
              "by_op": {k: v / a.steps / 2**20 for k, v in traffic.items()}, "loss": float(loss.detach())}
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    destroy_mesh()


def run(tp: int, a, sp: bool) -> list[dict]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(r, tp, port, out, a, sp)) for r in range(tp)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(a.timeout)
            if p.is_alive():
                p.kill()
                raise SystemExit(f"tp={tp}: a rank did not finish within {a.timeout} s")
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(tp)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--timeout", type=float, default=1200)
    a = parser.parse_args()
    print(f"gpt2-small shape, {a.layers} layers, {a.batch} x {a.seq} tokens per step, fp32, cpu "
          f"({os.cpu_count()} cores, {a.threads} thread(s) per process), median of {a.steps} steps")
    print(f"{'layout':22s}{'step ms':>10s}{'vs tp=1':>9s}{'params MB':>11s}{'peak MB':>10s}{'comm MB/step':>14s}  by collective")
    base = None
    for tp in a.tp:
        for sp in ([False] if tp == 1 else [False, True]):
            res = run(tp, a, sp)
            worst = max(res, key=lambda r: r["step_ms"])
            step = worst["step_ms"]
            base = base or step
            by_op = ", ".join(f"{k} {v:.1f}" for k, v in sorted(res[0]["by_op"].items()))
            name = f"tp={tp}" + (" + seq parallel" if sp else "") + (" (baseline)" if tp == 1 else "")
            print(f"{name:22s}{step:10.0f}{step / base:9.2f}{max(r['params_mb'] for r in res):11.1f}"
                  f"{max(r['peak_mb'] for r in res):10.0f}{max(r['comm_mb'] for r in res):14.1f}  {by_op}", flush=True)
