"""Cross-entropy over the vocabulary with ignore_index, label smoothing and z-loss, fp32 math.

    loss = fastlm.ops.cross_entropy(logits, labels)        # logits (..., V) fp32/bf16/fp16

Per row: lse - (1 - e) x[label] - e mean(x) + z lse^2 (e = label_smoothing, z = z_loss, lse the
logsumexp), which is F.cross_entropy(label_smoothing=e) plus the PaLM z-loss. Rows labelled
ignore_index count for nothing; "mean" divides by the number of counted rows (as torch does).
16-bit logits are read as they are (no fp32 copy of the (N, V) tensor); the gradient is written
once, in the logits' dtype. CPU tensors run the C++ kernels (csrc/cpu/cross_entropy.cpp), CUDA
tensors the Triton ones (kernels/cross_entropy.py), fp64 and FASTLM_BACKEND=reference the reference.
"""
from __future__ import annotations

import numbers

import torch

from fastlm.ops import reference_cross_entropy as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import register_backward_op, register_op

REDUCTIONS = ("mean", "sum", "none")


def _triton(name: str):
    def launcher():
        from fastlm.kernels import cross_entropy as triton_ce

        return getattr(triton_ce, name)

    return launcher


def _fake_fwd(logits, labels, ignore_index, label_smoothing, z_loss):
    n = logits.shape[0]
    return logits.new_empty(n, dtype=torch.float32), logits.new_empty(n, dtype=torch.float32)


register_op("cross_entropy_fwd", reference=reference.cross_entropy_fwd, triton=_triton("cross_entropy_fwd"),
            fake=_fake_fwd)
register_op("cross_entropy_bwd", reference=reference.cross_entropy_bwd, triton=_triton("cross_entropy_bwd"),
            fake=lambda grad_loss, logits, labels, lse, ii, ls, z: logits.new_empty(logits.shape))


def _setup(ctx, inputs, output):
    logits, labels, ignore_index, label_smoothing, z_loss = inputs
    ctx.save_for_backward(logits, labels, output[1])
    ctx.params = (ignore_index, label_smoothing, z_loss)


def _backward(ctx, grad_loss, _grad_lse):
    logits, labels, lse = ctx.saved_tensors
    grad = torch.ops.fastlm.cross_entropy_bwd(grad_loss, logits, labels, lse, *ctx.params)
    return grad, None, None, None, None


torch.library.register_autograd("fastlm::cross_entropy_fwd", _backward, setup_context=_setup)
register_backward_op("cross_entropy_bwd")

# ---------------------------------------------------------------- checks shared with linear_cross_entropy


def check_loss_options(op: str, ignore_index, label_smoothing, z_loss, reduction) -> tuple[int, float, float]:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"{op}: ignore_index must be an integer, got {ignore_index!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if isinstance(z_loss, bool) or not isinstance(z_loss, numbers.Real) or not z_loss >= 0.0:
        raise ValueError(f"{op}: z_loss must be a number >= 0, got {z_loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return int(ignore_index), float(label_smoothing), float(z_loss)


def check_labels(op: str, labels: torch.Tensor, rows: int, vocab: int, ignore_index: int, device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{op}: labels must be a tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{op}: labels must be integers, got {labels.dtype}")
    if labels.numel() != rows:
        raise ValueError(f"{op}: labels have {labels.numel()} elements for {rows} rows of logits "
                         f"(labels must have the logits' shape without the vocabulary dimension)")
    if labels.device != device:
        raise ValueError(f"{op}: labels are on {labels.device} but the logits are on {device}")
    labels = labels.reshape(rows)
    if not torch.compiler.is_compiling() and rows:
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
        if bool(bad.any()):
            raise ValueError(f"{op}: label {int(labels[bad][0])} is outside [0, {vocab}) and is not "
                             f"ignore_index ({ignore_index})")
    return labels


def reduce_loss(losses: torch.Tensor, labels: torch.Tensor, ignore_index: int, reduction: str, shape) -> torch.Tensor:
    if reduction == "none":
        return losses.view(shape)
    total = losses.sum()
    if reduction == "sum":
        return total
    return total / (labels != ignore_index).sum()  # 0/0 = nan when every row is ignored, as in torch


# ---------------------------------------------------------------- the public function


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                  label_smoothing: float = 0.0, z_loss: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Loss of logits (..., V) against integer labels (...). Returns fp32: a scalar ("mean"/"sum")
    or per-row losses of labels' shape ("none")."""
    op = "cross_entropy"
    ignore_index, label_smoothing, z_loss = check_loss_options(op, ignore_index, label_smoothing, z_loss, reduction)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"{op}: logits must be a floating-point tensor, got {getattr(logits, 'dtype', type(logits))}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"{op}: logits must have a non-empty last (vocabulary) dimension, got {tuple(logits.shape)}")
    vocab = logits.shape[-1]
    rows = logits.numel() // vocab
    shape = labels.shape if isinstance(labels, torch.Tensor) else None
    labels = check_labels(op, labels, rows, vocab, ignore_index, logits.device)
    x = logits.reshape(rows, vocab)
    if use_reference(x):
        losses, _ = reference.cross_entropy_fwd(x, labels, ignore_index, label_smoothing, z_loss)
    else:
        losses, _ = torch.ops.fastlm.cross_entropy_fwd(x, labels, ignore_index, label_smoothing, z_loss)
    return reduce_loss(losses, labels, ignore_index, reduction, shape)
