"""Plain-torch references of the distillation losses (fastlm.ops.linear_distill_loss).

Per token, with student logits s and teacher logits t over the vocabulary and temperature T:
    log q = log_softmax(s / T)   (student),   log p = log_softmax(t / T)   (teacher)
    kl          KL(p || q) = sum p (log p - log q)                       (forward KL, Hinton)
    reverse_kl  KL(q || p) = sum q (log q - log p)
    jsd         beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q   (generalized JSD;
                beta = 0 is forward KL and beta = 1 reverse KL, the convention of TRL's GKD trainer)
times T^2 (so the gradients keep their size across temperatures, as Hinton et al. do).
top_k > 0: both distributions are reduced to k + 1 bins, the teacher's k most likely tokens and one
tail bin holding the rest of the mass (teacher: 1 - its top-k mass; student: its mass outside the
teacher's top-k tokens). An offline teacher gives those bins directly: log-probabilities (N, k + 1),
the tail last, and the top-k token ids (N, k).

Two things here:
- `linear_distill_loss`: the definition with the full logits in memory, differentiable by autograd:
  the oracle of the tests (run it in float64);
- `distill_loss`: the row-wise kernel of the chunked op (loss and d loss / d student logits of one
  chunk, gradients by formula), the CPU kernel when the extension lacks one and the CUDA fallback.
"""
from __future__ import annotations

import math

import torch

LOSSES = ("kl", "reverse_kl", "jsd")
KL, REVERSE_KL, JSD = 0, 1, 2


def _math(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))  # fp32 math (fp64 stays fp64)


def effective_loss(loss: int, beta: float) -> int:
    """jsd at beta 0 / 1 is forward / reverse KL."""
    if loss == JSD and beta == 0.0:
        return KL
    if loss == JSD and beta == 1.0:
        return REVERSE_KL
    return loss


def _xlogy_diff(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w (a - b) with 0 where w == 0 (0 log 0 = 0)."""
    return torch.where(w > 0, w * (a - b), torch.zeros_like(w))


def bin_divergence(loss: int, beta: float, lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """Per-row divergence between teacher and student log-probabilities over the same bins (last dim)."""
    loss = effective_loss(loss, beta)
    p, q = lp.exp(), lq.exp()
    if loss == KL:
        return _xlogy_diff(p, lp, lq).sum(-1)
    if loss == REVERSE_KL:
        return _xlogy_diff(q, lq, lp).sum(-1)
    lm = torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))
    return beta * _xlogy_diff(p, lp, lm).sum(-1) + (1 - beta) * _xlogy_diff(q, lq, lm).sum(-1)


def topk_bins(logits: torch.Tensor, index: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities (N, k + 1) of softmax(logits / T) at index (N, k) and of the rest (last column)."""
    a = _math(logits) / temperature
    lse = torch.logsumexp(a, -1, keepdim=True)
    tail = torch.logsumexp(a.scatter(-1, index, float("-inf")), -1, keepdim=True)
    return torch.cat([a.gather(-1, index), tail], -1) - lse


def teacher_top_k(logits: torch.Tensor, top_k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities (N, k + 1) with the tail last, token ids (N, k)) of the teacher's top-k."""
    index = logits.topk(top_k, dim=-1).indices
    return topk_bins(logits, index, temperature), index


def linear_distill_loss(student_hidden, student_weight, teacher_logits=None, *, teacher_hidden=None,
                        teacher_weight=None, teacher_topk=None, loss="kl", beta=0.5, temperature=1.0, top_k=0,
                        mask=None):
    """Per-row losses (N,) from the full logits (0 where mask is False): the definition, for the tests.

    The teacher is teacher_logits (N, V), or teacher_hidden @ teacher_weight^T, or teacher_topk =
    (log-probabilities (N, k + 1), ids (N, k)) (offline). Gradients flow to the student only.
    """
    code = LOSSES.index(loss)
    s = student_hidden @ student_weight.t()
    if teacher_topk is not None:
        lp, index = teacher_topk
        lp = lp.detach().to(s.dtype)
    else:
        t = teacher_logits if teacher_logits is not None else teacher_hidden @ teacher_weight.t()
        t = t.detach().to(s.dtype)
        if top_k:
            lp, index = teacher_top_k(t, top_k, temperature)
        else:
            lp, index = torch.log_softmax(t / temperature, -1), None
    lq = torch.log_softmax(s / temperature, -1) if index is None else topk_bins(s, index, temperature)
    per_row = bin_divergence(code, beta, lp, lq) * temperature ** 2
    return per_row if mask is None else torch.where(mask, per_row, torch.zeros_like(per_row))


# ---------------------------------------------------------------- the row-wise kernel (one chunk)


def distill_loss(student_logits: torch.Tensor, teacher: torch.Tensor, teacher_index: torch.Tensor | None,
                 row_grad: torch.Tensor, loss: int, beta: float, temperature: float, compute_grad: bool):
    """(per-row loss (n,) fp32, d sum(row_grad * loss) / d student_logits (n, V) in the logits' dtype).

    teacher: logits (n, V) when teacher_index is None, else tempered log-probabilities (n, k + 1) of
    the bins at teacher_index (n, k) and the tail. The gradient, with a = s / T, q = softmax(a), Q the
    student's bins, P the teacher's, L the divergence:
      kl:          dL/da_j = q_j - P_b q_j / Q_b                (b: the bin of token j)
      reverse_kl:  dL/da_j = q_j (log Q_b - log P_b - L)
      jsd:         dL/da_j = q_j (g_b - sum_c Q_c g_c),  g = (1 - beta) (log Q - log m)
    and d loss / d s = T^2 / T dL/da.
    """
    s = _math(student_logits)
    T = temperature
    a = s / T
    lq = torch.log_softmax(a, -1)
    if teacher_index is None:
        lp = torch.log_softmax(_math(teacher).to(s.dtype) / T, -1)
        lQ = lq
    else:
        lp = _math(teacher).to(s.dtype)
        lQ = topk_bins(s, teacher_index, T)
    div = bin_divergence(loss, beta, lp, lQ)
    out = (div * T * T).float() if s.dtype != torch.float64 else div * T * T
    if not compute_grad:
        return out, student_logits.new_empty(0)
    code = effective_loss(loss, beta)
    P, Q = lp.exp(), lQ.exp()
    if code == KL:
        u, w = torch.ones_like(lQ), P  # dL/da_j = q_j u_b - w_b q_j / Q_b
    elif code == REVERSE_KL:
        u, w = lQ - lp - div[:, None], torch.zeros_like(lQ)
    else:
        lm = torch.logaddexp(lp + math.log(beta), lQ + math.log1p(-beta))
        g = (1 - beta) * (lQ - lm)
        u, w = g - (Q * g).sum(-1, keepdim=True), torch.zeros_like(lQ)
    q = lq.exp()
    if teacher_index is None:
        grad = q * u - w
    else:
        k = teacher_index.shape[1]
        # Tail tokens: q_j u_tail - w_tail exp(log q_j - log Q_tail); top-k tokens: Q_b u_b - w_b.
        grad = q * u[:, k:] - w[:, k:] * (lq - lQ[:, k:]).exp()
        grad = grad.scatter(-1, teacher_index, Q[:, :k] * u[:, :k] - w[:, :k])
    grad = grad * (T * _math(row_grad).to(s.dtype))[:, None]
    return out, grad.to(student_logits.dtype)
