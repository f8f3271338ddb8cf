"""Per-sample gradient norms and clipped gradient sums of one parameter, without per-sample gradients.

A parameter's gradient is the sum of its *uses* in the forward (a tied weight is used by the
embedding and by the head; an ALBERT layer by every block). Each use keeps what its backward saw,
shaped per sample (rows of a batch are samples; a sample's tokens are contiguous):

    LinearUse(x, g)            y = x @ W.T         x (B, L, in), g = dL/dy (B, L, out)
    EmbeddingUse(ids, g)       y = W[ids]          ids (B, L),   g (B, L, dim)
    DenseUse(per_sample)       small parameters (biases, norm weights): their (B, *shape) grads
    HeadUse(h, W, d)           the fused linear + cross-entropy head, see fastlm.privacy.head

and the parameter's per-sample squared norm is ||sum of its uses' per-sample grads||^2, computed as
book-keeping / ghost clipping do (Li et al. 2021, Bu et al. 2023):
- linear: "ghost" sum((x x^T) * (g g^T)) (B L^2 (in + out) FLOPs), or the per-sample gradients
  g^T x a few samples at a time (B L in out FLOPs), whichever is cheaper; never a (B, out, in) tensor
  for the whole batch;
- embedding: the rows of a sample's gradient are sums of g over equal ids: a segment sum;
- cross terms between uses of one tensor (tied weights) from gathered inner products.

Then, once every parameter's norm is known and the clipping factors f (B,) are chosen, the clipped
sum sum_b f_b grad_b is one GEMM per linear use ((f * g)^T x), an index_add per embedding use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Per-sample gradients computed at once for the direct method: at most this many elements.
DIRECT_CHUNK_ELEMENTS = 1 << 24


@dataclass
class LinearUse:
    x: torch.Tensor   # (B, L, in)
    g: torch.Tensor   # (B, L, out)


@dataclass
class EmbeddingUse:
    ids: torch.Tensor  # (B, L) int
    g: torch.Tensor    # (B, L, dim)


@dataclass
class DenseUse:
    per_sample: torch.Tensor  # (B, *param.shape)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def concat_tokens(uses: list) -> list:
    """Uses of one kind merged along the token axis: sum_u g_u^T x_u = [g_1 g_2]^T [x_1 x_2]."""
    if len(uses) < 2:
        return uses
    kind = type(uses[0])
    if kind is LinearUse:
        return [LinearUse(torch.cat([_f32(u.x) for u in uses], 1), torch.cat([_f32(u.g) for u in uses], 1))]
    if kind is EmbeddingUse:
        return [EmbeddingUse(torch.cat([u.ids for u in uses], 1), torch.cat([_f32(u.g) for u in uses], 1))]
    if kind is DenseUse:
        return [DenseUse(sum(_f32(u.per_sample) for u in uses))]
    return uses


# ------------------------------------------------------------------ squared norms


def linear_sq_norms(use: LinearUse) -> torch.Tensor:
    """||g_b^T x_b||_F^2 for every sample b (fp32 or fp64, (B,))."""
    x, g = _f32(use.x), _f32(use.g)
    B, L, n_in = x.shape
    n_out = g.shape[-1]
    if L * (n_in + n_out) <= n_in * n_out:  # ghost: the T x T Gram matrices are cheaper
        return ((x @ x.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2))
    per_chunk = max(1, DIRECT_CHUNK_ELEMENTS // max(1, n_in * n_out))
    out = x.new_empty(B)
    for s in range(0, B, per_chunk):
        grads = g[s:s + per_chunk].transpose(1, 2) @ x[s:s + per_chunk]  # (b, out, in)
        out[s:s + per_chunk] = grads.pow(2).sum((1, 2))
    return out


def embedding_sq_norms(use: EmbeddingUse, num_rows: int) -> torch.Tensor:
    """||sum over a sample's tokens of onehot(id) g^T||^2: g summed per (sample, id), then squared."""
    g = _f32(use.g)
    B, L, dim = g.shape
    keys = (torch.arange(B, device=g.device)[:, None] * num_rows + use.ids.long()).flatten()
    unique, inverse = torch.unique(keys, return_inverse=True)
    rows = g.new_zeros(unique.numel(), dim).index_add_(0, inverse, g.reshape(B * L, dim))
    return g.new_zeros(B).index_add_(0, unique // num_rows, rows.pow(2).sum(1))


def dense_sq_norms(use: DenseUse) -> torch.Tensor:
    p = _f32(use.per_sample)
    return p.reshape(p.shape[0], -1).pow(2).sum(1)


def linear_embedding_dot(lin: LinearUse, emb: EmbeddingUse) -> torch.Tensor:
    """<g_b^T x_b, E_b> per sample, E_b the embedding use's gradient: sum_t sum_s g_s[id_t] (x_s . ge_t)."""
    x, g, ge = _f32(lin.x), _f32(lin.g), _f32(emb.g)
    index = emb.ids.long()[:, None, :].expand(-1, g.shape[1], -1)    # (B, Ls, Lt)
    g_at_ids = torch.gather(g, 2, index)                              # g_s[id_t]
    return (g_at_ids * (x @ ge.transpose(1, 2))).sum((1, 2))


# ------------------------------------------------------------------ clipped sums


def linear_clipped_sum(use: LinearUse, factors: torch.Tensor, out: torch.Tensor) -> None:
    """out += sum_b factors_b g_b^T x_b: one GEMM over all tokens."""
    g = _f32(use.g) * factors.to(torch.float32 if use.g.dtype != torch.float64 else torch.float64)[:, None, None]
    x = _f32(use.x)
    out.add_((g.flatten(0, 1).t() @ x.flatten(0, 1)).to(out.dtype))


def embedding_clipped_sum(use: EmbeddingUse, factors: torch.Tensor, out: torch.Tensor) -> None:
    g = _f32(use.g) * factors.to(_f32(use.g).dtype)[:, None, None]
    out.index_add_(0, use.ids.long().flatten(), g.flatten(0, 1).to(out.dtype))


def dense_clipped_sum(use: DenseUse, factors: torch.Tensor, out: torch.Tensor) -> None:
    p = _f32(use.per_sample)
    out.add_(torch.tensordot(factors.to(p.dtype), p, dims=1).to(out.dtype))
