"""DP-SGD for a model whose layers were swapped by apply_dp_sgd: per-sample clipping, one noise draw
per optimizer step, and the normalization by the expected batch size.

The gradient of a step is

    (sum over the global batch of clip(grad_b, C) + N(0, sigma^2 C^2)) / expected_batch_size

where grad_b is a sample's gradient under Opacus' convention for a mean-reduced loss (the batch's
mean loss times the micro-batch size, differentiated for that sample: exactly the gradient of the
sample's mean loss when the samples count the same number of tokens, as LM windows do) and
clip(g, C) = g * min(1, C / (||g|| + 1e-6)).

One micro-batch (`add_clipped`): the backward through the DP layers computes no weight
gradient; from what it recorded come every sample's norm over the whole model, the clipping
factors, and the clipped sums, which enter `.grad` through `torch.autograd.backward` on the
parameters, so that a data-parallel wrapper's gradient hooks (fastlm's DataParallel buckets, torch
DDP) fire as in a normal backward. Under data parallelism each rank's clipped sum is scaled by
world / expected_batch_size, so that the wrapper's average is the global sum over the expected batch
size; the noise is drawn after the all-reduce from a generator seeded by (seed, step), identical on
every rank: the result equals one process's.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from fastlm.privacy.layers import recording
from fastlm.privacy.recorder import Recorder

CLIP_EPS = 1e-6  # as Opacus: factor = C / (norm + 1e-6), at most 1


def batch_size_of(batch) -> int:
    """Samples in a micro-batch: rows of its first tensor (a tensor, a dict of tensors, a PackedBatch);
    0 for an empty dict (a rank that Poisson sampling gave no sample)."""
    if isinstance(batch, dict) and not batch:
        return 0
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        if "input_ids" in batch:
            return batch["input_ids"].shape[0]
        values = list(batch.values())
    else:
        values = list(batch) if isinstance(batch, (tuple, list)) else []
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    raise ValueError(f"DP-SGD: cannot tell the number of samples of a {type(batch).__name__} batch")


def attention_mask_of(batch) -> torch.Tensor | None:
    """The (B, L) real-token mask of a padded micro-batch (a dict's or a MaskedBatch's attention_mask)."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else getattr(batch, "attention_mask", None)
    return mask if isinstance(mask, torch.Tensor) else None


def _stream_seed(*parts: int) -> int:
    """A 63-bit seed from (seed, step, stream): independent streams for every step and tp shard."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class DPSGD:
    def __init__(self, model: nn.Module, *, max_grad_norm: float, noise_multiplier: float,
                 expected_batch_size: float, loss_reduction: str = "mean", seed: int = 0, world_size: int = 1,
                 tp_group=None):
        if not max_grad_norm > 0:
            raise ValueError(f"DP-SGD: max_grad_norm must be positive, got {max_grad_norm!r}")
        if not noise_multiplier >= 0:
            raise ValueError(f"DP-SGD: noise_multiplier must be >= 0, got {noise_multiplier!r}")
        if not expected_batch_size > 0:
            raise ValueError(f"DP-SGD: expected_batch_size must be positive, got {expected_batch_size!r}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"DP-SGD: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        self.params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))  # a tied weight once
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.loss_reduction = loss_reduction
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.tp_group = tp_group  # tensor parallelism: norms summed over it; each rank's shards get their own noise
        self.tp_rank = torch.distributed.get_rank(tp_group) if tp_group is not None else 0
        self.step = 0               # optimizer steps taken (the noise of step s is drawn from (seed, s))
        self.last_norms: torch.Tensor | None = None  # the last micro-batch's per-sample norms

    # ------------------------------------------------------------------ one micro-batch

    def clip_factors(self, rec: Recorder) -> torch.Tensor:
        """(B,) the factor of every sample's gradient: its clipping, and the scaling for the data-parallel average."""
        per_sample_scale = rec.batch_size if self.loss_reduction == "mean" else 1
        norms = rec.sq_norms(self.tp_group).clamp_min(0).sqrt() * per_sample_scale
        clip = (self.max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
        self.last_norms = norms.detach()
        return clip * (per_sample_scale * self.world_size / self.expected_batch_size)

    def add_clipped(self, rec: Recorder) -> None:
        """.grad += the micro-batch's clipped sum, one parameter at a time (through autograd, so that
        gradient hooks fire as in a backward; one at a time, so that no second copy of every gradient
        exists at once); parameters the micro-batch did not use get zeros (data parallelism counts them)."""
        factors = self.clip_factors(rec)
        done = set()
        for param, grad in rec.clipped_sums(factors):
            torch.autograd.backward(param, grad)
            done.add(id(param))
        self.add_zeros([p for p in self.params if id(p) not in done])

    def add_zeros(self, params) -> None:
        for p in reversed(params):
            torch.autograd.backward(p, torch.zeros_like(p))

    def micro_backward(self, loss_fn, scale, clean_context, final_context, batch=None):
        """fastlm.train.step.TrainStep's hook: forward and backward of one micro-batch, clipped."""
        if batch is None:
            raise ValueError("DP-SGD: the train step must pass the micro-batch to micro_backward")
        device = self.params[0].device
        B = batch_size_of(batch)
        if B == 0:  # nothing sampled for this rank: zeros, so that the collectives still match
            with final_context:
                self.add_zeros(self.params)
            zero = torch.zeros((), device=device)
            return zero, {"dp_clipped_fraction": zero, "dp_sample_grad_norm": zero}
        rec = Recorder(B, device, attention_mask_of(batch))
        with clean_context:  # no gradient reaches a parameter here: nothing to communicate
            with recording(rec):
                loss = loss_fn()
            loss.backward()
        with final_context:  # the last micro-batch's gradients are all-reduced as they enter .grad
            self.add_clipped(rec)
        clipped = (self.last_norms > self.max_grad_norm).float().mean()
        return loss.detach(), {"dp_clipped_fraction": clipped, "dp_sample_grad_norm": self.last_norms.float().mean()}

    # ------------------------------------------------------------------ once per step

    def add_noise(self) -> None:
        """grad += N(0, (sigma C / expected_batch_size)^2): the same draw on every data-parallel rank (and,
        for a replicated parameter, on every tp rank; a tp shard gets its own); advances the step."""
        std = self.noise_multiplier * self.max_grad_norm / self.expected_batch_size
        if std > 0:
            device = self.params[0].device
            replicated = torch.Generator(device=device).manual_seed(_stream_seed(self.seed, self.step, -1))
            shard = torch.Generator(device=device).manual_seed(_stream_seed(self.seed, self.step, self.tp_rank)) \
                if self.tp_group is not None else None
            for p in self.params:
                gen = shard if shard is not None and hasattr(p, "_tp_parts") else replicated
                noise = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
                if p.grad is None:
                    p.grad = (noise * std).to(p.dtype)
                else:
                    p.grad.add_((noise * std).to(p.grad.dtype))
        self.step += 1


__all__ = ["DPSGD", "batch_size_of"]
