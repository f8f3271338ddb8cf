"""Code that runs on every rank of the pipeline tests (spawned by dist_helpers.run_world).

train_pipeline() trains a small GPT for a few steps on a fixed global batch per step: pp stages
(x dp replicas) driven by a schedule, or, with pp == 1, one process with plain gradient
accumulation (the reference). Returns the global losses and the whole model's final parameters
(gathered on rank 0) and the live-activation peaks of the executor.
"""
from __future__ import annotations

import torch

G, T, STEPS = 8, 16, 3
LR, EPS = 1e-2, 1e-4


def small_gpt(family="gpt2", n_layer=4, checkpointing=False):
    from fastlm.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(family=family, vocab_size=64, n_layer=n_layer, n_head=2, n_kv_head=2 if family == "llama"
                          else None, d_model=32, max_seq_len=T))
    if checkpointing:
        from fastlm.parallel import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    return model


def data(steps=STEPS):
    return torch.randint(0, 64, (steps, G, T), generator=torch.Generator().manual_seed(1))


def optimizer_for(module):
    from fastlm.train.config import TrainSection
    from fastlm.train.optim import build_optimizer

    return build_optimizer(module, TrainSection(lr=LR, weight_decay=0.1), torch.device("cpu"))


def train_pipeline(rank, world, spec):
    """spec: pp, schedule, v, mbs (micro-batch size), family, n_layer, steps, stage_layers, ckpt
    (activation checkpointing), dtype, clip, tp (with pp: parallelize_tp first), sp (sequence parallel)."""
    from fastlm.parallel import DataParallel, init_mesh
    from fastlm.parallel.pipeline import Pipeline

    pp, mbs, steps = spec.get("pp", 1), spec.get("mbs", 2), spec.get("steps", STEPS)
    model = small_gpt(spec.get("family", "gpt2"), spec.get("n_layer", 4), spec.get("ckpt", False))
    model.to(spec.get("dtype", torch.float32))
    batches = data(steps)
    if pp == 1:  # the reference: one process, gradient accumulation over the same micro-batches
        opt = optimizer_for(model)
        losses = []
        for s in range(steps):
            micro = batches[s].split(mbs)
            total = torch.zeros(())
            for x in micro:
                loss = model(x, labels=x, return_logits=False)[1] / len(micro)  # as the trainer
                loss.backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.get("clip", 1.0))
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(total))
        return {"losses": losses, "params": {k: v.clone() for k, v in model.state_dict().items()}}

    mesh = init_mesh(dp="auto", tp=spec.get("tp", 1), pp=pp)
    if mesh.tp > 1:
        from fastlm.parallel.tensor import parallelize_tp

        model = parallelize_tp(model, mesh, sequence_parallel=spec.get("sp", False))
    pipe = Pipeline(model, mesh, schedule=spec.get("schedule", "1f1b"), virtual_stages=spec.get("v", 1),
                    stage_layers=spec.get("stage_layers"), micro_batch_size=mbs, seq_len=T)
    stage = pipe.stage
    if spec.get("load_from"):  # a sharded checkpoint saved at any (dp, tp, pp)
        from fastlm.parallel.tensor.checkpoint import load_sharded

        load_sharded(spec["load_from"], stage)
    dp = None
    if mesh.dp > 1:
        dp = DataParallel(stage, mesh, bucket_mb=0.004, find_unused=True)
    opt = optimizer_for(stage)
    per_rank = G // mesh.dp
    losses, peaks = [], []
    for s in range(steps):
        mine = batches[s, mesh.dp_rank * per_rank:(mesh.dp_rank + 1) * per_rank]
        micro = list(mine.split(mbs))
        loss = pipe.train_step(micro, no_sync=dp.no_sync if dp is not None else None)
        if dp is not None:
            dp.finish_grad_sync()
        pipe.finish_grads()
        pipe.clip_grad_norm_(spec.get("clip", 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = pipe.reduce_loss(loss)
        if dp is not None:
            loss = dp.mean_over_ranks(loss)
        losses.append(float(loss))
        peaks.append(pipe.executor.peak_live)
    full = pipe.full_state_dict()
    out = {"losses": losses, "params": full, "peak_live": peaks, "stage_layers": pipe.stage_layers,
           "stages": pipe.stages, "wait_s": pipe.executor.wait_s}
    if spec.get("keep_stage"):
        out["stage"] = stage
    return out


def save_pipeline_checkpoint(rank, world, spec):
    """Train a few steps with a pipeline, save a sharded checkpoint (DCP) to spec["path"]; return the whole model."""
    from fastlm.parallel.tensor.checkpoint import save_sharded

    out = train_pipeline(rank, world, {**spec, "keep_stage": True})
    save_sharded(spec["path"], out.pop("stage"))
    return out
