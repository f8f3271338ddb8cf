"""fastlm GPT vs Hugging Face transformers (the independent reference), with random weights."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastlm.models import (
    GPT,
    GPTConfig,
    config_from_hf,
    from_hf,
    is_hf_checkpoint,
    load_hf_checkpoint,
    state_dict_to_hf,
    to_hf,
)

V = 97  # odd vocab: the exact size must survive conversion


def make_hf(family: str, *, tie: bool | None = None, attn: str = "eager", **kw):
    torch.manual_seed(0)
    if family == "gpt2":
        args = dict(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
        if tie is not None:
            args["tie_word_embeddings"] = tie
        args.update(kw)
        cfg, cls = transformers.GPT2Config(**args), transformers.GPT2LMHeadModel
    else:
        args = dict(vocab_size=V, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5,
                    bos_token_id=None, eos_token_id=None)
        if tie is not None:
            args["tie_word_embeddings"] = tie
        args.update(kw)
        cfg, cls = transformers.LlamaConfig(**args), transformers.LlamaForCausalLM
    cfg._attn_implementation = attn
    model = cls(cfg)
    with torch.no_grad():  # move norms/biases off 1/0 so every weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


CASES = {
    "gpt2-tied": ("gpt2", dict()),
    "gpt2-untied-gelu": ("gpt2", dict(tie=False, activation_function="gelu", layer_norm_epsilon=1e-3)),
    "gpt2-sdpa-ninner": ("gpt2", dict(attn="sdpa", n_inner=48)),
    "llama-gqa": ("llama", dict(rope_theta=500.0)),
    "llama-mha-tied": ("llama", dict(tie=True, num_key_value_heads=4)),
    "llama-mqa-bias-headdim": ("llama", dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True,
                                             head_dim=16, attn="sdpa")),
}


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (3, 20), generator=g)
    labels = x.clone()
    labels[0, :5] = -100  # ignored positions must be ignored the same way
    labels[2, -3:] = -100
    return x, labels


@pytest.mark.parametrize("case", list(CASES))
def test_logits_loss_grads_match_hf(case):
    family, kw = CASES[case]
    hf = make_hf(family, **kw)
    model = from_hf(hf).eval()
    assert model.family == family and model.config.vocab_size == V
    assert model.config.tie_embeddings == hf.config.tie_word_embeddings
    x, labels = _batch()

    out = hf(input_ids=x, labels=labels)
    logits, loss = model(x, labels=labels)
    torch.testing.assert_close(logits, out.logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model(x), logits)  # no labels: logits only

    out.loss.backward()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    if model.config.tie_embeddings:
        grads["lm_head.weight"] = grads["tok_emb.weight"]
    ours = state_dict_to_hf(model.config, grads)
    checked = 0
    for name, p in hf.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        checked += p.numel()
    assert checked == model.num_params()  # every fastlm parameter was compared


def test_exact_config_fields():
    hf = make_hf("llama", rope_theta=123.0, tie=True, head_dim=16)
    cfg = config_from_hf(hf.config)
    assert (cfg.rope_theta, cfg.tie_embeddings, cfg.head_dim, cfg.n_kv_head, cfg.norm_eps, cfg.d_ff) == \
        (123.0, True, 16, 2, 1e-5, 72)
    cfg = config_from_hf(make_hf("gpt2", activation_function="gelu_new", layer_norm_epsilon=1e-3).config)
    assert (cfg.activation, cfg.norm_eps, cfg.tie_embeddings, cfg.max_seq_len) == ("gelu_new", 1e-3, True, 32)


@pytest.mark.parametrize("family,tie", [("gpt2", True), ("llama", False), ("llama", True)])
def test_to_hf_round_trip(family, tie):
    torch.manual_seed(0)
    cfg = GPTConfig(family=family, vocab_size=V, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                    d_model=32, max_seq_len=32, tie_embeddings=tie)
    model = GPT(cfg).eval()
    hf = to_hf(model).eval()
    x, _ = _batch()
    torch.testing.assert_close(hf(input_ids=x).logits, model(x), atol=2e-5, rtol=1e-5)
    back = from_hf(hf)
    assert back.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    if tie:
        assert back.lm_head.weight is back.tok_emb.weight
    # from_hf copies: training the fastlm model must not change the HF one
    with torch.no_grad():
        back.tok_emb.weight.add_(1.0)
    torch.testing.assert_close(hf(input_ids=x).logits, model(x), atol=2e-5, rtol=1e-5)


def test_to_hf_rejects_what_hf_cannot_express():
    with pytest.raises(ValueError, match="grouped-query"):
        to_hf(GPT(GPTConfig(family="gpt2", vocab_size=V, n_layer=1, n_head=4, n_kv_head=2, d_model=32)))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_load_hf_checkpoint(tmp_path, family):
    hf = make_hf(family, tie=family == "gpt2")
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    x, _ = _batch()
    ref = hf(input_ids=x).logits
    for d in ("single", "sharded"):
        assert is_hf_checkpoint(tmp_path / d)
        model = load_hf_checkpoint(tmp_path / d).eval()
        torch.testing.assert_close(model(x), ref, atol=2e-5, rtol=1e-5)
    assert not is_hf_checkpoint(tmp_path)
    assert not is_hf_checkpoint(tmp_path / "missing")


def test_load_gpt2_checkpoint_without_prefix_and_legacy_buffers(tmp_path):
    """Original GPT-2 checkpoints store "h.0..." (no "transformer.") plus attn.bias mask buffers."""
    from safetensors.torch import save_file

    hf = make_hf("gpt2")
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    x, _ = _batch()
    torch.testing.assert_close(load_hf_checkpoint(tmp_path)(x), hf(input_ids=x).logits, atol=2e-5, rtol=1e-5)


def test_legacy_llama_config_json_rope_theta(tmp_path):
    d = {"model_type": "llama", "vocab_size": V, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 4, "rope_theta": 77.0, "rope_scaling": None}
    assert config_from_hf(d).rope_theta == 77.0
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 99.0}
    assert config_from_hf(d).rope_theta == 99.0


@pytest.mark.parametrize("change,match", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "RoPE scaling type 'linear'"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "'yarn'"),
    (dict(attention_bias=True, mlp_bias=False), "attention_bias"),
    (dict(hidden_act="tanh_gelu_unknown"), "hidden_act"),
    (dict(model_type="mistral"), "model_type 'mistral'"),
])
def test_unsupported_llama_configs_rejected(change, match):
    d = {"model_type": "llama", "vocab_size": V, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 4}
    d.update(change)
    with pytest.raises(ValueError, match=match):
        config_from_hf(d)


def test_unsupported_gpt2_config_rejected():
    cfg = make_hf("gpt2").config
    cfg.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf(cfg)


def test_mismatched_or_pickle_checkpoint_rejected(tmp_path):
    hf = make_hf("llama")
    sd = dict(hf.state_dict())
    del sd["model.layers.1.mlp.up_proj.weight"]
    sd["model.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing 1 weight.*up_proj.*unexpected 1 weight.*extra"):
        from_hf(hf.config, sd)
    with pytest.raises(ValueError, match="state_dict"):
        from_hf(hf.config)
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    assert not is_hf_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="only safetensors"):
        load_hf_checkpoint(tmp_path)
