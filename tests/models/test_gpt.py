"""GPT model behaviour: config validation, KV cache, generation, checkpointing, init."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastlm.models import GPT, GPTConfig, sample_next_token
from fastlm.nn import attention


def tiny(family="llama", **kw):
    args = dict(family=family, vocab_size=67, n_layer=2, n_head=4, d_model=32, max_seq_len=48)
    if family == "llama":
        args["n_kv_head"] = 2
    args.update(kw)
    return GPTConfig(**args)


def model_of(cfg, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg).eval()


# ---- config ---------------------------------------------------------------------------------------
def test_family_defaults_resolve():
    g = GPTConfig().resolved()
    assert (g.n_kv_head, g.d_ff, g.head_dim, g.activation, g.bias, g.tie_embeddings) == (12, 3072, 64, "gelu_new", True, True)
    l = GPTConfig(family="llama", d_model=2048, n_head=32).resolved()
    assert (l.n_kv_head, l.d_ff, l.head_dim, l.activation, l.bias, l.tie_embeddings) == (32, 5632, 64, "silu", False, False)
    assert GPTConfig.from_dict({"family": "llama", "n_kv_head": 4}).n_kv_head == 4


@pytest.mark.parametrize("kw,match", [
    (dict(family="bert"), "model.family = 'bert'"),
    (dict(n_head=5), "model.n_head = 5.*divisor of d_model"),
    (dict(n_kv_head=3), "model.n_kv_head = 3.*divisor of n_head"),
    (dict(n_layer=0), "model.n_layer = 0"),
    (dict(vocab_size=True), "model.vocab_size = True"),
    (dict(d_model=32.0), "model.d_model = 32.0"),
    (dict(dropout=1.0), "model.dropout = 1.0"),
    (dict(norm_eps=-1e-5), "model.norm_eps"),
    (dict(activation="tanh"), "model.activation = 'tanh'"),
    (dict(bias="yes"), "model.bias = 'yes'"),
    (dict(family="llama", head_dim=7), "even head_dim"),
])
def test_config_validation_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        GPT(GPTConfig(**{**dict(d_model=32, n_head=4), **kw}))


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown model config key.*n_embd.*nlayers"):
        GPTConfig.from_dict({"n_embd": 32, "nlayers": 2})


# ---- forward ----------------------------------------------------------------------------------------
def test_bottom_right_causal_mask():
    """A query block after cached keys: query i sees keys 0..(Tk - Tq + i). Reference: explicit softmax."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = q @ kr.transpose(-1, -2) / math.sqrt(8)
    allowed = torch.arange(7)[None, :] <= torch.arange(3)[:, None] + 4
    ref = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vr
    torch.testing.assert_close(attention(q, k, v), ref, atol=1e-5, rtol=1e-5)
    # Tq == Tk is the usual top-left causal case; Tq == 1 sees everything.
    torch.testing.assert_close(attention(q[:, :, -1:], k, v), ref[:, :, -1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_kv_cache_prefill_in_chunks_matches_full_forward(family):
    model = model_of(tiny(family))
    x = torch.randint(0, 67, (2, 17))
    full = model(x)
    cache = model.make_kv_cache(2, 17)
    parts = [model(x[:, :6], kv_cache=cache), model(x[:, 6:7], kv_cache=cache), model(x[:, 7:], kv_cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 17
    with pytest.raises(ValueError, match="KV cache is full"):
        model(x[:, :1], kv_cache=cache)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_greedy_equals_no_cache_decoding(family):
    model = model_of(tiny(family))
    prompt = torch.randint(0, 67, (3, 5))
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    ref = prompt
    for _ in range(12):  # recompute the whole sequence each step: no cache involved
        ref = torch.cat([ref, model(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ref)
    # top_k=1 and a tiny top_p are greedy too, whatever the temperature
    assert torch.equal(model.generate(prompt, 12, temperature=0.7, top_k=1), ref)
    assert torch.equal(model.generate(prompt, 12, temperature=1.3, top_p=1e-6), ref)


def test_generate_matches_hf_greedy():
    pytest.importorskip("transformers")
    from fastlm.models import to_hf

    model = model_of(tiny("llama"))
    hf = to_hf(model).eval()
    prompt = torch.randint(0, 67, (1, 4))
    ref = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, 10, temperature=0), ref)


def test_generate_stops_and_validates():
    model = model_of(tiny("gpt2"))
    prompt = torch.randint(0, 67, (2, 40))
    assert model.generate(prompt, 100, temperature=0).shape == (2, 48)  # stops at max_seq_len
    with pytest.raises(ValueError, match="longer than the model's context"):
        model.generate(torch.zeros(1, 49, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 1, top_p=0)
    # eos: a row that produced it keeps emitting it; generation ends once every row has
    greedy = model.generate(prompt[:, :3], 5, temperature=0)
    eos = int(greedy[0, 4])
    out = model.generate(prompt[:, :3], 5, temperature=0, eos_token_id=eos)
    assert (out[0, 4:] == eos).all() and out[0, 3] == greedy[0, 3]


def test_sampling_is_seeded_and_respects_top_k_top_p():
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]]).repeat(2000, 1)
    draw = lambda **kw: sample_next_token(logits, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(draw(), draw())
    assert set(draw(top_k=2).tolist()) == {0, 1}
    p = logits[0].softmax(-1)
    # top_p just above p0 keeps {0, 1}; sampled frequencies follow the renormalized probs
    s = draw(top_p=float(p[0]) + 0.01)
    assert set(s.tolist()) == {0, 1}
    assert abs((s == 0).float().mean().item() - float(p[0] / (p[0] + p[1]))) < 0.05


# ---- training features ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_activation_checkpointing_same_grads(family):
    x = torch.randint(0, 67, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = model_of(tiny(family)).train()
        if ckpt:
            from fastlm.parallel import apply_activation_checkpointing

            apply_activation_checkpointing(model)
        _, loss = model(x, labels=x)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)


def test_loss_is_shifted_cross_entropy():
    model = model_of(tiny("gpt2"))
    x = torch.randint(0, 67, (2, 10))
    logits, loss = model(x, labels=x)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 67), x[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_init_and_param_count():
    cfg = tiny("gpt2", n_layer=8, d_model=64, vocab_size=512)
    model = model_of(cfg)
    assert model.lm_head.weight is model.tok_emb.weight
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].mlp.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.001
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0
    d, L = 64, 8
    per_block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = 512 * d + 48 * d + L * per_block + 2 * d
    assert model.num_params() == expected
    assert model.num_params(exclude_embeddings=True) == expected - 512 * d - 48 * d
    untied = model_of(tiny("llama", tie_embeddings=False))
    tied = model_of(tiny("llama", tie_embeddings=True))
    assert untied.num_params() - tied.num_params() == 67 * 32


def test_bf16_autocast_close_to_fp32():
    model = model_of(tiny("llama"))
    x = torch.randint(0, 67, (2, 16))
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        gen = model.generate(x[:, :4], 3, temperature=0)
    assert out.dtype == torch.bfloat16 and gen.shape == (2, 7)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)
