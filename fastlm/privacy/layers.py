"""Layers that report what their weights' per-sample gradients need, instead of the gradients.

    apply_dp_sgd(model)      # swap every parameterized layer's class for its DP variant (in place)
    with recording(recorder):
        loss = model(...); loss.backward()     # recorder.uses: per parameter, what each use saw

A DP variant is a subclass swapped into the module's __class__ (as activation checkpointing does):
names, state dicts and isinstance checks stay as they were, and outside `recording` it runs the
parent's forward unchanged (evaluation, generation). Inside, it computes its output from detached
weights (autograd computes no weight gradient at all) and puts a tap on the output whose backward
hands (input, output gradient) to the recorder. A model that holds a parameter no rule covers is
refused with the module's name: a silently unclipped gradient would void the privacy guarantee.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from fastlm import nn as fnn
from fastlm import ops
from fastlm.ops.cross_entropy import reduce_loss
from fastlm.ops.matmul import ACTIVATION_ALIASES, cpu_gemm16_is_native
from fastlm.privacy.head import head_losses
from fastlm.privacy.per_sample import DenseUse, EmbeddingUse, LinearUse

_ACTIVE: list = []  # the recorder of the forward/backward in progress (a stack, innermost last)


@contextlib.contextmanager
def recording(recorder):
    _ACTIVE.append(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.remove(recorder)


def active_recorder():
    """The recorder of the forward in progress, or None (evaluation, or no grad)."""
    if not _ACTIVE or not torch.is_grad_enabled():
        return None
    return _ACTIVE[-1]


class _Tap(torch.autograd.Function):
    """Identity in the forward; the backward hands the output's gradient to `on_grad`.

    `anchor` (a recorder's zero-size leaf that requires grad) makes the output part of the graph
    even when nothing upstream requires grad (the first layer's weights are detached)."""

    @staticmethod
    def forward(ctx, out, anchor, on_grad):
        ctx.on_grad = on_grad
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        on_grad, ctx.on_grad = ctx.on_grad, None  # drop the closure: it must not outlive the backward
        on_grad(grad)
        return grad, None, None


def tap(out: torch.Tensor, recorder, on_grad) -> torch.Tensor:
    return _Tap.apply(out, recorder.anchor, on_grad)


def _per_sample(t: torch.Tensor, rec) -> torch.Tensor:
    """(B, L, features). A sample's rows are contiguous in every layout the models use; an encoder
    runs only the real tokens of a padded batch (rec.token_mask): they go back to their rows, with
    zeros (which add nothing to any gradient) where the padding was."""
    rows = t.numel() // max(1, t.shape[-1])
    mask = rec.token_mask
    if mask is not None and rows != mask.numel() and rows == rec.real_tokens:
        out = t.new_zeros(*mask.shape, t.shape[-1])
        out[mask] = t.reshape(rows, t.shape[-1])
        return out
    if t.dim() < 2 or t.shape[0] != rec.batch_size and rows % rec.batch_size:
        raise ValueError(f"DP-SGD: a layer saw a tensor of shape {tuple(t.shape)}, which does not split into the "
                         f"batch's {rec.batch_size} samples")
    return t.reshape(rec.batch_size, -1, t.shape[-1])


def _acc(t: torch.Tensor) -> torch.Tensor:
    """t in the precision per-sample sums are taken in: fp32 (fp64 for an fp64 model)."""
    return t if t.dtype == torch.float64 else t.float()


_ACTIVATIONS = {"none": lambda x: x, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
                "silu": F.silu}


def _autocast(x: torch.Tensor, *tensors):
    device = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return [t.to(dtype) if t is not None else None for t in (x, *tensors)]
    return [x, *tensors]


def _linear_forward(module, x, activation, rec):
    """activation(x W^T + b) with the uses of W and b recorded."""
    w, b = module.weight.detach(), module.bias.detach() if module.bias is not None else None
    xc, w, b = _autocast(x, w, b)
    pre = F.linear(xc, w, b)
    x_seen = xc.detach()  # the closure must not hold the graph (a cycle through autograd nodes leaks)

    def on_grad(g):
        rec.add(module.weight, LinearUse(_per_sample(x_seen, rec), _per_sample(g, rec)))
        if module.bias is not None:
            rec.add(module.bias, DenseUse(_acc(_per_sample(g, rec)).sum(1)))

    pre = tap(pre, rec, on_grad)
    return _ACTIVATIONS[ACTIVATION_ALIASES[activation]](pre)


class DPLinear(fnn.Linear):
    def forward(self, x, activation=None):
        rec = active_recorder()
        if rec is None:
            return super().forward(x, activation)
        return _linear_forward(self, x, activation or self.activation, rec)

    def fused_cross_entropy(self, hidden, targets):
        rec = active_recorder()
        if rec is None or self.bias is not None:
            return super().fused_cross_entropy(hidden, targets)
        d = hidden.shape[-1]
        h, w = _autocast(hidden.reshape(-1, d), self.weight)
        if h.device.type == "cpu" and not cpu_gemm16_is_native(h.dtype):
            h, w = h.float(), w.float()
        labels = targets.reshape(-1)
        weight = self.weight

        def record(use):
            use.weight = weight
            rec.add(weight, use)

        losses = head_losses(h, w, labels, rec.batch_size, record)
        return reduce_loss(losses, labels, -100, "mean", None)


class DPTorchLinear(nn.Linear):
    def forward(self, x):
        rec = active_recorder()
        if rec is None:
            return super().forward(x)
        return _linear_forward(self, x, None, rec)


class DPEmbedding(nn.Embedding):
    def forward(self, ids):
        rec = active_recorder()
        if rec is None:
            return super().forward(ids)
        out = F.embedding(ids, self.weight.detach(), self.padding_idx, self.max_norm, self.norm_type,
                          self.scale_grad_by_freq, self.sparse)
        weight = self.weight

        def on_grad(g):
            g = _per_sample(g, rec)
            keep = _per_sample(ids[..., None], rec)[..., 0]
            if self.padding_idx is not None:  # torch gives the padding row no gradient
                g = g * (keep != self.padding_idx)[..., None]
            rec.add(weight, EmbeddingUse(keep, g))

        return tap(out, rec, on_grad)


def _norm_forward(module, x, rec, rms: bool):
    w = module.weight.detach()
    b = module.bias.detach() if getattr(module, "bias", None) is not None else None
    out = ops.rms_norm(x, w, module.eps) if rms else ops.layer_norm(x, w, b, module.eps)
    x_seen = x.detach()  # the closure must not hold the graph

    def on_grad(g):
        xs = _acc(_per_sample(x_seen, rec))
        if rms:
            xhat = xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + module.eps)
        else:
            xhat = F.layer_norm(xs, xs.shape[-1:], eps=module.eps)
        gs = _acc(_per_sample(g, rec))
        rec.add(module.weight, DenseUse((gs * xhat).sum(1)))
        if b is not None:
            rec.add(module.bias, DenseUse(gs.sum(1)))

    return tap(out, rec, on_grad)


class DPLayerNorm(fnn.LayerNorm):
    def forward(self, x):
        rec = active_recorder()
        return super().forward(x) if rec is None else _norm_forward(self, x, rec, rms=False)


class DPRMSNorm(fnn.RMSNorm):
    def forward(self, x):
        rec = active_recorder()
        return super().forward(x) if rec is None else _norm_forward(self, x, rec, rms=True)


class DPTorchLayerNorm(nn.LayerNorm):
    def forward(self, x):
        rec = active_recorder()
        if rec is None or not self.elementwise_affine:
            return super().forward(x)
        return _norm_forward(self, x, rec, rms=False)


# Most derived first: fastlm.nn.Linear is an nn.Linear.
DP_CLASSES: dict[type, type] = {
    fnn.Linear: DPLinear, nn.Linear: DPTorchLinear, nn.Embedding: DPEmbedding,
    fnn.LayerNorm: DPLayerNorm, fnn.RMSNorm: DPRMSNorm, nn.LayerNorm: DPTorchLayerNorm,
}


def _dp_class(module: nn.Module) -> type | None:
    from fastlm.privacy.tensor_parallel import DP_TP_CLASSES

    cls = type(module)
    if cls in DP_CLASSES.values() or cls in DP_TP_CLASSES.values():
        return cls
    return DP_CLASSES.get(cls) or DP_TP_CLASSES.get(cls)


def apply_dp_sgd(model: nn.Module) -> nn.Module:
    """Swap every parameterized layer for its DP variant (in place); returns model.

    Raises ValueError naming the first trainable parameter no DP rule covers (an LSTM's weights, a
    custom module's own nn.Parameter): its per-sample gradient would go unclipped."""
    covered: set[int] = set()
    for name, module in model.named_modules():
        cls = _dp_class(module)
        if cls is None:
            continue
        if isinstance(module, nn.Embedding) and (module.sparse or module.max_norm is not None
                                                 or module.scale_grad_by_freq):
            raise ValueError(f"DP-SGD: embedding {name or type(module).__name__} uses sparse, max_norm or "
                             f"scale_grad_by_freq, which per-sample gradients do not support")
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            raise ValueError(f"DP-SGD: LayerNorm {name} normalizes over {tuple(module.normalized_shape)}: only "
                             f"the last dimension is supported")
        module.__class__ = cls
        covered.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in covered:
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            kind = type(model.get_submodule(owner)).__name__ if owner else type(model).__name__
            raise ValueError(f"DP-SGD: no per-sample gradient rule for parameter {name} ({kind}); supported layers: "
                             f"Linear, Embedding, LayerNorm, RMSNorm (freeze it with requires_grad_(False))")
    return model
