"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from fastlm.ops._library import has_native_op
from fastlm.optim import AdamW as FastlmAdamW
from fastlm.optim.offload import OffloadedAdamW
from fastlm.train.config import TrainSection
from fastlm.train.errors import ConfigError


def build_optimizer(model: nn.Module, train: TrainSection, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fastlm's native one with "fastlm_adamw", and for "adamw" on the CPU; torch's fused one for
    "adamw" on CUDA), AdamW offloaded to the CPU with train.optimizer_offload, or SGD with "sgd". Norms,
    biases and embeddings get no weight decay (nanoGPT/LLaMA practice)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_embedding = isinstance(module, nn.Embedding) or "embed" in type(module).__name__.lower()
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue  # tied weights appear twice; the first owner (the embedding) decides
            seen.add(id(p))
            (no_decay if is_embedding or p.dim() < 2 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)
    if getattr(train, "optimizer_offload", False):
        _check_offload(device)
        return OffloadedAdamW(groups, lr=train.lr, betas=(0.9, 0.95), eps=1e-8)
    # "adamw" on the CPU is fastlm's too: measured (benchmarks/adamw.py, the 6-layer width-384 model's tensors)
    # ~10x torch's foreach step and on par with (1 thread) or faster than (2 threads) its fused one. On CUDA
    # torch's fused multi-tensor kernel is kept (fastlm's Triton kernel launches once per tensor).
    # (fp64 parameters, as in exactness tests, have no native kernel: "adamw" gives them torch's.)
    native_dtypes = all(p.dtype in (torch.float32, torch.bfloat16) for group in groups for p in group["params"])
    if train.optimizer == "fastlm_adamw" or (device.type == "cpu" and native_dtypes and has_native_op("adamw_step_")):
        return FastlmAdamW(groups, lr=train.lr, betas=(0.9, 0.95), eps=1e-8)
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


def _check_offload(device: torch.device) -> None:
    if device.type != "cuda":
        raise ConfigError(f"train.optimizer_offload = true: needs a CUDA device (this run is on {device.type})")
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise ConfigError("train.optimizer_offload = true: not available with more than one process yet")


def lr_at(step: int, train: TrainSection) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr.

    A pure function of the step, so resuming needs no scheduler state beyond the step.
    """
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    decay_steps = train.steps - 1 - train.warmup_steps
    progress = min(1.0, (step - train.warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return train.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - train.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
