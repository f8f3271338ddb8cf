"""Knowledge distillation through the LM head, fused and chunked over tokens.

    loss = fastlm.ops.linear_distill_loss(student_hidden, lm_head.weight, teacher_logits, loss="jsd")

equals the divergence between softmax(teacher / T) and softmax(student_hidden @ weight.T / T)
(reference_distill.py has the definitions: kl, reverse_kl, generalized jsd, T^2 scaling, top-k with a
tail bin), but only one chunk of chunk_size x V student logits exists at a time. Given the teacher's
hidden states and head instead of its logits, the teacher's logits are computed chunk by chunk too,
so neither model's (tokens x vocab) logits are ever stored. An offline teacher (top-k log-probabilities
and ids, fastlm distill --save-teacher) needs no teacher logits at all.

Per chunk: student logits = h_c @ W^T, teacher logits (or its top-k bins), then the row-wise kernel
distill_loss (C++ on CPU, Triton on CUDA) gives the per-row loss and dlogits; as in
linear_cross_entropy the gradients are made in the forward for reduction "mean"/"sum" (held until the
backward, scaled there by the upstream gradient) or recomputed chunk by chunk in the backward otherwise.
The teacher gets no gradient (it is frozen).
"""
from __future__ import annotations

import numbers

import torch

from fastlm.ops import reference_cross_entropy as reference_ce
from fastlm.ops import reference_distill as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import register_backward_op, register_op
from fastlm.ops.cross_entropy import REDUCTIONS
from fastlm.ops.linear_cross_entropy import _accumulate, _chunks, default_chunk_size
from fastlm.ops.matmul import cpu_gemm16_is_native

LOSSES = reference.LOSSES
# Each chunk streams both heads (V x d) through its GEMMs: below ~128 rows a chunk's GEMMs are bound by that
# stream rather than by arithmetic (at V = 50k, 83 rows cost ~15% more time than 128 on one CPU thread).
MIN_CHUNK_ROWS = 128


def default_distill_chunk_size(vocab: int) -> int:
    return max(MIN_CHUNK_ROWS, default_chunk_size(vocab))


def _fake_distill_loss(student_logits, teacher, teacher_index, row_grad, loss, beta, temperature, compute_grad):
    n = student_logits.shape[0]
    grad = student_logits.new_empty(student_logits.shape if compute_grad else (0,))
    return student_logits.new_empty(n, dtype=torch.float32), grad


def _triton():
    from fastlm.kernels import distill

    return distill.distill_loss


register_op("distill_loss", reference=reference.distill_loss, triton=_triton, fake=_fake_distill_loss)


def _row_kernel(logits, teacher, teacher_index, row_grad, loss, beta, temperature, compute_grad):
    if use_reference(logits, teacher):  # fp64 (gradcheck, oracles) or FASTLM_BACKEND=reference
        return reference.distill_loss(logits, teacher, teacher_index, row_grad, loss, beta, temperature, compute_grad)
    return torch.ops.fastlm.distill_loss(logits, teacher, teacher_index, row_grad, loss, beta, temperature,
                                         compute_grad)


def _teacher_chunk(teacher, teacher_weight, teacher_index, s, e, top_k, temperature, buffer):
    """The chunk's teacher for the row kernel: its logits (computed into buffer from its hidden states and
    head), or its top-k bins (log-probabilities, ids)."""
    if teacher_index is not None:  # offline: the bins as stored
        return teacher[s:e], teacher_index[s:e]
    t = teacher[s:e] if teacher_weight is None else torch.mm(teacher[s:e], teacher_weight.t(), out=buffer[: e - s])
    if top_k:
        lp, index = reference.teacher_top_k(t, top_k, temperature)
        return lp.float() if lp.dtype != torch.float64 else lp, index
    return t, None


def _cross_entropy(logits, labels, grad_rows, need_grad):
    """The hard-label cross-entropy of one chunk: (per-row loss, dlogits for grad_rows or None)."""
    if use_reference(logits):
        loss, lse = reference_ce.cross_entropy_fwd(logits, labels, -100, 0.0, 0.0)
        return loss, (reference_ce.cross_entropy_bwd(grad_rows, logits, labels, lse, -100, 0.0, 0.0) if need_grad else None)
    loss, lse = torch.ops.fastlm.cross_entropy_fwd(logits, labels, -100, 0.0, 0.0)
    return loss, (torch.ops.fastlm.cross_entropy_bwd(grad_rows, logits, labels, lse, -100, 0.0, 0.0) if need_grad else None)


def _run(grad_rows, hidden, weight, teacher, teacher_weight, teacher_index, labels, ce_weight, loss, beta,
         temperature, top_k, chunk_size, grad_hidden, grad_weight, losses=None):
    """One pass over the chunks: per-row losses into losses (when given), gradients for per-row upstream
    gradients grad_rows into grad_hidden / grad_weight (when grad_weight is not empty). With labels and
    ce_weight > 0, ce_weight x the cross-entropy of the same logits is added (the hard-label loss)."""
    need_grad = grad_weight.numel() > 0
    rows = min(hidden.shape[0], chunk_size)
    buffer = hidden.new_empty(rows, weight.shape[0])  # one chunk's logits, reused
    # The teacher's chunk logits, reused too (a fresh (chunk, V) block per chunk costs page faults on CPU).
    t_buffer = None if teacher_weight is None else teacher.new_empty(rows, teacher_weight.shape[0])
    with torch.no_grad():
        for s, e in _chunks(hidden.shape[0], chunk_size):
            logits = torch.mm(hidden[s:e], weight.t(), out=buffer[: e - s])
            t, index = _teacher_chunk(teacher, teacher_weight, teacher_index, s, e, top_k, temperature,
                                      t_buffer)
            row_loss, dlogits = _row_kernel(logits, t, index, grad_rows[s:e], loss, beta, temperature, need_grad)
            if ce_weight and labels is not None:
                ce, dce = _cross_entropy(logits, labels[s:e], grad_rows[s:e] * ce_weight, need_grad)
                row_loss = row_loss + ce_weight * ce.to(row_loss.dtype)
                if need_grad:
                    dlogits += dce
            if losses is not None:
                losses[s:e] = row_loss
            if need_grad:
                _accumulate(dlogits, hidden[s:e], weight, grad_hidden[s:e], grad_weight)


def _unit_grads_buffers(hidden, weight, wanted: bool):
    if not wanted:
        return hidden.new_empty(0), weight.new_empty(0, dtype=torch.float32)
    dtype = torch.promote_types(weight.dtype, torch.float32)  # fp32 accumulation (fp64 stays fp64)
    return torch.empty_like(hidden), torch.zeros(weight.shape, dtype=dtype, device=weight.device)


def _fwd(hidden, weight, teacher, teacher_weight, teacher_index, row_weight, labels, loss, beta, temperature, top_k,
         chunk_size, ce_weight, grads_in_forward):
    n = hidden.shape[0]
    losses = hidden.new_empty(n, dtype=torch.promote_types(hidden.dtype, torch.float32))
    grad_hidden, grad_weight = _unit_grads_buffers(hidden, weight, grads_in_forward)
    _run(row_weight, hidden, weight, teacher, teacher_weight, teacher_index, labels, ce_weight, loss, beta,
         temperature, top_k, chunk_size, grad_hidden, grad_weight, losses)
    return losses * row_weight.to(losses.dtype), grad_hidden, grad_weight


def _uniform_over_counted_rows(grad_loss, row_weight) -> bool:
    g = grad_loss[row_weight != 0]
    return g.numel() == 0 or bool((g == g[0]).all())


def _bwd(grad_loss, hidden, weight, teacher, teacher_weight, teacher_index, row_weight, labels, grad_hidden_unit,
         grad_weight_unit, loss, beta, temperature, top_k, chunk_size, ce_weight):
    if grad_weight_unit.numel() and _uniform_over_counted_rows(grad_loss, row_weight):
        g = grad_loss.to(grad_weight_unit.dtype)
        counted = g[row_weight != 0]
        scale = counted[0] if counted.numel() else g.new_zeros(())
        grad_hidden = (grad_hidden_unit.to(g.dtype) * g[:, None]).to(hidden.dtype)
        return grad_hidden, (grad_weight_unit * scale).to(weight.dtype)
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                              device=weight.device)
    rows = grad_loss.to(torch.promote_types(grad_loss.dtype, torch.float32)) * row_weight
    _run(rows, hidden, weight, teacher, teacher_weight, teacher_index, labels, ce_weight, loss, beta, temperature,
         top_k, chunk_size, grad_hidden, grad_weight)
    return grad_hidden, grad_weight.to(weight.dtype)


def _fake_fwd(hidden, weight, teacher, teacher_weight, teacher_index, row_weight, labels, loss, beta, temperature,
              top_k, chunk_size, ce_weight, grads_in_forward):
    grad_hidden, grad_weight = _unit_grads_buffers(hidden, weight, grads_in_forward)
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    return hidden.new_empty(hidden.shape[0], dtype=dtype), grad_hidden, grad_weight


register_op("linear_distill_fwd", reference=_fwd, triton=None, fake=_fake_fwd)
register_op("linear_distill_bwd", reference=_bwd, triton=None,
            fake=lambda g, hidden, weight, *rest: (torch.empty_like(hidden), torch.empty_like(weight)))


def _setup(ctx, inputs, output):
    (hidden, weight, teacher, teacher_weight, teacher_index, row_weight, labels, loss, beta, temperature, top_k,
     chunk_size, ce_weight, _gif) = inputs
    _losses, grad_hidden_unit, grad_weight_unit = output
    ctx.save_for_backward(hidden, weight, teacher, teacher_weight, teacher_index, row_weight, labels,
                          grad_hidden_unit)
    # Held outside the saved tensors: the first backward may hand it over as the weight's gradient (autograd
    # takes it over as .grad and may add into it later), so it is dropped then; a later backward of a
    # retained graph recomputes.
    ctx.grad_weight_unit = grad_weight_unit.detach()
    ctx.params = (loss, beta, temperature, top_k, chunk_size, ce_weight)
    ctx.set_materialize_grads(False)  # no zero (V, d) gradient for the unused grad_weight_unit output


def _backward(ctx, grad_loss, _g1, _g2):
    if grad_loss is None:  # (gradients are not materialized) nothing flows back through the losses
        return (None,) * 14
    saved = ctx.saved_tensors
    weight, row_weight, grad_hidden_unit = saved[1], saved[5], saved[7]
    grad_weight_unit = ctx.grad_weight_unit
    if (grad_weight_unit.numel() and grad_weight_unit.dtype == weight.dtype
            and bool((grad_loss[row_weight != 0] == 1).all())):
        # loss.backward() of a mean / sum: the forward's gradients as they are, no second V x d copy.
        ctx.grad_weight_unit = grad_weight_unit.new_empty(0)
        grad_hidden = grad_hidden_unit * (row_weight != 0).to(grad_hidden_unit.dtype)[:, None]
        return (grad_hidden, grad_weight_unit) + (None,) * 12
    grad_hidden, grad_weight = torch.ops.fastlm.linear_distill_bwd(grad_loss, *saved, grad_weight_unit, *ctx.params)
    return (grad_hidden, grad_weight) + (None,) * 12


torch.library.register_autograd("fastlm::linear_distill_fwd", _backward, setup_context=_setup)
register_backward_op("linear_distill_bwd")

# ---------------------------------------------------------------- the public function


def _check_float(op, name, t):
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t))}")


def _check_options(op, loss, beta, temperature, top_k, reduction, chunk_size):
    if loss not in LOSSES:
        raise ValueError(f"{op}: loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"{op}: beta must be in [0, 1], got {beta!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"{op}: temperature must be a number > 0, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"{op}: top_k must be an integer >= 0, got {top_k!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{op}: chunk_size must be a positive integer, got {chunk_size!r}")


def _teacher_inputs(op, rows, vocab, device, teacher_logits, teacher_hidden, teacher_weight, teacher_topk, top_k):
    """(teacher, teacher_weight, teacher_index) as the op takes them, checked."""
    if teacher_topk is not None:
        others = (teacher_logits, teacher_hidden, teacher_weight)
    elif teacher_weight is not None:
        others = (teacher_logits,) if teacher_hidden is not None else ()
    else:
        others = (teacher_hidden,)
    if any(x is not None for x in others) or (teacher_topk is None and teacher_weight is None
                                              and teacher_logits is None):
        raise ValueError(f"{op}: give exactly one teacher: teacher_logits, teacher_hidden with teacher_weight, "
                         f"or teacher_topk")
    if teacher_topk is not None:
        if not isinstance(teacher_topk, (tuple, list)) or len(teacher_topk) != 2:
            raise TypeError(f"{op}: teacher_topk must be (log_probs (N, k + 1), token_ids (N, k))")
        logp, index = teacher_topk
        _check_float(op, "teacher_topk log_probs", logp)
        k = index.shape[-1] if isinstance(index, torch.Tensor) else -1
        if not isinstance(index, torch.Tensor) or index.is_floating_point() or index.numel() != rows * k \
                or logp.numel() != rows * (k + 1) or k < 1:
            raise ValueError(f"{op}: teacher_topk must be log_probs ({rows}, k + 1) and token ids ({rows}, k), got "
                             f"{tuple(getattr(logp, 'shape', ()))} and {tuple(getattr(index, 'shape', ()))}")
        if top_k and top_k != k:
            raise ValueError(f"{op}: top_k={top_k} but the offline teacher has k={k}")
        index = index.reshape(rows, k).to(device=device, dtype=torch.long)
        if rows and bool(((index < 0) | (index >= vocab)).any()):
            raise ValueError(f"{op}: teacher_topk token ids must be in [0, {vocab})")
        return logp.reshape(rows, k + 1).to(device), None, index
    if top_k >= vocab:
        raise ValueError(f"{op}: top_k ({top_k}) must be below the vocabulary size ({vocab}); 0 = full distribution")
    if teacher_weight is None:
        _check_float(op, "teacher_logits", teacher_logits)
        if teacher_logits.shape[-1] != vocab or teacher_logits.numel() != rows * vocab:
            raise ValueError(f"{op}: teacher_logits must be ({rows} tokens, {vocab}), got {tuple(teacher_logits.shape)}")
        return teacher_logits.detach().reshape(rows, vocab).to(device), None, None
    hidden = teacher_hidden if teacher_hidden is not None else teacher_logits
    _check_float(op, "teacher_hidden", hidden)
    _check_float(op, "teacher_weight", teacher_weight)
    if teacher_weight.dim() != 2 or teacher_weight.shape[0] != vocab:
        raise ValueError(f"{op}: teacher_weight must be ({vocab}, teacher hidden), got {tuple(teacher_weight.shape)}")
    d = teacher_weight.shape[1]
    if hidden.shape[-1] != d or hidden.numel() != rows * d:
        raise ValueError(f"{op}: teacher_hidden must be ({rows} tokens, {d}), got {tuple(hidden.shape)}")
    if hidden.dtype != teacher_weight.dtype:
        raise TypeError(f"{op}: teacher_hidden ({hidden.dtype}) and teacher_weight ({teacher_weight.dtype}) differ")
    return hidden.detach().reshape(rows, d).to(device), teacher_weight.detach().to(device), None


def linear_distill_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                        teacher_logits: torch.Tensor | None = None, *, teacher_hidden: torch.Tensor | None = None,
                        teacher_weight: torch.Tensor | None = None, teacher_topk=None, loss: str = "kl",
                        beta: float = 0.5, temperature: float = 1.0, top_k: int = 0,
                        labels: torch.Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                        chunk_size: int | None = None, grads_in_forward: bool | None = None,
                        ce_weight: float = 0.0) -> torch.Tensor:
    """Distillation loss of the student head (student_hidden @ student_weight^T) against a frozen teacher.

    student_hidden (..., d), student_weight (V, d). The teacher, one of: teacher_logits (..., V); its
    hidden states (..., d_t) with teacher_weight (V, d_t) (the third argument is read as hidden states
    when teacher_weight is given); teacher_topk = (log-probabilities (..., k + 1) at temperature, tail
    last; token ids (..., k)) from an offline store. loss "kl" (KL(teacher || student)), "reverse_kl",
    "jsd" (generalized, weight beta on the teacher; 0 / 1 = kl / reverse_kl), at temperature T (times
    T^2); top_k > 0 compares the teacher's top-k tokens plus one tail bin. labels (...) optional: rows
    labelled ignore_index count for nothing ("mean" divides by the counted rows). ce_weight > 0 (needs
    labels) adds ce_weight x the cross-entropy of the student's logits against labels, per row, in the
    same pass over the logits (a hard-label loss without a second head pass). chunk_size: tokens per
    chunk (default: 2^22 / V, at least 128). Returns fp32 (fp64 for fp64 inputs): a scalar, or per-row
    losses ("none").
    """
    op = "linear_distill_loss"
    _check_options(op, loss, beta, temperature, top_k, reduction, chunk_size)
    _check_float(op, "student_hidden", student_hidden)
    _check_float(op, "student_weight", student_weight)
    if student_weight.dim() != 2 or student_weight.shape[0] == 0:
        raise ValueError(f"{op}: student_weight must be (vocab, hidden), got {tuple(student_weight.shape)}")
    vocab, d = student_weight.shape
    if student_hidden.dim() < 1 or student_hidden.shape[-1] != d:
        raise ValueError(f"{op}: student_hidden's last dimension must be student_weight's ({d}), "
                         f"got {tuple(student_hidden.shape)}")
    if student_hidden.device != student_weight.device:
        raise ValueError(f"{op}: student_hidden is on {student_hidden.device} but student_weight on "
                         f"{student_weight.device}")
    rows = student_hidden.numel() // d
    shape = student_hidden.shape[:-1]
    device = student_hidden.device
    teacher, t_weight, t_index = _teacher_inputs(op, rows, vocab, device, teacher_logits, teacher_hidden,
                                                 teacher_weight, teacher_topk, int(top_k))
    if labels is None:
        counted = torch.ones(rows, dtype=torch.bool, device=device)
    else:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.numel() != rows:
            raise ValueError(f"{op}: labels must be {rows} integers (the hidden states' shape without d)")
        counted = labels.reshape(rows).to(device) != ignore_index
    if isinstance(ce_weight, bool) or not isinstance(ce_weight, numbers.Real) or not ce_weight >= 0:
        raise ValueError(f"{op}: ce_weight must be a number >= 0, got {ce_weight!r}")
    hard = None
    if ce_weight:
        if labels is None:
            raise ValueError(f"{op}: ce_weight > 0 needs labels (the hard-label cross-entropy)")
        hard = torch.where(counted, labels.reshape(rows).to(device).long(), 0)  # ignored rows: masked by row_weight
        if rows and bool(((hard < 0) | (hard >= vocab)).any()):
            raise ValueError(f"{op}: a label is outside [0, {vocab}) and is not ignore_index ({ignore_index})")
    h, weight = student_hidden.reshape(rows, d), student_weight
    if torch.is_autocast_enabled(device.type):  # what an autocast nn.Linear head would compute in
        dtype = torch.get_autocast_dtype(device.type)
        h, weight = h.to(dtype), weight.to(dtype)
    elif h.dtype != weight.dtype:
        raise TypeError(f"{op}: student_hidden ({h.dtype}) and student_weight ({weight.dtype}) dtypes differ")
    if device.type == "cpu" and not cpu_gemm16_is_native(h.dtype):  # e.g. bf16 on an AVX2 CPU (see matmul)
        h, weight = h.float(), weight.float()
        if t_weight is not None and t_weight.dtype in (torch.bfloat16, torch.float16):
            teacher, t_weight = teacher.float(), t_weight.float()
    if grads_in_forward is None:
        grads_in_forward = reduction != "none" and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    row_weight = counted.to(torch.promote_types(h.dtype, torch.float32))
    count = counted.sum()
    if reduction == "mean":  # 1 / count in the row weights: the upstream gradient of the sum is then 1, and the
        row_weight = row_weight / count.clamp(min=1)  # backward hands over the forward's gradients without a copy
    losses = torch.ops.fastlm.linear_distill_fwd(h, weight, teacher, t_weight, t_index, row_weight, hard,
                                                 LOSSES.index(loss), float(beta), float(temperature), int(top_k),
                                                 chunk_size or default_distill_chunk_size(vocab), float(ce_weight),
                                                 bool(grads_in_forward))[0]
    if reduction == "none":
        return losses.view(shape)
    total = losses.sum()
    if reduction == "sum":
        return total
    return torch.where(count > 0, total, torch.nan)  # no counted row: nan, as torch's mean over nothing
