"""The per-sample norm and clipped-sum rules of fastlm.privacy against per-sample gradients
materialized the slow way, in float64, over odd shapes and both ways of computing each."""
from __future__ import annotations

import pytest
import torch

from fastlm.privacy import head as head_rules
from fastlm.privacy import per_sample as rules


def _grads_linear(x, g):
    return torch.einsum("blo,bli->boi", g, x)  # (B, out, in)


@pytest.mark.parametrize("B,L,n_in,n_out", [(3, 5, 7, 11), (2, 1, 3, 4), (4, 33, 6, 5), (1, 2, 17, 9)])
def test_linear_norms_and_clipped_sum(B, L, n_in, n_out):
    # (4, 33, 6, 5): L (in + out) > in * out, the per-sample gradients a few at a time; the others: ghost
    torch.manual_seed(0)
    x, g = torch.randn(B, L, n_in, dtype=torch.float64), torch.randn(B, L, n_out, dtype=torch.float64)
    per = _grads_linear(x, g)
    use = rules.LinearUse(x, g)
    torch.testing.assert_close(rules.linear_sq_norms(use), per.pow(2).sum((1, 2)))
    f = torch.rand(B, dtype=torch.float64)
    out = torch.zeros(n_out, n_in, dtype=torch.float64)
    rules.linear_clipped_sum(use, f, out)
    torch.testing.assert_close(out, torch.einsum("b,boi->oi", f, per))


def test_direct_linear_norms_in_chunks(monkeypatch):
    monkeypatch.setattr(rules, "DIRECT_CHUNK_ELEMENTS", 50)  # one sample per chunk
    torch.manual_seed(1)
    x, g = torch.randn(5, 40, 4, dtype=torch.float64), torch.randn(5, 40, 6, dtype=torch.float64)
    torch.testing.assert_close(rules.linear_sq_norms(rules.LinearUse(x, g)), _grads_linear(x, g).pow(2).sum((1, 2)))


def test_two_uses_of_one_linear_weight_add_before_the_norm():
    torch.manual_seed(2)
    a = rules.LinearUse(torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 6, dtype=torch.float64))
    b = rules.LinearUse(torch.randn(3, 7, 5, dtype=torch.float64), torch.randn(3, 7, 6, dtype=torch.float64))
    per = _grads_linear(a.x, a.g) + _grads_linear(b.x, b.g)
    (merged,) = rules.concat_tokens([a, b])
    torch.testing.assert_close(rules.linear_sq_norms(merged), per.pow(2).sum((1, 2)))


def _grads_embedding(ids, g, rows):
    per = torch.zeros(ids.shape[0], rows, g.shape[-1], dtype=g.dtype)
    for b in range(ids.shape[0]):
        per[b].index_add_(0, ids[b], g[b])
    return per


def test_embedding_norms_with_repeated_ids_and_cross_term():
    torch.manual_seed(3)
    rows, dim = 9, 5
    ids = torch.tensor([[1, 1, 2, 8], [0, 3, 3, 3], [7, 7, 7, 7]])
    g = torch.randn(3, 4, dim, dtype=torch.float64)
    per = _grads_embedding(ids, g, rows)
    emb = rules.EmbeddingUse(ids, g)
    torch.testing.assert_close(rules.embedding_sq_norms(emb, rows), per.pow(2).sum((1, 2)))
    f = torch.rand(3, dtype=torch.float64)
    out = torch.zeros(rows, dim, dtype=torch.float64)
    rules.embedding_clipped_sum(emb, f, out)
    torch.testing.assert_close(out, torch.einsum("b,brd->rd", f, per))
    # a linear use of the same (rows x dim) weight, e.g. a tied MLM decoder: x (B, L, dim), g (B, L, rows)
    lin = rules.LinearUse(torch.randn(3, 6, dim, dtype=torch.float64), torch.randn(3, 6, rows, dtype=torch.float64))
    torch.testing.assert_close(rules.linear_embedding_dot(lin, emb), (_grads_linear(lin.x, lin.g) * per).sum((1, 2)))


def _head_per_sample(h, w, labels, grad_row):
    """(B, V, d): dlogits^T h per sample, dlogits = (softmax - onehot) * grad_row (materialized)."""
    logits = h @ w.t()
    d = torch.softmax(logits, -1)
    counted = labels >= 0
    d[counted.nonzero(as_tuple=True) + (labels[counted],)] -= 1
    d = d * (grad_row * counted)[..., None]
    return torch.einsum("blv,bld->bvd", d, h)


@pytest.mark.parametrize("direct", [True, False])
def test_fused_head_per_sample_norms_sums_and_tied_embedding(monkeypatch, direct):
    monkeypatch.setattr(head_rules, "_direct", lambda *shape: direct)
    monkeypatch.setattr(head_rules, "CHUNK_ELEMENTS", 64)  # several vocabulary chunks
    torch.manual_seed(4)
    B, L, d, V = 3, 5, 4, 13
    h = torch.randn(B * L, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, d, dtype=torch.float64)
    labels = torch.randint(0, V, (B * L,))
    labels[[2, 9]] = -100  # ignored tokens contribute nothing
    uses = []
    losses = head_rules.head_losses(h, w, labels, B, uses.append)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), labels, reduction="none")
    torch.testing.assert_close(losses, ref)
    upstream = torch.rand(B * L, dtype=torch.float64)
    losses.backward(upstream)
    href = h.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(href @ w.t(), labels, reduction="none").backward(upstream)
    torch.testing.assert_close(h.grad, href.grad)
    (use,) = uses
    per = _head_per_sample(h.detach().view(B, L, d), w, labels.view(B, L), upstream.view(B, L))
    torch.testing.assert_close(head_rules.head_sq_norms(use), per.pow(2).sum((1, 2)))
    f = torch.rand(B, dtype=torch.float64)
    out = torch.zeros(V, d, dtype=torch.float64)
    head_rules.head_clipped_sum(use, f, out)
    torch.testing.assert_close(out, torch.einsum("b,bvd->vd", f, per))
    ids = torch.randint(0, V, (B, 6))
    ge = torch.randn(B, 6, d, dtype=torch.float64)
    emb = _grads_embedding(ids, ge, V)
    torch.testing.assert_close(head_rules.head_embedding_dot(use, ids, ge), (per * emb).sum((1, 2)))


@pytest.mark.parametrize("direct", [True, False])
def test_fused_head_in_float32_matches_float64(monkeypatch, direct):
    """The native kernels' path (fp32): norms and clipped sums within fp32 error of the fp64 ones."""
    monkeypatch.setattr(head_rules, "_direct", lambda *shape: direct)
    torch.manual_seed(5)
    B, L, d, V = 4, 7, 8, 37
    h64, w64 = torch.randn(B * L, d, dtype=torch.float64), torch.randn(V, d, dtype=torch.float64)
    labels = torch.randint(0, V, (B * L,))
    labels[3] = -100
    results = {}
    for dtype in (torch.float32, torch.float64):
        uses = []
        h = h64.to(dtype).requires_grad_()
        losses = head_rules.head_losses(h, w64.to(dtype), labels, B, uses.append)
        losses.sum().backward()  # a uniform upstream gradient: the forward's unit gradients, scaled
        f = torch.linspace(0.2, 1.0, B, dtype=torch.float64)
        out = torch.zeros(V, d, dtype=torch.float64)
        head_rules.head_clipped_sum(uses[0], f, out)
        results[dtype] = (losses.double(), head_rules.head_sq_norms(uses[0]).double(), out, h.grad.double())
    for got, want in zip(results[torch.float32], results[torch.float64]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
