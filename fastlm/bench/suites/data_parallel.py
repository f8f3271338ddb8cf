"""Data-parallel step time: fastlm DataParallel vs torch DDP (same bucket size) vs no communication.

Spawns `nproc` processes (gloo on CPU, NCCL on CUDA: one GPU per process). Each times, in
interleaved rounds so all share the same machine load: a training step (forward, backward,
all-reduce, AdamW) of a GPT with fastlm's DataParallel, the same with torch DDP, and the same step
on its share with no communication. The slowest rank decides a synchronous step.
"""
from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastlm.bench.registry import Options, Suite

MODELS = {
    "tiny": dict(family="llama", vocab_size=4096, n_layer=4, n_head=8, n_kv_head=4, d_model=128, max_seq_len=128),
    "small": dict(family="llama", vocab_size=8192, n_layer=6, n_head=8, n_kv_head=4, d_model=384, max_seq_len=256),
}


@dataclass
class DPSettings:
    nproc: int = 2
    model: str = "tiny"
    batch: int = 8            # sequences per rank per step
    bucket_mb: float = 25.0
    steps: int = 10
    warmup: int = 3
    threads: int = 1          # CPU threads per process


def _worker(rank: int, settings: DPSettings, port: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(settings.nproc), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(settings.threads)
    from fastlm.models import GPT, GPTConfig
    from fastlm.parallel import DataParallel, init_mesh

    mesh = init_mesh()
    device = mesh.device
    cfg = GPTConfig(**MODELS[settings.model])
    x = torch.randint(0, cfg.vocab_size, (settings.batch, cfg.max_seq_len), device=device)
    runs = {}
    for name in ("fastlm", "ddp", "local"):
        torch.manual_seed(0)
        model = GPT(cfg).to(device)
        if name == "fastlm":
            net = DataParallel(model, mesh, bucket_mb=settings.bucket_mb)
        elif name == "ddp":
            net = torch.nn.parallel.DistributedDataParallel(
                model, bucket_cap_mb=settings.bucket_mb, device_ids=[device.index] if device.type == "cuda" else None)
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
    for _ in range(settings.warmup):
        for fn in runs.values():
            fn()
    for _ in range(settings.steps):
        for name, fn in runs.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    queue.put((rank, {k: statistics.median(v) for k, v in times.items()}))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_times(settings: DPSettings) -> dict[str, float]:
    """Median step seconds of "fastlm", "ddp" and "local" (no communication), slowest rank."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, settings, port, queue)) for r in range(settings.nproc)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=1800) for _ in procs)
    for proc in procs:
        proc.join()
    return {k: max(results[r][k] for r in results) for k in results[0]}


def measure(options: Options, settings: DPSettings | None = None) -> list[dict]:
    settings = settings or DPSettings(steps=options.repeats(10), warmup=2 if options.quick else 3)
    if options.device == "cuda":
        settings.nproc = min(settings.nproc, torch.cuda.device_count())
        if settings.nproc < 2:
            raise RuntimeError("data parallel on CUDA needs 2 or more GPUs")
    t = step_times(settings)
    base = t["local"]
    return [{"case": f"{settings.model} x{settings.nproc} bucket {settings.bucket_mb:g} MB",
             "local_ms": base * 1e3, "ddp_ms": t["ddp"] * 1e3, "fastlm_ms": t["fastlm"] * 1e3,
             "ddp_overhead_pct": (t["ddp"] / base - 1) * 100, "fastlm_overhead_pct": (t["fastlm"] / base - 1) * 100,
             "speedup": t["ddp"] / t["fastlm"]}]


SUITE = Suite(name="data_parallel", baseline="torch DistributedDataParallel (same bucket size)", run=measure)
