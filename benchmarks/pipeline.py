"""Pipeline parallel step time and measured bubble: GPipe, 1F1B, interleaved 1F1B at pp = 2 and 4.

    python benchmarks/pipeline.py                        # CPU (gloo), pp 2 and 4, 8 micro-batches
    python benchmarks/pipeline.py --pp 2 --micro-batches 4 8 16 --layers 8 --d-model 256

For each pp, spawns pp processes (one thread each) and times, in interleaved rounds so all share
the same machine load, a training step (the schedule's forwards and backwards, tied-embedding sum,
clipping, AdamW) of every schedule. The measured bubble of a rank is the time it spent waiting
for a receive (or for its sends to drain) over the step time, averaged over the ranks; the
theoretical one is (p - 1) / (m * v + p - 1). The baseline is the same global batch on one
process (gradient accumulation over the same micro-batches), measured in the same run.
On a CPU with fewer cores than processes, the ranks also wait for a core: the measured bubble
then includes that time, and the step times are not a speedup measurement.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def model_config(a):
    from fastlm.models import GPTConfig

    return GPTConfig(family="llama", vocab_size=a.vocab, n_layer=a.layers, n_head=4, n_kv_head=2,
                     d_model=a.d_model, max_seq_len=a.seq)


def batches(a, m):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, a.vocab, (a.mbs, a.seq), generator=g) for _ in range(m)]


def single_process_step_time(a, m) -> float:
    from fastlm.models import GPT

    torch.manual_seed(0)
    model = GPT(model_config(a))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    micro = batches(a, m)

    def step():
        for x in micro:
            (model(x, labels=x)[1] / m).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _worker(rank, world, port, a, m, schedules, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from fastlm.models import GPT
    from fastlm.parallel import destroy_mesh, init_mesh
    from fastlm.parallel.pipeline import Pipeline

    mesh = init_mesh(pp=world)
    micro = batches(a, m)
    runs = {}
    for name, v in schedules:
        torch.manual_seed(0)
        pipe = Pipeline(GPT(model_config(a)), mesh, schedule=name, virtual_stages=v, micro_batch_size=a.mbs,
                        seq_len=a.seq, balance=a.balance)
        if rank == 0:
            print(f"  pp {world} {name} v={v}: layers per stage {pipe.stage_layers}", flush=True)
        opt = torch.optim.AdamW(pipe.stage.parameters(), lr=1e-4)

        def step(pipe=pipe, opt=opt):
            pipe.train_step(micro)
            pipe.finish_grads()
            pipe.clip_grad_norm_(1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return pipe.executor.wait_s

        runs[(name, v)] = step
    result = {key: {"time": [], "wait": []} for key in runs}
    for _ in range(a.warmup):
        for fn in runs.values():
            fn()
    for _ in range(a.steps):
        for key, fn in runs.items():
            dist.barrier()
            t0 = time.perf_counter()
            wait = fn()
            elapsed = time.perf_counter() - t0
            result[key]["time"].append(elapsed)
            result[key]["wait"].append(wait)
    queue.put((rank, result))
    destroy_mesh()


def pipeline_times(a, pp, m, schedules):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, pp, port, a, m, schedules, queue)) for r in range(pp)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=a.timeout) for _ in procs)
    for p in procs:
        p.join(30)
    out = {}
    for key in results[0]:
        # A step ends when its slowest rank does; the bubble is each rank's idle share, averaged.
        steps = list(zip(*(results[r][key]["time"] for r in range(pp))))
        step_time = statistics.median(max(s) for s in steps)
        bubbles = [statistics.median(w / t for w, t in zip(results[r][key]["wait"], results[r][key]["time"]))
                   for r in range(pp)]
        out[key] = (step_time, sum(bubbles) / pp, bubbles)
    return out


if __name__ == "__main__":
    from fastlm.parallel.pipeline import theoretical_bubble

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pp", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[8])
    parser.add_argument("--virtual-stages", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--mbs", type=int, default=2, help="sequences per micro-batch")
    parser.add_argument("--balance", choices=["params", "time"], default="params",
                        help="balance the stages by parameter count or by measured time")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    a = parser.parse_args()
    torch.set_num_threads(1)
    print(f"llama {a.layers} layers, d_model {a.d_model}, vocab {a.vocab}; micro-batch {a.mbs} x {a.seq} tokens; "
          f"stages balanced by {a.balance}; CPU, gloo, 1 thread per process, {os.cpu_count()} cores")
    print(f"{'pp':>3s} {'m':>3s} {'schedule':>15s} {'step ms':>9s} {'vs 1 proc':>10s} {'bubble':>8s} "
          f"{'theory':>8s}  per-rank bubble")
    for m in a.micro_batches:
        base = single_process_step_time(a, m)
        print(f"{1:3d} {m:3d} {'one process':>15s} {base * 1e3:9.1f} {1.0:10.2f} {'-':>8s} {'-':>8s}")
        for pp in a.pp:
            schedules = [("gpipe", 1), ("1f1b", 1)]
            if m % pp == 0 and a.layers >= pp * a.virtual_stages:
                schedules.append(("interleaved", a.virtual_stages))
            for (name, v), (t, bubble, per_rank) in pipeline_times(a, pp, m, schedules).items():
                label = name if v == 1 else f"{name} v={v}"
                print(f"{pp:3d} {m:3d} {label:>15s} {t * 1e3:9.1f} {base / t:10.2f} {bubble:8.3f} "
                      f"{theoretical_bubble(pp, m, v):8.3f}  " + " ".join(f"{b:.2f}" for b in per_rank))
