"""Data-parallel step time: fastlm DataParallel vs torch DDP (same bucket size) vs no communication.

    python benchmarks/data_parallel.py [--nproc 2] [--model tiny|small] [--bucket-mb 25] [--steps 10]

Spawns --nproc processes (gloo on CPU, NCCL on CUDA: one GPU per process). Each process times, in
interleaved rounds so they share the same machine load: a training step (forward, backward,
all-reduce, AdamW) of a GPT with fastlm's DataParallel, the same with torch DDP, and the same
forward/backward/step on its per-rank share with no communication at all. Prints the median step
times and the communication overhead of each wrapper over the no-communication step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODELS = {
    "tiny": dict(family="llama", vocab_size=4096, n_layer=4, n_head=8, n_kv_head=4, d_model=128, max_seq_len=128),
    "small": dict(family="llama", vocab_size=8192, n_layer=6, n_head=8, n_kv_head=4, d_model=384, max_seq_len=256),
}


def _worker(rank, world, args, port, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    from fastlm.models import GPT, GPTConfig
    from fastlm.parallel import DataParallel, init_mesh

    mesh = init_mesh()
    device = mesh.device
    cfg = GPTConfig(**MODELS[args.model])
    seq = cfg.max_seq_len

    def build():
        torch.manual_seed(0)
        return GPT(cfg).to(device)

    x = torch.randint(0, cfg.vocab_size, (args.batch, seq), device=device)
    runs = {}
    for name in ("fastlm", "ddp", "local"):
        model = build()
        if name == "fastlm":
            net = DataParallel(model, mesh, bucket_mb=args.bucket_mb)
        elif name == "ddp":
            net = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb,
                                                            device_ids=[device.index] if device.type == "cuda" else None)
        else:
            net = model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(net=net, opt=opt, is_fastlm=name == "fastlm"):
            net(x, labels=x)[1].backward()
            if is_fastlm:
                net.finish_grad_sync()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()

        runs[name] = step
    times = {name: [] for name in runs}
    for _ in range(args.warmup):
        for fn in runs.values():
            fn()
    for _ in range(args.steps):
        for name, fn in runs.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    queue.put((rank, {k: statistics.median(v) for k, v in times.items()}))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args.nproc, args, port, queue)) for r in range(args.nproc)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=1800) for _ in procs)
    for proc in procs:
        proc.join()
    # the slowest rank decides a synchronous step
    return {k: max(results[r][k] for r in results) for k in results[0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--batch", type=int, default=8, help="sequences per rank per step")
    parser.add_argument("--bucket-mb", type=float, default=25.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    a = parser.parse_args()
    t = run(a)
    base = t["local"]
    print(f"model {a.model}, {a.nproc} processes, {a.batch} x {MODELS[a.model]['max_seq_len']} tokens per rank, "
          f"bucket {a.bucket_mb:g} MB ({'cuda' if torch.cuda.is_available() else 'cpu'})")
    print(f"{'':28s}{'step ms':>10s}{'overhead vs no comm':>22s}")
    for name, label in (("local", "no communication (baseline)"), ("ddp", "torch DDP"), ("fastlm", "fastlm DataParallel")):
        print(f"{label:28s}{t[name] * 1e3:10.1f}{(t[name] / base - 1) * 100:21.1f}%")
    print(f"fastlm / DDP step time: {t['fastlm'] / t['ddp']:.3f}")
