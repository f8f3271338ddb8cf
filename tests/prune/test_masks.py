"""Magnitude pruning masks: exact counts per layer and globally, N:M patterns, what is pruned."""
from __future__ import annotations

import pytest
import torch

from fastlm.models import GPT, GPTConfig
from fastlm.prune import nm_mask, prunable_linears, prune_model


def tiny_gpt(family="llama") -> GPT:
    return GPT(GPTConfig(family=family, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2 if family != "llama" else 1,
                         d_model=24, d_ff=40, max_seq_len=16))


def test_prunes_the_block_linears_only():
    model = tiny_gpt()
    names = [n for n, _ in prunable_linears(model)]
    assert names == [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
    emb, head = model.tok_emb.weight.clone(), model.lm_head.weight.clone()
    norms = [p.clone() for n, p in model.named_parameters() if "norm" in n]
    prune_model(model, 0.5)
    assert torch.equal(model.tok_emb.weight, emb) and torch.equal(model.lm_head.weight, head)
    after = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(torch.equal(a, p) for a, p in zip(norms, after))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77])
def test_per_layer_sparsity_is_exact_and_smallest_go(sparsity):
    model = tiny_gpt()
    before = {n: m.weight.detach().clone() for n, m in prunable_linears(model)}
    masks = prune_model(model, sparsity, scope="layer")
    for name, m in prunable_linears(model):
        w0 = before[name]
        assert int((~masks[name]).sum()) == round(sparsity * w0.numel())
        assert torch.equal(m.weight, w0 * masks[name])
        if 0 < sparsity:  # every pruned |w| <= every kept |w| (an independent check of "smallest")
            assert w0.abs()[~masks[name]].max() <= w0.abs()[masks[name]].min()


def test_ties_still_give_the_exact_count():
    model = tiny_gpt()
    with torch.no_grad():
        for _, m in prunable_linears(model):
            m.weight.fill_(0.25)
    masks = prune_model(model, 0.5)
    for name, m in prunable_linears(model):
        assert int((~masks[name]).sum()) == round(0.5 * m.weight.numel())


def test_global_sparsity_is_exact_over_all_layers():
    model = tiny_gpt()
    before = {n: m.weight.detach().clone() for n, m in prunable_linears(model)}
    masks = prune_model(model, 0.6, scope="global")
    total = sum(w.numel() for w in before.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total)
    everything = torch.cat([w.abs().flatten() for w in before.values()])
    kept = torch.cat([before[n].abs()[masks[n]] for n in before])
    pruned = torch.cat([before[n].abs()[~masks[n]] for n in before])
    assert pruned.max() <= kept.min()
    assert pruned.numel() + kept.numel() == everything.numel()
    per_layer = [float((~m).float().mean()) for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.01  # global: layers differ (init scales differ by layer)


@pytest.mark.parametrize("n,m,cols", [(2, 4, 24), (2, 4, 23), (2, 4, 22), (1, 4, 13), (4, 8, 40)])
def test_nm_mask_pattern_is_exact(n, m, cols):
    w = torch.randn(7, cols)
    mask = nm_mask(w, n, m)
    full = cols // m
    groups = mask[:, :full * m].reshape(7, full, m)
    assert (groups.sum(-1) == n).all()
    if cols % m:
        assert (mask[:, full * m:].sum(-1) == min(n, cols % m)).all()
    # the kept ones are the largest in their group (independent loop)
    for r in range(7):
        for g in range(0, cols, m):
            seg = w[r, g:g + m].abs()
            kept = seg[mask[r, g:g + m]]
            dropped = seg[~mask[r, g:g + m]]
            if dropped.numel():
                assert kept.min() >= dropped.max()


def test_24_on_a_model():
    model = tiny_gpt()
    masks = prune_model(model, pattern="2:4")
    for name, lin in prunable_linears(model):
        w = lin.weight.detach()
        assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
        assert int(masks[name].sum()) * 2 == w.numel()


@pytest.mark.parametrize("kwargs,message", [
    ({"sparsity": 1.0}, "expected a fraction in [0, 1)"),
    ({"sparsity": None}, "expected a fraction"),
    ({"sparsity": 0.5, "pattern": "4:2"}, "expected \"unstructured\" or \"N:M\""),
    ({"sparsity": 0.3, "pattern": "2:4"}, "pattern 2:4 prunes 0.5"),
    ({"pattern": "2:4", "scope": "global"}, "applies to unstructured"),
    ({"sparsity": 0.5, "scope": "model"}, "--scope 'model'"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=None) as e:
        prune_model(tiny_gpt(), **kwargs)
    assert message in str(e.value)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sparse24_model_equals_the_dense_pruned_one(family):
    from fastlm.nn.linear import Linear
    from fastlm.prune import Sparse24Linear, apply_sparse24

    model = tiny_gpt(family).eval()
    masks = prune_model(model, pattern="2:4")
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        dense = model(ids)
        assert apply_sparse24(model, masks) == list(masks)
        assert sum(isinstance(m, Sparse24Linear) for m in model.modules()) == 8
        assert torch.allclose(model(ids), dense, atol=1e-5, rtol=1e-5)
    fused = Linear(8, 6, activation="gelu_tanh")
    with torch.no_grad():
        fused.weight.mul_(nm_mask(fused.weight, 2, 4))
        x = torch.randn(3, 8)
        assert torch.allclose(Sparse24Linear(fused)(x), fused(x), atol=1e-6)
