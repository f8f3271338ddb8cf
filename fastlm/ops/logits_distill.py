"""Distillation loss of logits already made: the student's (N, V) logits against the teacher's.

    loss = fastlm.ops.logits_distill_loss(student_logits, teacher_logits, loss="kl", temperature=2.0)

For heads that produce their logits anyway (the encoders' masked-LM head, with its bias and its
selection of masked positions); a plain linear head should use linear_distill_loss, which never stores
them. The same definitions (reference_distill.py) and the same row kernel (C++ on CPU, Triton on CUDA):
the forward makes each row's loss and its gradient for a unit upstream gradient, held until the backward.
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_distill as reference
from fastlm.ops.linear_distill import LOSSES, _check_float, _check_options, _row_kernel


class _LogitsDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, teacher, index, loss, beta, temperature):
        ones = logits.new_ones(logits.shape[0], dtype=torch.promote_types(logits.dtype, torch.float32))
        rows, grad = _row_kernel(logits.detach(), teacher, index, ones, loss, beta, temperature,
                                 ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        (grad,) = ctx.saved_tensors
        return (grad * grad_rows.to(grad.dtype)[:, None]).to(grad.dtype), None, None, None, None, None


def logits_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, loss: str = "kl",
                        beta: float = 0.5, temperature: float = 1.0, top_k: int = 0,
                        reduction: str = "mean") -> torch.Tensor:
    """The divergence between softmax(teacher_logits / T) and softmax(student_logits / T), times T^2,
    per row of (..., V) logits (the teacher's get no gradient). loss, beta, top_k as in
    linear_distill_loss. Returns fp32 (fp64 for fp64 inputs): a scalar ("mean", "sum") or per row."""
    op = "logits_distill_loss"
    _check_options(op, loss, beta, temperature, top_k, reduction, None)
    _check_float(op, "student_logits", student_logits)
    _check_float(op, "teacher_logits", teacher_logits)
    if student_logits.dim() < 1 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"{op}: student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (..., vocab)")
    vocab = student_logits.shape[-1]
    if top_k >= vocab:
        raise ValueError(f"{op}: top_k ({top_k}) must be below the vocabulary size ({vocab}); 0 = full distribution")
    shape = student_logits.shape[:-1]
    s = student_logits.reshape(-1, vocab)
    t = teacher_logits.detach().reshape(-1, vocab).to(s.device)
    index = None
    if top_k:
        t, index = reference.teacher_top_k(t, int(top_k), float(temperature))
        t = t if t.dtype == torch.float64 else t.float()
    rows = _LogitsDistill.apply(s, t, index, LOSSES.index(loss), float(beta), float(temperature))
    if reduction == "none":
        return rows.view(shape)
    return rows.sum() if reduction == "sum" else rows.mean()
