"""Code that runs on every rank of the data-parallel tests (spawned by dist_helpers.run_world).

train_gpt() trains a small GPT (gpt2 family: tied embeddings, biases, LayerNorm) for a few steps
on a fixed global batch per step, split over the ranks, and returns the global losses and the
final parameters. With world == 1 and no wrapper it is the single-process reference.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

G, T, STEPS = 12, 16, 3
LR, EPS = 1e-2, 1e-4


def small_gpt():
    from fastlm.models import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(family="gpt2", vocab_size=64, n_layer=2, n_head=2, d_model=32, max_seq_len=T))


def data(steps=STEPS):
    return torch.randint(0, 64, (steps, G, T), generator=torch.Generator().manual_seed(1))


def bounds(world, shares):
    from fastlm.data.loader import _share_bounds

    return _share_bounds(G, 1, world, shares)


def train_gpt(rank, world, spec):
    """spec: wrapper ("none", "fastlm", "ddp"), accum, overlap, reduce, shard, shares, bucket_mb,
    local_sgd (H), steps, load (state to start from), save_after (step whose state to return)."""
    from fastlm.parallel import DataParallel, init_mesh

    mesh = init_mesh() if world > 1 else None
    model = small_gpt()
    if spec.get("load"):
        model.load_state_dict(spec["load"]["model"])
    steps = spec.get("steps", STEPS)
    batches = data(max(steps, spec.get("first_step", 0) + steps))
    lo, hi = bounds(world, spec.get("shares"))[rank:rank + 2]
    wrapper, dp = spec.get("wrapper", "fastlm" if world > 1 else "none"), None
    if wrapper == "fastlm":
        dp = DataParallel(model, mesh, bucket_mb=spec.get("bucket_mb", 0.004), overlap=spec.get("overlap", True),
                          grad_reduce_dtype=spec.get("reduce"), shard_optimizer=spec.get("shard", False),
                          shares=spec.get("shares"))
        net = dp
    elif wrapper == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=spec.get("bucket_mb", 0.004))
    else:
        net = model
    opt = torch.optim.AdamW(model.parameters(), lr=LR, eps=EPS, weight_decay=0.1)
    if dp is not None:
        opt = dp.wrap_optimizer(opt)
    if spec.get("load"):
        opt.load_state_dict(spec["load"]["optimizer"])
    accum, H = spec.get("accum", 1), spec.get("local_sgd")
    losses, after_sync, saved = [], [], None
    for s in range(spec.get("first_step", 0), spec.get("first_step", 0) + steps):
        sync = H is None or (s + 1) % H == 0
        micro = batches[s, lo:hi].chunk(accum)
        total = torch.zeros(())
        for j, x in enumerate(micro):
            local = (j < accum - 1 or not sync) and wrapper != "none"
            with net.no_sync() if local else nullcontext():
                loss = net(x, labels=x)[1] / accum
                loss.backward()
            total += loss.detach()
        if dp is not None:
            dp.finish_grad_sync()
            dp.clip_grad_norm_(1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if H is not None and sync and H > 1:
            dp.average_parameters(opt)
            after_sync.append({k: v.clone() for k, v in model.state_dict().items()})
        if dp is not None:
            total = dp.mean_over_ranks(total)
        elif wrapper == "ddp":
            total = total * (hi - lo) / G
            dist.all_reduce(total)
        losses.append(float(total))
        if spec.get("save_after") == s + 1:
            saved = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                     "optimizer": opt.full_state_dict() if hasattr(opt, "full_state_dict") else opt.state_dict()}
    out = {"losses": losses, "params": {k: v.clone() for k, v in model.state_dict().items()}, "after_sync": after_sync,
           "saved": saved}
    if dp is not None:
        out["buckets"] = dp.buckets
        if hasattr(opt, "inner") and opt.inner is not None:
            out["opt_numel"] = sum(t.numel() for st in opt.inner.state.values() for t in st.values()
                                   if torch.is_tensor(t) and t.dim() > 0)
        else:
            out["opt_numel"] = sum(t.numel() for st in opt.state.values() for t in st.values()
                                   if torch.is_tensor(t) and t.dim() > 0)
    return out


def overlap_probe(rank, world):
    """Counts gradients accumulated (own hooks) when each all-reduce is issued, and the observed order."""
    from fastlm.parallel import DataParallel, init_mesh

    mesh = init_mesh()
    model = small_gpt()
    dp = DataParallel(model, mesh, bucket_mb=0.004)
    params = [p for p in model.parameters() if p.requires_grad]
    fired, order, issued = [0], [], []
    names = {id(p): n for n, p in model.named_parameters()}
    for p in params:
        def hook(p):
            fired[0] += 1
            order.append(names[id(p)])
        p.register_post_accumulate_grad_hook(hook)
    real = dist.all_reduce

    def spy(*args, **kwargs):
        issued.append(fired[0])
        return real(*args, **kwargs)

    dist.all_reduce = spy
    try:
        x = data()[0, :G // world]
        result = []
        for _ in range(2):
            fired[0], issued[:], order[:] = 0, [], []
            dp(x, labels=x)[1].backward()
            backward_done = fired[0]
            dp.finish_grad_sync()
            result.append({"issued": list(issued), "total": len(params), "backward_done": backward_done,
                           "order": list(order), "buckets": dp.buckets})
            model.zero_grad(set_to_none=True)
    finally:
        dist.all_reduce = real
    return result


def unused_probe(rank, world, find_unused):
    from fastlm.parallel import DataParallel, init_mesh

    mesh = init_mesh()
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"used": torch.nn.Linear(4, 4), "unused": torch.nn.Linear(4, 4)})
    dp = DataParallel(model, mesh, find_unused=find_unused)
    x = torch.ones(2, 4) * (rank + 1)
    dp.module["used"](x).sum().backward()
    dp.finish_grad_sync()
    return model["used"].weight.grad.clone()


def mismatch_probe(rank, world, what):
    from fastlm.parallel import DataParallel, init_mesh

    mesh = init_mesh()
    if what == "config":
        mesh.check_same("config", {"train": {"lr": 1e-3 if rank != world - 1 else 2e-3}})
        return None
    torch.manual_seed(0 if rank != world - 1 else 1)
    DataParallel(torch.nn.Linear(4, 4), mesh)


def fault_probe(rank, world, mode, timeout_s):
    """The last rank dies (kill) or stops (hang) at step 2; the others must fail within timeout_s."""
    from fastlm.parallel import DataParallel, init_mesh

    mesh = init_mesh(timeout_s=timeout_s)
    model = small_gpt()
    dp = DataParallel(model, mesh)
    x = data()[0, :2]
    for step in range(3):
        if step == 2 and rank == world - 1:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(timeout_s + 8)  # stuck past the others' timeout, then gone
            os._exit(1)
        t0 = time.monotonic()
        try:
            dp(x, labels=x)[1].backward()
            dp.finish_grad_sync()
        except Exception as e:  # noqa: BLE001
            return {"error": f"{type(e).__name__}: {e}", "seconds": time.monotonic() - t0, "step": step}
        model.zero_grad()
    return {"error": None}


def grad_probe(rank, world, reduce, shard):
    """The gradient after one synchronized backward (the full one: all-reduced, or this rank's shard)."""
    from fastlm.parallel import DataParallel, init_mesh

    mesh = init_mesh()
    model = small_gpt()
    dp = DataParallel(model, mesh, bucket_mb=0.004, grad_reduce_dtype=reduce)
    lo, hi = bounds(world, None)[rank:rank + 2]
    x = data()[0, lo:hi]
    dp(x, labels=x)[1].backward()
    dp.finish_grad_sync()
    return {n: p.grad.clone() for n, p in model.named_parameters()}
