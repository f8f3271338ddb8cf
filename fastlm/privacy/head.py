"""The fused linear + cross-entropy head under DP-SGD: per-sample norms of its weight gradient
without storing the (tokens x vocab) logits.

    losses = head_losses(hidden, weight, targets, record)   # per-token losses (fp32); record(HeadUse)

The forward is fastlm.ops.linear_cross_entropy's (chunked, logits never stored). The backward walks
the vocabulary in chunks: logits_c = h W_c^T, dlogits_c = softmax_c - onehot_c, grad_h += dlogits_c W_c,
and for the weight either
- "direct": the per-sample gradients dlogits_b^T h_b (B, V, d) when they are small (the same FLOPs
  as the weight gradient itself; the clipped sum is then a weighted sum of them), or
- "ghost": the per-sample Gram matrices dlogits_b dlogits_b^T (B, L, L); the clipped sum recomputes
  the chunks once more with the clipping factors applied.
Every count is in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
# Logits computed at once (4 MiB in fp32): the passes below keep a few such temporaries alive.
CHUNK_ELEMENTS = 1 << 20
# Per-sample head gradients are materialized ("direct") up to this many elements (256 MiB in fp32).
DIRECT_HEAD_ELEMENTS = 1 << 26


@dataclass
class HeadUse:
    h: torch.Tensor           # (B, L, d) fp32
    weight: torch.Tensor      # (V, d)
    labels: torch.Tensor      # (B, L)
    lse: torch.Tensor         # (B, L) fp32
    grad_row: torch.Tensor    # (B, L) fp32, zero where the label is ignored
    per_sample: torch.Tensor | None = None  # (B, V, d) (direct)
    gram: torch.Tensor | None = None        # (B, L, L) (ghost)


def _vocab_chunks(vocab: int, tokens: int):
    size = max(16, CHUNK_ELEMENTS // max(1, tokens))
    for start in range(0, vocab, size):
        yield start, min(vocab, start + size)


def _dlogits(h, w_chunk, start, labels, lse, grad_row):
    """(softmax - onehot) * grad_row for the vocabulary columns [start, start + len(w_chunk))."""
    d = (h @ w_chunk.t()).sub_(lse[:, None]).exp_()
    inside = (labels >= start) & (labels < start + w_chunk.shape[0])
    rows = inside.nonzero().flatten()
    d[rows, labels[rows] - start] -= 1.0
    return d.mul_(grad_row[:, None])


def _direct(B: int, L: int, V: int, d: int) -> bool:
    """Materialize the per-sample head gradients (B, V, d) only when they are small next to the head's
    input (V <= 4 L) and under DIRECT_HEAD_ELEMENTS: they cost no extra FLOPs, but for a large vocabulary
    they would be most of the step's memory; the Gram matrices cost one more pass over the vocabulary."""
    return V <= 4 * L and B * V * d <= DIRECT_HEAD_ELEMENTS


def _sample_chunks(batch: int, per_sample_rows: int, vocab: int):
    """Chunks of whole samples whose logits hold about CHUNK_ELEMENTS numbers."""
    size = max(1, CHUNK_ELEMENTS // max(1, per_sample_rows * vocab))
    for start in range(0, batch, size):
        yield start, min(batch, start + size)


def _unit_dlogits(logits, labels):
    """(per-row loss, lse, softmax - onehot) of fp32/fp64 logits; ignored rows (label < 0) get zeros."""
    counted = labels >= 0
    if logits.dtype == torch.float64:  # no native kernel
        lse = torch.logsumexp(logits, 1)
        target = logits.gather(1, labels.clamp_min(0)[:, None])[:, 0]
        d = torch.exp(logits - lse[:, None])
        rows = counted.nonzero().flatten()
        d[rows, labels[rows]] -= 1.0
        return (lse - target) * counted, lse, d * counted[:, None]
    native = labels.masked_fill(~counted, IGNORE)
    loss, lse = torch.ops.fastlm.cross_entropy_fwd(logits, native, IGNORE, 0.0, 0.0)
    d = torch.ops.fastlm.cross_entropy_bwd(torch.ones_like(lse), logits, native, lse, IGNORE, 0.0, 0.0)
    return loss, lse, d


class _HeadDP(torch.autograd.Function):
    """Forward: per chunk of whole samples, the logits, the loss, and for a unit upstream gradient per
    row grad_h and the per-sample weight gradients (direct) or Gram matrices (ghost), as the fused
    head computes its gradients in the forward. Backward: scaled by the upstream gradient when it is
    the same for every counted row (a mean or sum), else recomputed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, batch_size, record):
        B = batch_size
        h = hidden if hidden.dtype == torch.float64 else hidden.float()
        w = weight.to(h.dtype)
        N, d = h.shape
        L, V = N // B, w.shape[0]
        safe_labels = labels.masked_fill(labels == IGNORE, -1)
        direct = _direct(B, L, V, d)
        per_sample = h.new_empty(B, V, d) if direct else None
        gram = None if direct else h.new_empty(B, L, L)
        losses, lse, grad_h = h.new_empty(N), h.new_empty(N), torch.empty_like(h)
        for s, e in _sample_chunks(B, L, V):
            rows = slice(s * L, e * L)
            loss, lse[rows], dl = _unit_dlogits(h[rows] @ w.t(), safe_labels[rows])
            losses[rows] = loss
            torch.mm(dl, w, out=grad_h[rows])
            dlb, hb = dl.view(e - s, L, V), h[rows].view(e - s, L, d)
            if direct:
                torch.bmm(dlb.transpose(1, 2), hb, out=per_sample[s:e])
            else:
                torch.bmm(dlb, dlb.transpose(1, 2), out=gram[s:e])
        ctx.save_for_backward(h, weight, safe_labels, lse, grad_h)
        ctx.batch_size, ctx.record, ctx.unit, ctx.hidden_dtype = B, record, (per_sample, gram), hidden.dtype
        return losses.to(torch.float32) if hidden.dtype != torch.float64 else losses

    @staticmethod
    def backward(ctx, grad_losses):
        h, weight, labels, lse, grad_h_unit = ctx.saved_tensors
        per_sample, gram = ctx.unit
        record, ctx.record, ctx.unit = ctx.record, None, None
        B = ctx.batch_size
        N, d = h.shape
        L = N // B
        grad_row = grad_losses.to(h.dtype) * (labels >= 0)
        counted = grad_row[labels >= 0]
        if counted.numel() and not bool((counted == counted[0]).all()):  # per-row upstream gradients
            grad_h, per_sample, gram = _recompute(h, weight, labels, lse, grad_row, B, per_sample is not None)
        else:
            scale = counted[0] if counted.numel() else grad_row.new_zeros(())
            grad_h = grad_h_unit * scale
            per_sample = per_sample.mul_(scale) if per_sample is not None else None
            gram = gram.mul_(scale * scale) if gram is not None else None
        record(HeadUse(h.view(B, L, d), weight, labels.view(B, L), lse.view(B, L), grad_row.view(B, L),
                       per_sample, gram))
        return grad_h.to(ctx.hidden_dtype), None, None, None, None


def _recompute(h, weight, labels, lse, grad_row, B, direct):
    """grad_h and the per-sample weight gradients (or Grams) for per-row upstream gradients."""
    N, d = h.shape
    L, V = N // B, weight.shape[0]
    grad_h = torch.zeros_like(h)
    per_sample = h.new_empty(B, V, d) if direct else None
    gram = None if direct else h.new_zeros(B, L, L)
    hb = h.view(B, L, d)
    for s, e in _vocab_chunks(V, N):
        w = weight[s:e].to(h.dtype)
        dl = _dlogits(h, w, s, labels, lse, grad_row)
        grad_h.addmm_(dl, w)
        dlb = dl.view(B, L, e - s)
        if direct:
            torch.bmm(dlb.transpose(1, 2), hb, out=per_sample[:, s:e])
        else:
            gram.baddbmm_(dlb, dlb.transpose(1, 2))
    return grad_h, per_sample, gram


def head_losses(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, batch_size: int, record):
    """Per-token losses of hidden (N, d) @ weight.T against labels (N,); weight gets no gradient
    through autograd: record(HeadUse) receives what its per-sample gradients need."""
    return _HeadDP.apply(hidden, weight.detach(), labels, batch_size, record)


def head_sq_norms(use: HeadUse) -> torch.Tensor:
    if use.per_sample is not None:  # a norm reduction: no (B, V, d) temporary of squares
        return torch.linalg.vector_norm(use.per_sample.flatten(1), dim=1).pow(2)
    return (use.gram * (use.h @ use.h.transpose(1, 2))).sum((1, 2))


def head_embedding_dot(use: HeadUse, ids: torch.Tensor, g_emb: torch.Tensor) -> torch.Tensor:
    """<head grad_b, embedding grad_b> for a tied weight: sum_t <P_b[id_t], ge_t>."""
    ids, ge = ids.long(), g_emb.to(use.h.dtype)
    if use.per_sample is not None:
        rows = torch.gather(use.per_sample, 1, ids[:, :, None].expand(-1, -1, use.per_sample.shape[2]))
        return (rows * ge).sum((1, 2))
    w_at = use.weight.to(use.h.dtype)[ids]                                   # (B, Lt, d)
    logits_at = use.h @ w_at.transpose(1, 2)                         # (B, Ls, Lt): h_s . W[id_t]
    d_at = torch.exp(logits_at - use.lse[:, :, None]) - (use.labels[:, :, None] == ids[:, None, :]).to(use.h.dtype)
    d_at = d_at * use.grad_row[:, :, None]
    return (d_at * (use.h @ ge.transpose(1, 2))).sum((1, 2))


def head_clipped_sum(use: HeadUse, factors: torch.Tensor, out: torch.Tensor) -> None:
    """out += sum_b factors_b * (dlogits_b^T h_b)."""
    f = factors.to(use.h.dtype)
    if use.per_sample is not None:
        out.add_(torch.tensordot(f, use.per_sample, dims=1).to(out.dtype))
        return
    B, L, d = use.h.shape
    w = use.weight.to(use.h.dtype)
    scaled = use.grad_row * f[:, None]  # a sample's factor scales its rows' dlogits
    for s, e in _sample_chunks(B, L, w.shape[0]):  # recompute each chunk's logits, whole rows at a time
        h = use.h[s:e].reshape(-1, d)
        logits, labels, lse, rows = h @ w.t(), use.labels[s:e].flatten(), use.lse[s:e].flatten(), scaled[s:e].flatten()
        if logits.dtype == torch.float64:
            dl = _dlogits(h, w, 0, labels, lse, rows)
        else:  # the native cross-entropy backward: softmax - onehot, scaled per row, in one pass
            dl = torch.ops.fastlm.cross_entropy_bwd(rows, logits, labels.masked_fill(labels < 0, IGNORE), lse,
                                                    IGNORE, 0.0, 0.0)
        out.addmm_(dl.t().to(out.dtype), h.to(out.dtype))
